"""Accounts (companies). Leads join an account by their email's domain."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from martech import fields as declared
from martech.admin.base import BaseAdmin, ServiceSaveMixin
from martech.models import Account
from martech.services.accounts import ACCOUNT_WRITABLE_FIELDS, account_upsert
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
class AccountAdmin(ServiceSaveMixin, BaseAdmin):
    form = AccountForm
    list_display = ("name", "domain", "industry", "employee_count", "country", "owner", "leads_link", "created_at")
    list_select_related = ("owner",)
    list_filter = ("industry", "country")
    search_fields = ("name", "domain")
    autocomplete_fields = ("owner",)
    readonly_fields = declared.readonly(declared.ACCOUNT_FIELDS, writer=declared.STAFF)
    fieldsets = [
        (
            None,
            {"fields": ["name", "domain", "industry", "employee_count", ("annual_revenue", "currency"), "country", "owner"]},
        ),
        ("CRM ids", {"fields": ["salesforce_id", "hubspot_id"], "classes": ["collapse"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def save_model(self, request, obj: Account, form, change: bool) -> None:
        # On an edit only what the user changed, so a concurrent CRM pull's
        # write to another field is not overwritten with the form's old copy.
        names = [f for f in form.changed_data if f in ACCOUNT_WRITABLE_FIELDS] if change else [
            f for f in form.cleaned_data if f in ACCOUNT_WRITABLE_FIELDS
        ]
        data = {f: form.cleaned_data[f] for f in names}
        saved = self.call_service(
            request, account_upsert, data=data, account=obj if change else None, source="admin"
        )
        if saved is not None:
            obj.pk = saved[0].pk
            obj._state.adding = False

    @admin.display(description="Leads")
    def leads_link(self, obj: Account) -> str:
        # A link, not a COUNT per row: the lead table is the big one.
        url = reverse("admin:martech_lead_changelist")
        return format_html('<a href="{}?account__id__exact={}">leads</a>', url, obj.pk)
