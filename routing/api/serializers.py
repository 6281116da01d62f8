"""Input and output shapes of the routing API."""
from __future__ import annotations

from rest_framework import serializers

from martech.api.serializers import StrictInputSerializer
from routing.models import Assignment, Rep, Rule, RuleSet, Team, Territory


class TeamSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "method", "sla_policy", "is_active"]


class RepSerializer(serializers.ModelSerializer):
    class Meta:
        model = Rep
        fields = ["id", "name", "email", "user", "team", "time_zone", "working_hours", "holidays", "max_open_leads",
                  "max_per_day", "weight", "is_active", "manager", "backup", "hubspot_owner_id", "salesforce_user_id"]


class TerritorySerializer(serializers.ModelSerializer):
    countries = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    regions = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    postal_prefixes = serializers.ListField(child=serializers.CharField(max_length=20), required=False)
    industries = serializers.ListField(child=serializers.CharField(max_length=100), required=False)

    class Meta:
        model = Territory
        fields = ["id", "name", "countries", "regions", "postal_prefixes", "industries", "min_employees", "max_employees"]


class RuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = Rule
        fields = ["id", "order", "name", "condition", "territory", "action", "team", "rep", "is_active"]
        read_only_fields = ["id"]


class RuleInputSerializer(RuleSerializer):
    """One rule of a draft. Unknown keys are refused (a 400 naming them): a
    misspelt ``"conditon"`` dropped silently left an empty condition that
    matched every lead."""

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

    class Meta(RuleSerializer.Meta):
        fields = ["order", "name", "condition", "territory", "action", "team", "rep", "is_active"]


class RuleSetOutputSerializer(serializers.ModelSerializer):
    rules = RuleSerializer(many=True, read_only=True)

    class Meta:
        model = RuleSet
        fields = ["id", "name", "status", "version", "fallback_team", "note", "copied_from", "created_at",
                  "published_at", "rules"]


class RuleSetInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=100, required=False)
    fallback_team = serializers.PrimaryKeyRelatedField(queryset=Team.objects.all(), required=False, allow_null=True)
    note = serializers.CharField(max_length=255, required=False, allow_blank=True)
    rules = RuleInputSerializer(many=True, required=False)


class LeadIdSerializer(StrictInputSerializer):
    lead_id = serializers.IntegerField(min_value=1, max_value=2**62)


class RouteInputSerializer(LeadIdSerializer):
    reroute = serializers.BooleanField(default=False, help_text="Replace a current assignment (default: keep it).")


class ExplanationSerializer(serializers.Serializer):
    rule_set_version = serializers.IntegerField(allow_null=True)
    rule_set_id = serializers.IntegerField(allow_null=True)
    rule = serializers.CharField(allow_null=True)
    rule_id = serializers.IntegerField(allow_null=True)
    method = serializers.CharField()
    steps = serializers.ListField(child=serializers.DictField())
    result = serializers.DictField()


class AssignmentOutputSerializer(serializers.ModelSerializer):
    created = serializers.BooleanField(help_text="False when the lead kept its current assignment.")

    class Meta:
        model = Assignment
        fields = ["id", "lead", "status", "rep", "team", "rule_set_version", "rule_name", "method", "trigger",
                  "created_at", "assigned_at", "sla_due_at", "first_touch_at", "explanation", "created"]
