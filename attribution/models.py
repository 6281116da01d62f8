"""Models of the attribution app arrive with its own issue (see DESIGN.md)."""
