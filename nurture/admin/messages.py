from django.contrib import admin

from martech.admin.base import BaseAdmin, BigTableAdmin, ReadOnlyMixin
from nurture.models import Message, Suppression


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("created_at", "channel", "to", "subject", "status", "opened_at", "clicked_at", "workflow", "step")
    list_filter = ("status", "channel")
    list_select_related = ("workflow",)
    search_fields = ("to", "key")
    raw_id_fields = ("lead",)


@admin.register(Suppression)
class SuppressionAdmin(BaseAdmin):
    list_display = ("address", "reason", "created_at", "detail")
    list_filter = ("reason",)
    search_fields = ("address",)
