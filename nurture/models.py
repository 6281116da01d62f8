"""Models of the nurture app arrive with its own issue (see DESIGN.md)."""
