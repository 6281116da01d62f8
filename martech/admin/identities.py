"""Identities: ids a lead was seen under (anonymous ids, product user ids).
Linked through services.identity_link, which also attaches earlier events."""
from __future__ import annotations

from django.contrib import admin

from martech.admin.base import BigTableAdmin, ServiceSaveMixin
from martech.models import Identity
from martech.services.leads import identity_link


@admin.register(Identity)
class IdentityAdmin(ServiceSaveMixin, BigTableAdmin):
    list_display = ("value", "kind", "lead", "created_at")
    list_select_related = ("lead",)
    list_filter = ("kind",)
    # Exact matches only: both are indexed, a substring search is a scan.
    search_fields = ("=value", "=lead__email")
    search_help_text = "An exact id, or a lead's exact email."
    autocomplete_fields = ("lead",)
    fields = ("kind", "value", "lead", "created_at")
    readonly_fields = ("created_at",)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Unlinking would orphan the events attached through this id.
        return False

    def save_model(self, request, obj: Identity, form, change: bool) -> None:
        data = form.cleaned_data
        identity = self.call_service(request, identity_link, lead=data["lead"], kind=data["kind"], value=data["value"])
        if identity is not None:
            obj.pk = identity.pk
            obj._state.adding = False
