"""Subscription topics: what people choose among on the preference page."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import HistoryAdmin
from martech.models import SubscriptionType


@admin.register(SubscriptionType)
class SubscriptionTypeAdmin(HistoryAdmin):
    list_display = ("order", "name", "key", "channel", "is_active")
    list_display_links = ("name",)
    list_filter = ("channel", "is_active")
    search_fields = ("name", "key")
    prepopulated_fields = {"key": ("name",)}
    ordering = ("order", "name")
