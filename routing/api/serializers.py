"""Input and output shapes of the routing API."""
from __future__ import annotations

from rest_framework import serializers

from martech.api.serializers import StrictFieldsMixin, StrictInputSerializer
from martech.scoring.models import Segment
from routing.models import Assignment, OutOfOffice, Rep, Rule, RuleSet, Team, Territory


class TeamSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "method", "sla_policy", "escalation_contact", "is_active"]


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


class RuleInputSerializer(StrictFieldsMixin, RuleSerializer):
    """One rule of a draft. Unknown keys are refused (a 400 naming them): a
    misspelt ``"conditon"`` dropped silently left an empty condition that
    matched every lead."""

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


# --- Assignments, history, absences, simulation (issue 17) -----------------------


class AssignmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Assignment
        fields = ["id", "lead", "is_current", "status", "lifecycle", "closed_at", "close_reason", "rep", "team",
                  "rule_set_version", "rule_name", "method", "trigger", "reason", "created_at", "assigned_at",
                  "ended_at", "end_reason", "sla_due_at", "first_touch_at", "first_touch_source", "escalation_level"]
        read_only_fields = fields


class AssignmentHistorySerializer(AssignmentSerializer):
    """A decision record: the assignment with the explanation of why."""

    explanation = ExplanationSerializer()

    class Meta(AssignmentSerializer.Meta):
        fields = [*AssignmentSerializer.Meta.fields, "explanation"]
        read_only_fields = fields


class AssignmentCloseInputSerializer(StrictInputSerializer):
    reason = serializers.ChoiceField(choices=[(Assignment.CloseReason.CONVERTED, "Converted"),
                                              (Assignment.CloseReason.DISQUALIFIED, "Disqualified"),
                                              (Assignment.CloseReason.API, "Closed through the API")])


class AssignmentTouchInputSerializer(StrictInputSerializer):
    source = serializers.CharField(max_length=80, required=False, default="api",
                                   help_text="What the touch was (stored as api:<source>).")
    at = serializers.DateTimeField(required=False, help_text="When (default: now).")


class AbsenceSerializer(serializers.ModelSerializer):
    class Meta:
        model = OutOfOffice
        fields = ["id", "rep", "starts_at", "ends_at", "note"]


class SimulateInputSerializer(StrictInputSerializer):
    segment = serializers.PrimaryKeyRelatedField(queryset=Segment.objects.all(), required=False, allow_null=True,
                                                 help_text="Simulate over the segment's leads now.")
    created_after = serializers.DateTimeField(required=False, help_text="Leads created at or after (with created_before).")
    created_before = serializers.DateTimeField(required=False, help_text="Leads created before.")
    days = serializers.IntegerField(min_value=1, max_value=3650, required=False,
                                    help_text="Leads created in the last N days (default 30 when nothing else is given).")
    compare_to = serializers.PrimaryKeyRelatedField(queryset=RuleSet.objects.all(), required=False, allow_null=True,
                                                    help_text="The set to compare with (default: the live one).")
    moves_limit = serializers.IntegerField(min_value=0, max_value=5000, default=500,
                                           help_text="How many of the leads that move to list.")

    def validate(self, data):
        chosen = [k for k in ("segment", "days") if data.get(k)] + (
            ["created range"] if data.get("created_after") or data.get("created_before") else [])
        if len(chosen) > 1:
            raise serializers.ValidationError({"segment": [f"Choose one of segment, days or a created range, not {' and '.join(chosen)}."]})
        after, before = data.get("created_after"), data.get("created_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"created_before": ["Must be after created_after."]})
        return data


class SimulationMoveSerializer(serializers.Serializer):
    lead_id = serializers.IntegerField()
    email = serializers.CharField()
    from_team = serializers.CharField()
    from_rep = serializers.CharField()
    from_rule = serializers.CharField()
    to_team = serializers.CharField()
    to_rep = serializers.CharField()
    to_rule = serializers.CharField()
    to_status = serializers.CharField()


class SimulationOutputSerializer(serializers.Serializer):
    leads = serializers.IntegerField()
    draft = serializers.DictField(help_text="by_team, by_rep, by_rule, invalid_rules for the simulated set.")
    published = serializers.DictField(allow_null=True, help_text="The same for the set compared with.")
    changed = serializers.DictField(allow_null=True, help_text="How many leads change rule / team.")
    team_delta = serializers.DictField(required=False)
    moves_total = serializers.IntegerField(help_text="How many leads would move (team, rep or status).")
    moves = SimulationMoveSerializer(many=True, help_text="The first moves_limit of them: from team/rep X to Y.")
