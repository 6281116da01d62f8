from attribution.admin import credits, opportunities, rates, speed, spend, touchpoints, weights  # noqa: F401 (registration)
