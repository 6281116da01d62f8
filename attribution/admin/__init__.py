from attribution.admin import credits, opportunities, speed, spend, touchpoints, weights  # noqa: F401 (registration)
