"""smtp-tls-exporter: watches the transport security of mail servers for Prometheus."""

__version__ = "0.1.0"
