"""Campaigns (saved through services.campaigns.campaign_save, which
normalizes the UTM keys with the alias table), UTM aliases and channel rules.
All three are configuration: every change is kept by simple-history."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import HistoryAdmin, ServiceSaveMixin
from martech.models import Campaign, ChannelRule, UtmAlias
from martech.services.campaigns import campaign_save


@admin.register(Campaign)
class CampaignAdmin(ServiceSaveMixin, HistoryAdmin):
    list_display = (
        "name",
        "channel",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "start_date",
        "end_date",
        "budget",
        "currency",
    )
    list_filter = ("channel", "start_date")
    search_fields = ("name", "utm_campaign", "utm_source")
    date_hierarchy = "start_date"
    readonly_fields = ("created_at", "updated_at")
    fieldsets = [
        (None, {"fields": ["name", "channel", ("start_date", "end_date"), ("budget", "currency")]}),
        (
            "UTM keys",
            {
                "fields": [("utm_source", "utm_medium", "utm_campaign")],
                "description": "Saved trimmed, lower-cased and through the UTM alias table, as events are.",
            },
        ),
        ("CRM ids", {"fields": ["salesforce_id", "hubspot_id"], "classes": ["collapse"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def save_model(self, request, obj: Campaign, form, change: bool) -> None:
        self.call_service(request, campaign_save, campaign=obj)


@admin.register(UtmAlias)
class UtmAliasAdmin(HistoryAdmin):
    list_display = ("field", "alias", "canonical")
    list_filter = ("field",)
    search_fields = ("alias", "canonical")


@admin.register(ChannelRule)
class ChannelRuleAdmin(HistoryAdmin):
    list_display = ("order", "name", "source_pattern", "medium_pattern", "channel", "is_active")
    list_display_links = ("name",)
    list_filter = ("channel", "is_active")
    search_fields = ("name",)
    ordering = ("order", "id")
