"""Notifications to the team (the SQL handoff, SLA escalations, nurture's
notify and webhook steps) and how each went: written by ``martech.notify``,
read here, never edited."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BigTableAdmin, ReadOnlyMixin
from martech.models import Notification


@admin.register(Notification)
class NotificationAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("created_at", "channel", "source", "target", "status", "attempts", "response_status", "short_error")
    list_filter = ("status", "channel", "source", "created_at")
    search_fields = ("=key",)
    search_help_text = "The sender's exact key (e.g. scoring:handoff:12:webhook)."
    fields = ("created_at", "finished_at", "channel", "source", "key", "target", "status", "attempts",
              "response_status", "error")
    readonly_fields = fields

    @admin.display(description="Error")
    def short_error(self, obj: Notification) -> str:
        return obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"
