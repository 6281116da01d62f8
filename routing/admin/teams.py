from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count

from routing import services
from routing.admin.common import ConfigAdmin
from routing.models import Team


@admin.register(Team)
class TeamAdmin(ConfigAdmin):
    list_display = ["name", "method", "sla_policy", "escalation_contact", "is_active", "rep_count"]
    list_filter = ["method", "is_active"]
    search_fields = ["name"]
    list_select_related = ["sla_policy", "escalation_contact"]
    raw_id_fields = ["escalation_contact"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(rep_count=Count("reps"))

    @admin.display(description="Reps", ordering="rep_count")
    def rep_count(self, obj: Team) -> int:
        return obj.rep_count

    def changelist_view(self, request, extra_context=None):
        # SLA breaches of a rep without a manager go to the team's escalation
        # contact, else the routing admins: say where that path is missing.
        if request.method == "GET":
            missing = services.teams_without_escalation_path()
            if missing:
                names = ", ".join(t.name for t in missing)
                if services.routing_admin_emails():
                    self.message_user(request, f"No escalation contact for {names}: reps there have no manager, so "
                                               "their SLA breaches go to the routing admins.", messages.WARNING)
                else:
                    self.message_user(request, f"No escalation path for {names}: reps there have no manager, the team "
                                               "no escalation contact, and no routing admin has an email. SLA breaches "
                                               "would reach nobody.", messages.ERROR)
        return super().changelist_view(request, extra_context)
