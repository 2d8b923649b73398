"""Data in motion: the streaming reader, training loop, preprocessing jobs (see DESIGN.md)."""
