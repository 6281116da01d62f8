"""Capture forms: POST /api/v1/capture/<key>."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import HistoryAdmin
from martech.models import Form


@admin.register(Form)
class FormAdmin(HistoryAdmin):
    list_display = ("name", "key", "event_type", "consent_channel", "is_active", "capture_path")
    list_select_related = ("event_type",)
    list_filter = ("is_active", "consent_channel")
    search_fields = ("name", "key")
    prepopulated_fields = {"key": ("name",)}
    autocomplete_fields = ("event_type",)
    readonly_fields = ("capture_path", "created_at", "updated_at")
    fieldsets = [
        (None, {"fields": ["name", "key", "capture_path", "is_active", "event_type"]}),
        ("Fields", {"fields": ["field_map", "required_fields", "defaults", "honeypot_field"]}),
        ("Consent", {"fields": ["consent_field", "consent_channel", "consent_text"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    @admin.display(description="Capture URL")
    def capture_path(self, obj: Form) -> str:
        return f"/api/v1/capture/{obj.key}" if obj and obj.key else "—"
