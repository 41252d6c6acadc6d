"""The opt-in security checks of an endpoint, each a dialogue of its own beside the probe."""
