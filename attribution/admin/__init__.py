from attribution.admin import credits, opportunities, spend, touchpoints, weights  # noqa: F401 (registration)
