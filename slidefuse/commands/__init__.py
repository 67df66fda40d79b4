"""One module per CLI verb. Each exposes `command` (a click.Command or click.Group)."""
