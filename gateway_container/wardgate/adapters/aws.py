"""aws adapters for the core's ports (see wardgate.adapters)."""
