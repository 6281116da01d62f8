from __future__ import annotations

from django.contrib import admin

from routing.admin.common import ConfigAdmin
from routing.models import Territory


@admin.register(Territory)
class TerritoryAdmin(ConfigAdmin):
    list_display = ["name", "countries", "regions", "postal_prefixes", "industries", "min_employees", "max_employees"]
    search_fields = ["name"]
