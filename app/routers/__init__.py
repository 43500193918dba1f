"""One router module per resource, each with its prefix and tags."""
