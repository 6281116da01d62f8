"""CRM sync screens: one ModelAdmin module per area (docs/style.md, 8)."""
from martech.crm.admin import connections, dead_letters, lists, mappings, pull_failures, records  # noqa: F401
