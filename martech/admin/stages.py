"""Lifecycle stages (editable, with history) and the stage change log."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BigTableAdmin, HistoryAdmin, ReadOnlyMixin
from martech.models import LifecycleStage, StageTransition


@admin.register(LifecycleStage)
class LifecycleStageAdmin(HistoryAdmin):
    list_display = ("order", "key", "name", "is_active")
    list_display_links = ("key", "name")
    list_filter = ("is_active",)
    search_fields = ("key", "name")
    ordering = ("order",)


@admin.register(StageTransition)
class StageTransitionAdmin(ReadOnlyMixin, BigTableAdmin):
    """Written only by services.lead_change_stage; the audit of who moved a
    lead, when and why."""

    list_display = ("changed_at", "lead", "from_stage", "to_stage", "reason", "actor", "source")
    list_select_related = ("lead", "from_stage", "to_stage", "actor")
    list_filter = ("to_stage", "changed_at")
    search_fields = ("=lead__email",)
    search_help_text = "A lead's exact email."
