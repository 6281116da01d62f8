from __future__ import annotations

from rest_framework import serializers

from martech.api.serializers import StrictInputSerializer


class SubjectInputSerializer(StrictInputSerializer):
    """Names the person: exactly one of ``email``, ``lead`` or ``crm_id``."""

    email = serializers.EmailField(required=False, help_text="The person's email address.")
    lead = serializers.IntegerField(required=False, min_value=1, help_text="A lead id.")
    crm_id = serializers.CharField(required=False, max_length=64,
                                   help_text="A HubSpot contact id or a Salesforce Lead/Contact id.")

    def validate(self, attrs):
        if len([k for k in ("email", "lead", "crm_id") if attrs.get(k)]) != 1:
            raise serializers.ValidationError({"subject": ["Give exactly one of email, lead or crm_id."]})
        return attrs


class ExportInputSerializer(SubjectInputSerializer):
    format = serializers.ChoiceField(choices=["json", "zip"], default="json",
                                     help_text="json: the document; zip: the document and one CSV per kind of record.")


class ErasureInputSerializer(SubjectInputSerializer):
    crm_delete = serializers.BooleanField(
        default=True, help_text="Also ask each connected CRM to delete the person, through the CRM outbox.")


class ExportOutputSerializer(serializers.Serializer):
    request = serializers.IntegerField(help_text="The audit record of this export (a privacy request).")
    generated_at = serializers.DateTimeField()
    subject = serializers.DictField(help_text='How the person was named: {"named_by", "value"}.')
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Rows per kind of record.")
    records = serializers.DictField(
        child=serializers.ListField(child=serializers.DictField()),
        help_text='Every row held, by model ("martech.Event"), columns by name.')


class ReceiptOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    subject_kind = serializers.CharField()
    subject_hash = serializers.CharField(help_text="Salted hash of how the person was named; not reversible.")
    source = serializers.CharField()
    created_at = serializers.DateTimeField()
    counts = serializers.DictField(help_text='{"deleted": {model: rows}, "anonymized": {model: rows}}')
    crm_deletes = serializers.DictField(child=serializers.IntegerField(),
                                        help_text="CRM deletes queued, by provider.")
