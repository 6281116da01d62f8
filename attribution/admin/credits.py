from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from attribution import engine
from attribution.models import AttributionCredit, AttributionModel
from martech.admin.base import BigTableAdmin, ReadOnlyMixin


@admin.register(AttributionCredit)
class AttributionCreditAdmin(ReadOnlyMixin, BigTableAdmin):
    """Materialized results, written by compute_attribution and the tasks.
    The dashboard (``dashboard/``) charts them through the report API."""

    change_list_template = "admin/attribution/credit_change_list.html"
    list_display = ["opportunity", "model", "channel", "campaign", "touched_at", "weight", "credit", "is_won"]
    list_filter = ["model", "channel", "is_won"]
    list_select_related = ["opportunity", "campaign"]
    raw_id_fields = ["opportunity", "touchpoint", "campaign"]

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="attribution_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Attribution dashboard",
            "models": AttributionModel.choices,
            "formulas": engine.__doc__,
        }
        return TemplateResponse(request, "admin/attribution/dashboard.html", context)
