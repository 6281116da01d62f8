from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


class SubjectForm(forms.Form):
    """Names the person: exactly one of email, lead id or CRM id."""

    email = forms.EmailField(required=False, help_text="The person's email address.")
    lead = forms.IntegerField(required=False, min_value=1, label="Lead id")
    crm_id = forms.CharField(required=False, max_length=64, label="CRM id",
                             help_text="A HubSpot contact id or a Salesforce Lead/Contact id.")
    crm_delete = forms.BooleanField(
        required=False, initial=True, label="Also delete in the CRMs",
        help_text="On erasure, ask each connected CRM to delete the person (HubSpot GDPR delete, Salesforce "
                  "delete), through the CRM outbox.")

    def clean(self):
        data = super().clean()
        given = [k for k in ("email", "lead", "crm_id") if data.get(k)]
        if len(given) != 1:
            raise ValidationError("Give exactly one of email, lead id or CRM id.")
        return data

    def subject_kwargs(self) -> dict:
        data = self.cleaned_data
        return {"email": data.get("email") or "", "lead_id": data.get("lead"), "crm_id": data.get("crm_id") or ""}
