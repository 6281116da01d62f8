"""Nurture API: workflows (read), their metrics, manual enrollment.
Thin views (STYLE.md 11): serializers check shapes, services write."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from martech.api.views import DETAIL_ERRORS, LIST_ERRORS, WRITE_ERRORS, ApiViewSet, _paginated, _scopes, _source
from martech.models import ApiClient, Lead
from nurture.models import Workflow
from nurture.selectors import workflow_metrics
from nurture.services import enrollment_create

Scope = ApiClient.Scope


class WorkflowOutputSerializer(serializers.ModelSerializer):
    version = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = ["id", "name", "status", "trigger", "trigger_config", "enrollment_condition", "goal_condition",
                  "goal_event", "version", "has_draft_changes", "created_at", "updated_at"]

    def get_version(self, obj) -> int | None:
        return obj.current_version.number if obj.current_version_id else None


class StepMetricsSerializer(serializers.Serializer):
    step = serializers.CharField()
    type = serializers.CharField()
    executed = serializers.IntegerField()
    drop_off = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    opened = serializers.IntegerField()
    clicked = serializers.IntegerField()
    unsubscribed = serializers.IntegerField()
    bounced = serializers.IntegerField()


class WorkflowMetricsSerializer(serializers.Serializer):
    workflow = serializers.IntegerField()
    enrolled = serializers.IntegerField()
    active = serializers.IntegerField()
    completed = serializers.IntegerField()
    converted = serializers.IntegerField(help_text="Goal conversions.")
    exited = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    opened = serializers.IntegerField()
    clicked = serializers.IntegerField()
    unsubscribed = serializers.IntegerField()
    bounced = serializers.IntegerField()
    steps = StepMetricsSerializer(many=True)


class EnrollInputSerializer(serializers.Serializer):
    lead_ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1, max_length=1000)
    apply_criteria = serializers.BooleanField(default=False, help_text="Apply the enrollment criteria (manual enrollment skips them by default).")


class EnrollResultSerializer(serializers.Serializer):
    lead_id = serializers.IntegerField()
    enrolled = serializers.BooleanField()
    enrollment_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(help_text="Why not: not_active, criteria, suppressed_stage, unsubscribed, "
                                             "already_enrolled, reenroll_never, reenroll_wait, no_lead.")


class EnrollOutputSerializer(serializers.Serializer):
    results = EnrollResultSerializer(many=True)


@extend_schema_view(
    list=extend_schema(summary="List workflows", responses={200: WorkflowOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="A workflow", responses={200: WorkflowOutputSerializer, **DETAIL_ERRORS}),
)
class WorkflowViewSet(ApiViewSet):
    queryset = Workflow.objects.select_related("current_version")
    required_scopes = _scopes(Scope.NURTURE_READ, Scope.NURTURE_WRITE)
    serializer_class = WorkflowOutputSerializer

    def list(self, request):
        return _paginated(self, self.get_queryset(), WorkflowOutputSerializer)

    def retrieve(self, request, pk=None):
        return Response(WorkflowOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    @extend_schema(summary="Workflow and per-step metrics (funnel)", responses={200: WorkflowMetricsSerializer, **DETAIL_ERRORS})
    @action(detail=True, methods=["get"], url_path="metrics")
    def metrics(self, request, pk=None):
        wf = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(WorkflowMetricsSerializer(workflow_metrics(workflow=wf)).data)

    @extend_schema(
        summary="Enroll leads by hand",
        description="Each lead is answered: enrolled, or the reason it was not. Suppression and the re-enrollment "
        "policy always apply; the enrollment criteria only with apply_criteria.",
        request=EnrollInputSerializer, responses={200: EnrollOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="enroll")
    def enroll(self, request, pk=None):
        wf = get_object_or_404(self.get_queryset(), pk=pk)
        ser = EnrollInputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids = ser.validated_data["lead_ids"]
        leads = Lead.objects.select_related("lifecycle_stage", "account").in_bulk(ids)
        results = []
        for lead_id in ids:
            lead = leads.get(lead_id)
            if lead is None:
                results.append({"lead_id": lead_id, "enrolled": False, "enrollment_id": None, "reason": "no_lead"})
                continue
            enr, reason = enrollment_create(workflow=wf, lead=lead, source=_source(request),
                                            check_criteria=ser.validated_data["apply_criteria"])
            results.append({"lead_id": lead_id, "enrolled": enr is not None, "enrollment_id": enr.pk if enr else None,
                            "reason": reason})
        return Response(EnrollOutputSerializer({"results": results}).data, status=status.HTTP_200_OK)
