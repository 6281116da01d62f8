"""Quarantined events: inbound items that failed validation, kept with their
error (nothing is silently dropped). Replayed or discarded through the ingest
service, never edited."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.actions import discard_quarantined, replay_quarantined
from martech.admin.base import BigTableAdmin
from martech.models import QuarantinedEvent


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(BigTableAdmin):
    list_display = ("received_at", "client_event_id", "status", "field", "short_reason", "source")
    list_filter = ("status", "received_at")
    search_fields = ("=client_event_id",)
    search_help_text = "An exact event id."
    actions = [replay_quarantined, discard_quarantined]
    readonly_fields = ("client_event_id", "status", "source", "received_at", "field", "reason", "payload")
    fields = readonly_fields

    @admin.display(description="Reason")
    def short_reason(self, obj: QuarantinedEvent) -> str:
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The change permission is what the replay/discard actions need; a
        # single item's page is view-only (its payload is evidence).
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # discard instead: the row stays as the record
