"""Pending captures: forms and event batches whose capture task has not
finished (martech.services.capture). A row is normally gone within seconds;
one listed here for long had its task lost and is enqueued again by the
capture sweep; one given up (no next try) needs ops: its task's last error
is shown, and "Enqueue again now" runs its task again once the cause is
fixed. Otherwise read only."""
from __future__ import annotations

from django.contrib import admin, messages

from martech.admin.base import BaseAdmin, ReadOnlyMixin
from martech.models import CapturePending


@admin.register(CapturePending)
class CapturePendingAdmin(ReadOnlyMixin, BaseAdmin):
    list_display = ("id", "created_at", "source", "reason", "lead_count", "attempts", "next_attempt_at",
                    "error")
    list_filter = ("reason", ("next_attempt_at", admin.EmptyFieldListFilter))
    ordering = ("created_at", "id")
    fields = ("created_at", "source", "reason", "lead_ids", "created_ids", "event_ids", "transition_ids",
              "attempts", "next_attempt_at", "last_error")
    readonly_fields = fields
    actions = ["retry_now"]

    @admin.display(description="Last error")
    def error(self, obj: CapturePending) -> str:
        return obj.last_error[:120]

    def has_retry_permission(self, request) -> bool:
        # Rows stay read only here; running their task again is ops' call.
        return request.user.has_perm("martech.change_capturepending")

    @admin.action(description="Enqueue the selected captures again now", permissions=["retry"])
    def retry_now(self, request, queryset):
        from martech.services.capture import pending_retry

        ids = list(queryset.values_list("pk", flat=True))
        done = pending_retry(ids)
        level = messages.SUCCESS if done == len(ids) else messages.WARNING
        self.message_user(request, f"{done} of {len(ids)} capture(s) enqueued again (attempts from 0)"
                          + ("" if done == len(ids) else "; the rest wait for the sweep: the broker refused them"),
                          level)

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
