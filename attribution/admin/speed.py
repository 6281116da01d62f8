"""The speed-to-lead page: a chart and its numbers per day and per source,
drawn from the speed-to-lead API (the one external dashboards read)."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from attribution.selectors import SPEED_MAX_DAYS
from martech.adminsite import register_page
from martech.models import Channel
from routing.models import SlaPolicy

# The page and its API answer to the same permission: routing's view
# permission, which every staff role has (sales leaders watch this figure).
PERMISSION = "routing.view_assignment"


def speed_to_lead_view(request):
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Speed to lead",
        "sources": Channel.choices,
        "max_days": SPEED_MAX_DAYS,
        "sla_policies": list(SlaPolicy.objects.order_by("name").values_list("name", "first_touch_hours")),
    }
    return TemplateResponse(request, "admin/attribution/speed_to_lead.html", context)


register_page("speed-to-lead/", speed_to_lead_view, "speed_to_lead")
