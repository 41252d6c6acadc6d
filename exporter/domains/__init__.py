"""Mail domains: MX discovery, MTA-STS (RFC 8461) policy checks and TLS-RPT (RFC 8460) records.

Pure parsing lives in `mta_sts` and `tlsrpt`; DNS and HTTPS in `fetch`; one domain check in
`check`; its presentation in `report`; the `check-domain` command in `command`; the config
file's `dns:` and `domains:` sections in `config`.
"""
