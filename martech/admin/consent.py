"""Consent records: append-only proof. Adding one goes through
services.consent_record; records are never edited or deleted."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from martech.admin.base import BigTableAdmin, ServiceSaveMixin
from martech.models import ConsentRecord
from martech.services.leads import consent_record


class ConsentRecordForm(forms.ModelForm):
    class Meta:
        model = ConsentRecord
        fields = ("lead", "channel", "status", "evidence")
        help_texts = {"evidence": 'Proof, e.g. {"text": "<the wording agreed to>", "ticket": "SUP-123"}.'}


@admin.register(ConsentRecord)
class ConsentRecordAdmin(ServiceSaveMixin, BigTableAdmin):
    form = ConsentRecordForm
    list_display = ("recorded_at", "lead", "channel", "status", "source", "actor")
    list_select_related = ("lead", "actor")
    list_filter = ("channel", "status", "recorded_at")
    search_fields = ("=lead__email",)
    search_help_text = "A lead's exact email."
    autocomplete_fields = ("lead",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("lead", "channel", "status", "evidence")
        return ("lead", "channel", "status", "source", "evidence", "recorded_at", "actor")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj: ConsentRecord, form, change: bool) -> None:
        record = self.call_service(
            request,
            consent_record,
            lead=form.cleaned_data["lead"],
            channel=form.cleaned_data["channel"],
            granted=form.cleaned_data["status"] == ConsentRecord.Status.GRANTED,
            source="admin",
            evidence=form.cleaned_data.get("evidence") or {},
            actor=request.user,
        )
        if record is not None:
            obj.pk = record.pk
            obj._state.adding = False
