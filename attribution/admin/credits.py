from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from attribution import engine
from attribution.models import AttributionCredit, AttributionModel, channel_label
from attribution.money import company_currency
from martech.admin.base import BigTableAdmin, ReadOnlyMixin
from martech.models import Channel, LifecycleStage


class ChannelFilter(admin.SimpleListFilter):
    """Credits keep the channel as plain text (no choices): filter by the
    channel labels rather than the codes."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request, model_admin):
        return Channel.choices

    def queryset(self, request, queryset):
        return queryset.filter(channel=self.value()) if self.value() else queryset


@admin.register(AttributionCredit)
class AttributionCreditAdmin(ReadOnlyMixin, BigTableAdmin):
    """Materialized results, written by compute_attribution and the tasks.
    The dashboard (``dashboard/``) charts them through the report API."""

    change_list_template = "admin/attribution/credit_change_list.html"
    list_display = ["opportunity", "model", "channel_name", "campaign", "touched_at", "weight", "credit", "currency",
                    "company_amount", "rate_date", "is_won"]
    list_filter = ["model", ChannelFilter, "is_won"]
    list_select_related = ["opportunity", "campaign"]
    raw_id_fields = ["opportunity", "touchpoint", "campaign"]

    @admin.display(description="Channel", ordering="channel")
    def channel_name(self, obj: AttributionCredit) -> str:
        return channel_label(obj.channel)

    @admin.display(description="Company credit")
    def company_amount(self, obj: AttributionCredit):
        return obj.company_amount

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
            # Codes in the report API's answers -> the words the charts show.
            "labels": {
                "channels": dict(Channel.choices),
                "models": dict(AttributionModel.choices),
                "stages": dict(LifecycleStage.objects.values_list("key", "name")),
            },
            "formulas": engine.__doc__,
            "company_currency": company_currency(),
        }
        return TemplateResponse(request, "admin/attribution/dashboard.html", context)
