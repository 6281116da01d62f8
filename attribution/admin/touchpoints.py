from django.contrib import admin

from attribution.models import Touchpoint
from martech.admin.base import BigTableAdmin, ReadOnlyMixin


@admin.register(Touchpoint)
class TouchpointAdmin(ReadOnlyMixin, BigTableAdmin):
    """Built from events by attribution.touchpoints (never edited here)."""

    list_display = ["occurred_at", "lead", "channel", "campaign", "is_lead_creation"]
    list_filter = ["channel", "is_lead_creation"]
    list_select_related = ["lead", "campaign"]
    raw_id_fields = ["lead", "event", "campaign"]
