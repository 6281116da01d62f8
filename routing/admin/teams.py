from __future__ import annotations

from django.contrib import admin
from django.db.models import Count

from routing.admin.common import ConfigAdmin
from routing.models import Team


@admin.register(Team)
class TeamAdmin(ConfigAdmin):
    list_display = ["name", "method", "sla_policy", "is_active", "rep_count"]
    list_filter = ["method", "is_active"]
    search_fields = ["name"]
    list_select_related = ["sla_policy"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(rep_count=Count("reps"))

    @admin.display(description="Reps", ordering="rep_count")
    def rep_count(self, obj: Team) -> int:
        return obj.rep_count
