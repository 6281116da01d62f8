"""Scoring screens, one module per area (docs/style.md, 8)."""
from martech.scoring.admin import lifecycle, records, scoring_models, segments  # noqa: F401
