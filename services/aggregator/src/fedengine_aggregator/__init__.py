"""Aggregator: validates updates, owns round deadlines, applies the strategy, publishes results."""
