"""Routing screens for sales ops: one ModelAdmin module per area (docs/style.md, 8)."""
from routing.admin import assignments, reps, rule_sets, sla, teams, territories  # noqa: F401
