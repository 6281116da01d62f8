"""The event catalog (editable, with history) and the events themselves
(read-only: they are what senders told us; only a superuser may delete)."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BigTableAdmin, HistoryAdmin
from martech.models import Event, EventType


@admin.register(EventType)
class EventTypeAdmin(HistoryAdmin):
    list_display = ("label", "name", "is_touchpoint", "is_active", "description")
    list_filter = ("is_touchpoint", "is_active")
    search_fields = ("name", "label", "description")


@admin.register(Event)
class EventAdmin(BigTableAdmin):
    list_display = (
        "occurred_at",
        "event_type",
        "lead",
        "kind",
        "channel",
        "campaign",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "client_event_id",
    )
    list_select_related = ("event_type", "lead", "campaign")
    # No date_hierarchy: drawing it runs SELECT DISTINCT over every event.
    # The date filter below costs no query.
    list_filter = ("event_type", "kind", "channel", "occurred_at")
    # Exact, indexed look-ups only: a substring search would scan the table.
    search_fields = ("=client_event_id", "=anonymous_id", "=lead__email")
    search_help_text = "An exact event id, anonymous id or lead email."

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting history is a superuser's call (e.g. an erasure request).
        return request.user.is_superuser
