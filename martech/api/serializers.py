"""Input and output serializers for the REST API.

Input serializers check the *shape* of a request (types, lengths, no unknown
keys); the services check meaning (normalized email, known stage, unique
keys) and name the field when they refuse. Output serializers only render,
reading relations the view's queryset already joined (select_related), so a
page costs the same number of queries whatever its size.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from martech import fields as declared
from martech.models import Account, Campaign, Channel, ConsentRecord, Event, Lead, LifecycleStage


def _no_nul(value: Any, path: str = "") -> None:
    """PostgreSQL refuses NUL in text and in jsonb, as a 500 at save time;
    refuse it here, as a 400 naming the field."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError(f"Null characters are not allowed{f' (at {path})' if path else ''}.")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k, path)
            _no_nul(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nul(v, f"{path}[{i}]")


class StrictFieldsMixin:
    """Refuses keys the serializer does not know (DRF ignores them by
    default), so a misspelt field is a 400 naming it, never silently
    dropped. Mixed into plain and model serializers alike."""

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        errors = {str(k): ["Unknown field."] for k in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict):
                raise
            raise serializers.ValidationError({**exc.detail, **errors}) from exc
        if errors:
            raise serializers.ValidationError(errors)
        return value


class StrictInputSerializer(StrictFieldsMixin, serializers.Serializer):
    """An input serializer that refuses unknown keys (StrictFieldsMixin)."""


def _text(max_length: int, **kwargs) -> serializers.CharField:
    return serializers.CharField(max_length=max_length, required=False, allow_blank=True, **kwargs)


class PropertiesField(serializers.DictField):
    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        _no_nul(value)
        return value


# --- Errors (documentation only: martech.api.errors builds the body) ---------


class ApiErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: invalid, not_authenticated, permission_denied, not_found, throttled ...")
    message = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Offending field -> reasons; empty when the error is not about a field.",
    )
    retry_after = serializers.IntegerField(required=False, help_text="Seconds to wait (429 only).")


class ApiErrorSerializer(serializers.Serializer):
    error = ApiErrorDetailSerializer()


# --- Shared nested output ----------------------------------------------------


class AccountRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Account
        fields = ["id", "name", "domain"]


class UserRefSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="get_username", read_only=True)

    class Meta:
        model = get_user_model()
        fields = ["id", "username"]


# --- Leads -------------------------------------------------------------------


class LeadInputSerializer(StrictInputSerializer):
    """Any subset of the lead's writable fields. ``lifecycle_stage`` is a stage
    key; ``properties`` is merged key by key into the custom properties."""

    # The fields martech.fields lets the API write (a test keeps them equal),
    # each typed here with the API's limits.

    email = _text(254, allow_null=True)
    first_name = _text(100)
    last_name = _text(100)
    job_title = _text(150)
    phone = _text(40)
    company_name = _text(255)
    country = _text(2, help_text="ISO 3166-1 alpha-2")
    region = _text(100)
    postal_code = _text(20)
    time_zone = _text(64, help_text="IANA name, e.g. Europe/Berlin")
    salesforce_lead_id = _text(18, allow_null=True)
    salesforce_contact_id = _text(18, allow_null=True)
    hubspot_id = _text(32, allow_null=True)
    lifecycle_stage = serializers.SlugField(max_length=40, required=False, allow_blank=True, help_text="Stage key")
    properties = PropertiesField(required=False)


class LeadUpsertInputSerializer(LeadInputSerializer):
    """The lead is found by normalized email, else by a CRM id; one of them is required."""


class LeadStageInputSerializer(StrictInputSerializer):
    lifecycle_stage = serializers.SlugField(max_length=40, help_text="Key of the lifecycle stage to move to")
    reason = serializers.CharField(max_length=255)


class LeadOutputSerializer(serializers.ModelSerializer):
    phone = serializers.CharField(read_only=True)
    lifecycle_stage = serializers.SlugRelatedField(slug_field="key", read_only=True, allow_null=True)
    account = AccountRefSerializer(read_only=True, allow_null=True)
    owner = UserRefSerializer(read_only=True, allow_null=True)
    full_name = serializers.CharField(read_only=True)

    class Meta:
        model = Lead
        # Every declared lead field, in its order (martech.fields).
        fields = list(declared.names(declared.LEAD_FIELDS))
        read_only_fields = fields


class ConsentStateSerializer(serializers.Serializer):
    """Current consent per channel: the latest record's status, or null when
    the lead never gave or withdrew consent there. One field per
    ConsentChannel (a test keeps the two lists equal)."""

    email = serializers.ChoiceField(choices=ConsentRecord.Status.choices, allow_null=True)
    sms = serializers.ChoiceField(choices=ConsentRecord.Status.choices, allow_null=True)
    ads = serializers.ChoiceField(choices=ConsentRecord.Status.choices, allow_null=True)
    phone = serializers.ChoiceField(choices=ConsentRecord.Status.choices, allow_null=True)



class LeadDetailOutputSerializer(LeadOutputSerializer):
    consent = serializers.SerializerMethodField()

    class Meta(LeadOutputSerializer.Meta):
        fields = [*LeadOutputSerializer.Meta.fields, "consent"]
        read_only_fields = fields

    @extend_schema_field(ConsentStateSerializer)
    def get_consent(self, lead: Lead) -> dict[str, str | None]:
        # Computed by the view through selectors.lead_consent_state.
        return self.context["consent"]


# --- Accounts ----------------------------------------------------------------


class AccountInputSerializer(StrictInputSerializer):
    # The fields martech.fields lets the API write (a test keeps them equal).
    name = serializers.CharField(max_length=255, required=False)
    domain = _text(255, allow_null=True, help_text="Any form: https://www.acme.com/ is stored as acme.com")
    industry = _text(100)
    employee_count = serializers.IntegerField(min_value=0, max_value=2_147_483_647, required=False, allow_null=True)
    annual_revenue = serializers.DecimalField(max_digits=18, decimal_places=2, required=False, allow_null=True)
    currency = _text(3)
    country = _text(2, help_text="ISO 3166-1 alpha-2")
    owner = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.filter(is_active=True), required=False, allow_null=True
    )
    salesforce_id = _text(18, allow_null=True)
    hubspot_id = _text(32, allow_null=True)


class AccountUpsertInputSerializer(AccountInputSerializer):
    """Found by normalized domain; ``name`` is needed when the account is new."""


class AccountOutputSerializer(serializers.ModelSerializer):
    owner = UserRefSerializer(read_only=True, allow_null=True)

    class Meta:
        model = Account
        fields = list(declared.names(declared.ACCOUNT_FIELDS))
        read_only_fields = fields


# --- Lifecycle stages ------------------------------------------------------


class LifecycleStageOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = LifecycleStage
        fields = ["key", "name", "order", "description", "is_active"]
        read_only_fields = fields


# --- Events ------------------------------------------------------------------


class EventOutputSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="event_type.name", read_only=True)

    class Meta:
        model = Event
        fields = [
            "id",
            "client_event_id",
            "kind",
            "type",
            "lead",
            "anonymous_id",
            "properties",
            "context",
            "occurred_at",
            "received_at",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_term",
            "utm_content",
            "channel",
            "campaign",
        ]
        read_only_fields = fields


# --- Campaigns -------------------------------------------------------------


class CampaignInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=255, required=False)
    utm_source = _text(255)
    utm_medium = _text(255)
    utm_campaign = _text(255)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    start_date = serializers.DateField(required=False, allow_null=True)
    end_date = serializers.DateField(required=False, allow_null=True)
    budget = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0, required=False, allow_null=True)
    currency = _text(3)
    salesforce_id = _text(18, allow_null=True)
    hubspot_id = _text(32, allow_null=True)

    def validate_salesforce_id(self, value):
        return value or None

    def validate_hubspot_id(self, value):
        return value or None


class CampaignCreateInputSerializer(CampaignInputSerializer):
    name = serializers.CharField(max_length=255)


class CampaignOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "channel",
            "start_date",
            "end_date",
            "budget",
            "currency",
            "salesforce_id",
            "hubspot_id",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
