"""Data at rest: shard layout, the index, writers, builders, inspection (see DESIGN.md)."""
