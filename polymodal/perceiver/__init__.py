"""The Perceiver / Perceiver IO model library; it imports only torch (see DESIGN.md)."""
