"""Dynamic batching: the cost curve and planner (pure), padding (pure), the batcher (async)."""
