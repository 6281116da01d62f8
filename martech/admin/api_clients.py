"""API clients. Tokens are made by a management command and shown once;
only their prefix is visible here, so there is no "add" in the admin."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from martech.admin.base import HistoryAdmin
from martech.models import ApiClient


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiClient.Scope.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = ApiClient
        fields = ("name", "scopes", "is_active")


@admin.register(ApiClient)
class ApiClientAdmin(HistoryAdmin):
    form = ApiClientForm
    list_display = ("name", "token_prefix", "scope_list", "is_active", "last_used_at", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "token_prefix")
    fields = ("name", "token_prefix", "scopes", "is_active", "last_used_at", "created_at")
    readonly_fields = ("token_prefix", "last_used_at", "created_at")

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiClient) -> str:
        return ", ".join(obj.scopes or []) or "—"

    def has_add_permission(self, request) -> bool:
        return False
