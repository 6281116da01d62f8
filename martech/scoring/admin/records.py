"""Rows written only by the scoring services: score history, handoffs,
stale-MQL flags."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BigTableAdmin, ReadOnlyMixin
from martech.scoring.models import Handoff, ScoreHistory, StaleFlag


@admin.register(ScoreHistory)
class ScoreHistoryAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("changed_at", "lead", "old_total", "total_score", "fit_score", "engagement_score", "reason")
    list_select_related = ("lead",)
    list_filter = ("changed_at",)
    search_fields = ("=lead__email",)
    search_help_text = "A lead's exact email."


@admin.register(Handoff)
class HandoffAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("started_at", "lead", "owner", "assigned_by", "task", "email_sent_at", "webhook_sent_at",
                    "last_error")
    list_select_related = ("lead", "owner", "task")
    list_filter = ("assigned_by", "started_at")
    search_fields = ("=lead__email",)


@admin.register(StaleFlag)
class StaleFlagAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("flagged_at", "lead", "last_activity_at")
    list_select_related = ("lead",)
    search_fields = ("=lead__email",)
