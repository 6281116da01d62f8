"""Accounts (companies). Leads join an account by their email's domain."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from martech.admin.base import BaseAdmin
from martech.models import Account
from martech.services.normalize import normalize_domain


class AccountForm(forms.ModelForm):
    class Meta:
        model = Account
        fields = "__all__"

    def clean_domain(self):
        # Stored normalized, as lead_upsert looks accounts up by the bare
        # domain of an email ("https://www.Acme.com/" -> "acme.com").
        return normalize_domain(self.cleaned_data.get("domain"))


@admin.register(Account)
class AccountAdmin(BaseAdmin):
    form = AccountForm
    list_display = ("name", "domain", "industry", "employee_count", "country", "owner", "leads_link", "created_at")
    list_select_related = ("owner",)
    list_filter = ("industry", "country")
    search_fields = ("name", "domain")
    autocomplete_fields = ("owner",)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = [
        (None, {"fields": ["name", "domain", "industry", "employee_count", ("annual_revenue", "currency"), "country", "owner"]}),
        ("CRM ids", {"fields": ["salesforce_id", "hubspot_id"], "classes": ["collapse"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    @admin.display(description="Leads")
    def leads_link(self, obj: Account) -> str:
        # A link, not a COUNT per row: the lead table is the big one.
        return format_html('<a href="{}?account__id__exact={}">leads</a>', reverse("admin:martech_lead_changelist"), obj.pk)
