"""SMTP dialogue: reply parsing and the wire."""
