"""Where change events come from: the change stream (one per process)."""
