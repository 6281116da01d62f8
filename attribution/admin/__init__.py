from attribution.admin import credits, opportunities, rates, spend, touchpoints, weights  # noqa: F401 (registration)
