"""Nurture API: workflows (read), their metrics, manual enrollment; email
templates (read, write, preview for a lead).
Thin views (docs/style.md, 11): serializers check shapes, services write."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from martech.api.serializers import StrictFieldsMixin, StrictInputSerializer
from martech.api.views import (
    DETAIL_ERRORS,
    LIST_ERRORS,
    WRITE_ERRORS,
    ApiViewSet,
    _actor,
    _paginated,
    _scopes,
    _source,
)
from martech.models import ApiClient, Lead
from nurture import channels
from nurture.models import EmailTemplate, Workflow
from nurture.selectors import workflow_metrics
from nurture.services import email_template_delete, email_template_save, enrollment_create

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


# --- email templates -----------------------------------------------------------------
TEMPLATE_FIELDS = ["name", "subject", "preheader", "html_body", "text_body"]


class EmailTemplateOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = EmailTemplate
        fields = ["id", *TEMPLATE_FIELDS, "created_at", "updated_at"]


class EmailTemplateInputSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """Shapes only: the template language is checked by the service, which
    names the field and the place (unknown merge field, syntax error)."""

    class Meta:
        model = EmailTemplate
        fields = TEMPLATE_FIELDS
        # The service reports a taken name (one message for the API and the admin).
        extra_kwargs = {"name": {"validators": []}}


class PreviewInputSerializer(StrictInputSerializer):
    lead_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False, allow_null=True,
                                       help_text="The lead to render for; omitted: an empty lead (fallbacks show).")


class PreviewOutputSerializer(serializers.Serializer):
    subject = serializers.CharField()
    preheader = serializers.CharField()
    html = serializers.CharField(help_text="The HTML part (merge fields escaped), before tracking links are added.")
    text = serializers.CharField(help_text="The text part (derived from the HTML when the template has none).")


@extend_schema_view(
    list=extend_schema(summary="List email templates", responses={200: EmailTemplateOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="An email template", responses={200: EmailTemplateOutputSerializer, **DETAIL_ERRORS}),
    create=extend_schema(
        summary="Create an email template",
        description="Subject, preheader and bodies use merge fields with fallbacks ({{first_name|there}}) and "
        "conditional blocks ({{#if score >= 50}}...{{else}}...{{/if}}); an unknown field or a syntax error is a 400 "
        "naming the field and the place. A blank text body is derived from the HTML.",
        request=EmailTemplateInputSerializer, responses={201: EmailTemplateOutputSerializer, **WRITE_ERRORS},
    ),
    partial_update=extend_schema(
        summary="Edit an email template",
        description="Published workflow versions keep the content they snapshotted; the change reaches a running "
        "journey at its workflow's next publish.",
        request=EmailTemplateInputSerializer, responses={200: EmailTemplateOutputSerializer, **WRITE_ERRORS},
    ),
    destroy=extend_schema(summary="Delete an email template",
                          description="Refused (400) while a workflow's draft names it.",
                          responses={204: None, **WRITE_ERRORS}),
)
class EmailTemplateViewSet(ApiViewSet):
    queryset = EmailTemplate.objects.all()
    required_scopes = _scopes(Scope.NURTURE_READ, Scope.NURTURE_WRITE)
    serializer_class = EmailTemplateOutputSerializer
    read_actions = ("preview",)  # a POST that renders and writes nothing

    def list(self, request):
        return _paginated(self, self.get_queryset(), EmailTemplateOutputSerializer)

    def retrieve(self, request, pk=None):
        return Response(EmailTemplateOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def _save(self, request, template: EmailTemplate, *, partial: bool) -> EmailTemplate:
        ser = EmailTemplateInputSerializer(template, data=request.data, partial=partial)
        ser.is_valid(raise_exception=True)
        for key, value in ser.validated_data.items():
            setattr(template, key, value)
        return email_template_save(template=template, actor=_actor(request))

    def create(self, request):
        template = self._save(request, EmailTemplate(), partial=False)
        return Response(EmailTemplateOutputSerializer(template).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        template = self._save(request, get_object_or_404(self.get_queryset(), pk=pk), partial=True)
        return Response(EmailTemplateOutputSerializer(template).data)

    def destroy(self, request, pk=None):
        email_template_delete(template=get_object_or_404(self.get_queryset(), pk=pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Render an email template for a lead",
        description="The saved template rendered as the engine would for this lead (without tracking links). "
        "Reading a lead's data this way also needs the leads:read scope (staff: the view-lead permission).",
        request=PreviewInputSerializer, responses={200: PreviewOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="preview")
    def preview(self, request, pk=None):
        template = get_object_or_404(self.get_queryset(), pk=pk)
        ser = PreviewInputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        lead_id = ser.validated_data.get("lead_id")
        lead = Lead()
        if lead_id is not None:
            may_read = (request.auth.has_scope(Scope.LEADS_READ.value) if isinstance(request.auth, ApiClient)
                        else request.user.has_perm("martech.view_lead"))
            if not may_read:
                raise PermissionDenied
            lead = Lead.objects.select_related("lifecycle_stage", "account", "owner").filter(pk=lead_id).first()
            if lead is None:
                raise serializers.ValidationError({"lead_id": [f"No lead with id {lead_id}."]})
        return Response(PreviewOutputSerializer(channels.render_email(template.content(), lead)).data)
