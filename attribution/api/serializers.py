"""Input and output shapes of the opportunity and spend endpoints. Inputs
are strict (an unknown key is a 400 naming it); outputs read only what the
views' querysets already joined."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from attribution.models import CLOSED_BEFORE_CREATED, CampaignSpend, Opportunity, OpportunityContactRole, OpportunityStageChange
from martech.api.serializers import StrictInputSerializer
from martech.models import Account, Campaign, Channel, Lead

_currency = dict(max_length=3, min_length=3)


def _upper_currency(value: str) -> str:
    value = value.upper()
    if not value.isalpha():
        raise serializers.ValidationError("A three-letter ISO 4217 code.")
    return value


class ContactRoleInputSerializer(StrictInputSerializer):
    lead = serializers.PrimaryKeyRelatedField(queryset=Lead.objects.only("id"))
    role = serializers.CharField(max_length=60, required=False, allow_blank=True, default="")
    is_primary = serializers.BooleanField(default=False)


class OpportunityInputSerializer(StrictInputSerializer):
    """Fields of an edit; only those sent change. ``contacts``, when sent,
    replaces the whole list (exactly one primary). ``stage`` moves the deal
    through the stage history; closing sets ``closed_at``."""

    name = serializers.CharField(max_length=255, required=False)
    account = serializers.PrimaryKeyRelatedField(queryset=Account.objects.only("id"), required=False, allow_null=True)
    amount = serializers.DecimalField(max_digits=18, decimal_places=2, min_value=0, required=False)
    currency = serializers.CharField(required=False, **_currency)
    pipeline = serializers.SlugField(max_length=60, required=False, help_text="Pipeline key; default: the default pipeline.")
    stage = serializers.SlugField(max_length=60, required=False, help_text="Stage key within the pipeline.")
    created_at = serializers.DateTimeField(required=False)
    closed_at = serializers.DateTimeField(required=False, allow_null=True)
    source = serializers.ChoiceField(choices=Channel.choices, required=False, allow_blank=True)
    owner = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.filter(is_active=True).only("id"), required=False, allow_null=True,
        help_text="User id.",
    )
    salesforce_id = serializers.CharField(max_length=18, required=False, allow_blank=True, allow_null=True)
    hubspot_id = serializers.CharField(max_length=32, required=False, allow_blank=True, allow_null=True)
    contacts = ContactRoleInputSerializer(many=True, required=False, max_length=500)
    expected_close_date = serializers.DateField(
        required=False, allow_null=True, help_text="The deal's own expected close date; null: its stage's default."
    )
    probability = serializers.DecimalField(
        max_digits=5, decimal_places=2, min_value=0, max_value=100, required=False, allow_null=True,
        help_text="The deal's own win probability in percent; null: its stage's.",
    )

    def validate_currency(self, value):
        return _upper_currency(value)

    def validate(self, attrs):
        # Both sent: refused here. One sent: the service checks it against the stored other (model clean).
        if attrs.get("created_at") and attrs.get("closed_at") and attrs["closed_at"] < attrs["created_at"]:
            raise serializers.ValidationError({"closed_at": [CLOSED_BEFORE_CREATED]})
        return attrs

    def validate_salesforce_id(self, value):
        return value or None

    def validate_hubspot_id(self, value):
        return value or None


class OpportunityCreateInputSerializer(OpportunityInputSerializer):
    name = serializers.CharField(max_length=255)


class OpportunityCloseInputSerializer(StrictInputSerializer):
    won = serializers.BooleanField()
    closed_at = serializers.DateTimeField(required=False, help_text="Default: now.")


class ContactRoleOutputSerializer(serializers.ModelSerializer):
    email = serializers.CharField(source="lead.email", read_only=True)

    class Meta:
        model = OpportunityContactRole
        fields = ["lead", "email", "role", "is_primary"]
        read_only_fields = fields


class StageChangeOutputSerializer(serializers.ModelSerializer):
    from_stage = serializers.SlugRelatedField(slug_field="key", read_only=True, allow_null=True)
    to_stage = serializers.SlugRelatedField(slug_field="key", read_only=True)

    class Meta:
        model = OpportunityStageChange
        fields = ["from_stage", "to_stage", "changed_at", "actor", "source"]
        read_only_fields = fields


class OpportunityOutputSerializer(serializers.ModelSerializer):
    pipeline = serializers.SlugRelatedField(slug_field="key", read_only=True)
    stage = serializers.SlugRelatedField(slug_field="key", read_only=True)
    stage_name = serializers.CharField(source="stage.name", read_only=True)
    probability = serializers.SerializerMethodField(help_text="Win probability in percent: the deal's own, else its stage's.")
    stage_probability = serializers.DecimalField(source="stage.probability", max_digits=5, decimal_places=2, read_only=True)
    own_probability = serializers.DecimalField(source="probability", max_digits=5, decimal_places=2, read_only=True, allow_null=True)
    is_won = serializers.BooleanField(source="stage.is_won", read_only=True)
    is_closed = serializers.BooleanField(source="stage.is_closed", read_only=True)
    contacts = ContactRoleOutputSerializer(source="contact_roles", many=True, read_only=True)

    class Meta:
        model = Opportunity
        fields = [
            "id", "name", "account", "amount", "currency", "pipeline", "stage", "stage_name", "probability",
            "stage_probability", "own_probability", "expected_close_date",
            "is_won", "is_closed", "created_at", "closed_at", "source", "owner", "salesforce_id", "hubspot_id",
            "contacts", "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DecimalField(max_digits=5, decimal_places=2))
    def get_probability(self, obj: Opportunity) -> str:
        value = obj.probability if obj.probability is not None else obj.stage.probability
        return f"{value:.2f}"


class OpportunityDetailOutputSerializer(OpportunityOutputSerializer):
    stage_history = StageChangeOutputSerializer(source="stage_changes", many=True, read_only=True)

    class Meta(OpportunityOutputSerializer.Meta):
        fields = [*OpportunityOutputSerializer.Meta.fields, "stage_history"]
        read_only_fields = fields


class SpendInputSerializer(StrictInputSerializer):
    """One campaign-day; sending the same (campaign, date) again replaces it."""

    campaign = serializers.PrimaryKeyRelatedField(queryset=Campaign.objects.only("id"))
    date = serializers.DateField()
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0)
    currency = serializers.CharField(required=False, help_text="Default: the company currency.", **_currency)
    impressions = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, default=0)
    clicks = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, default=0)

    def validate_currency(self, value):
        return _upper_currency(value)


class SpendOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = CampaignSpend
        fields = ["id", "campaign", "date", "amount", "currency", "impressions", "clicks"]
        read_only_fields = fields
