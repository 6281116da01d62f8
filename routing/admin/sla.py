from __future__ import annotations

from django.contrib import admin

from routing.admin.common import ConfigAdmin
from routing.models import SlaPolicy


@admin.register(SlaPolicy)
class SlaPolicyAdmin(ConfigAdmin):
    list_display = ["name", "first_touch_hours", "notify_manager_after_hours", "reassign_after_hours"]
    search_fields = ["name"]
