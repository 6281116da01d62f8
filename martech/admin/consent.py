"""Consent records: append-only proof. Adding one goes through
services.consent_record; records are never edited or deleted."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from martech.admin.base import BigTableAdmin, ReadOnlyMixin, ServiceSaveMixin
from martech.models import ConsentConfirmation, ConsentRecord
from martech.services.leads import consent_record


class ConsentRecordForm(forms.ModelForm):
    class Meta:
        model = ConsentRecord
        fields = ("lead", "channel", "topic", "status", "evidence")
        help_texts = {"evidence": 'Proof, e.g. {"text": "<the wording agreed to>", "ticket": "SUP-123"}.'}


@admin.register(ConsentRecord)
class ConsentRecordAdmin(ServiceSaveMixin, BigTableAdmin):
    form = ConsentRecordForm
    list_display = ("recorded_at", "lead", "channel", "topic", "status", "source", "actor")
    list_select_related = ("lead", "actor", "topic")
    list_filter = ("channel", "topic", "status", "recorded_at")
    search_fields = ("=lead__email",)
    search_help_text = "A lead's exact email."
    autocomplete_fields = ("lead",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("lead", "channel", "topic", "status", "evidence")
        return ("lead", "channel", "topic", "status", "source", "evidence", "recorded_at", "actor")

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
            topic=form.cleaned_data.get("topic"),
            granted=form.cleaned_data["status"] == ConsentRecord.Status.GRANTED,
            source="admin",
            evidence=form.cleaned_data.get("evidence") or {},
            actor=request.user,
        )
        if record is not None:
            obj.pk = record.pk
            obj._state.adding = False


@admin.register(ConsentConfirmation)
class ConsentConfirmationAdmin(ReadOnlyMixin, BigTableAdmin):
    """Double opt-in requests: written by form submissions, settled by the
    person's click (services.consent_confirm) or by expiry."""

    list_display = ("requested_at", "lead", "channel", "form", "status", "sent_at", "confirmed_at", "expires_at")
    list_select_related = ("lead", "form")
    list_filter = ("status", "channel", "requested_at")
    search_fields = ("=lead__email",)
    search_help_text = "A lead's exact email."
