"""TLS: the client context, certificate facts and verification."""
