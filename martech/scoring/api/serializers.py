from __future__ import annotations

from rest_framework import serializers

from martech.scoring.models import ScoreHistory, Segment


class SegmentOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Segment
        fields = ["id", "name", "description", "condition", "created_at", "updated_at"]


class SegmentDetailOutputSerializer(SegmentOutputSerializer):
    member_count = serializers.IntegerField(read_only=True)
    fields_read = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(SegmentOutputSerializer.Meta):
        fields = [*SegmentOutputSerializer.Meta.fields, "member_count", "fields_read"]


class ContributionSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["fit", "engagement"])
    rule_id = serializers.IntegerField()
    rule = serializers.CharField()
    points = serializers.FloatField()
    events = serializers.IntegerField()
    last_at = serializers.DateTimeField(allow_null=True)


class ScoreOutputSerializer(serializers.Serializer):
    lead_id = serializers.IntegerField()
    fit_score = serializers.IntegerField()
    engagement_score = serializers.IntegerField()
    total_score = serializers.IntegerField()
    model = serializers.CharField(allow_null=True)
    computed_at = serializers.DateTimeField(
        allow_null=True, help_text="When the stored breakdown was computed; null if the lead was never scored.")
    contributions = ContributionSerializer(many=True, help_text="The stored per-rule breakdown of that computation.")


class ScoreHistoryOutputSerializer(serializers.ModelSerializer):
    breakdown = ContributionSerializer(many=True, read_only=True)

    class Meta:
        model = ScoreHistory
        fields = ["id", "changed_at", "fit_score", "engagement_score", "total_score", "old_total", "reason",
                  "breakdown"]
