"""DANE for SMTP (RFC 7672, RFC 6698): TLSA lookup with its DNSSEC status, and chain matching."""
