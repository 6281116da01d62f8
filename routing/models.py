"""Models of the routing app arrive with its own issue (see DESIGN.md)."""
