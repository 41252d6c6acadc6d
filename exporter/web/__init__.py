"""The web endpoint's own security: `--web.config.file` (TLS, basic auth, headers, rate limit)."""
