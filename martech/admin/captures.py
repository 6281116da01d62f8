"""Pending captures: forms and event batches whose capture task has not
finished (martech.services.capture). A row is normally gone within seconds;
one listed here for long had its task lost and is enqueued again by the
capture sweep; one given up (no next try) needs ops: read the worker logs
for its error. Read only."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BaseAdmin, ReadOnlyMixin
from martech.models import CapturePending


@admin.register(CapturePending)
class CapturePendingAdmin(ReadOnlyMixin, BaseAdmin):
    list_display = ("id", "created_at", "source", "reason", "lead_count", "attempts", "next_attempt_at")
    list_filter = ("reason", ("next_attempt_at", admin.EmptyFieldListFilter))
    ordering = ("created_at", "id")
    fields = ("created_at", "source", "reason", "lead_ids", "created_ids", "event_ids", "transition_ids",
              "attempts", "next_attempt_at")
    readonly_fields = fields

    @admin.display(description="Leads")
    def lead_count(self, obj: CapturePending) -> int:
        return len(obj.lead_ids)

    def changelist_view(self, request, extra_context=None):
        from martech.services.capture import pending_status

        status = pending_status()
        extra_context = {**(extra_context or {}), "title": (
            f"Pending captures: {status['waiting']} waiting, {status['overdue']} overdue, "
            f"{status['given_up']} given up (empty next try)")}
        return super().changelist_view(request, extra_context=extra_context)
