"""Attribution report API: thin views over attribution.selectors. JSON by
default, CSV with ``?format=csv`` (or ``Accept: text/csv``)."""
from __future__ import annotations

import csv
import io
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from attribution import selectors
from django.core.exceptions import ValidationError as DjangoValidationError

from attribution.imports import csv_rows, opportunities_import, spend_import
from attribution.models import AttributionCredit, AttributionModel, CampaignSpend, Opportunity
from martech.api.throttling import ClientRateThrottle
from martech.models import ApiClient, Channel


def _plain(value):
    """Money as strings with two places, as DecimalField serializers give it
    (DRF's JSON encoder would turn a bare Decimal into a float)."""
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        rows = data.get("results") if isinstance(data, dict) else None
        if rows is None:  # an error body: keep it readable
            rows = [data.get("error", data)] if isinstance(data, dict) else []
        buffer = io.StringIO()
        if rows:
            flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} | {f"{k}_{m}": x for k, v in r.items() if isinstance(v, dict) for m, x in v.items()} for r in rows]
            writer = csv.DictWriter(buffer, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
        return buffer.getvalue().encode()


class ReportQuerySerializer(serializers.Serializer):
    model = serializers.ChoiceField(choices=AttributionModel.choices, default=AttributionModel.LINEAR)
    group_by = serializers.ChoiceField(choices=[(g, g) for g in selectors.GROUPS], default="channel")
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)
    channel = serializers.ChoiceField(choices=Channel.choices + [(AttributionCredit.UNATTRIBUTED, "Unattributed")], required=False)
    campaign = serializers.IntegerField(required=False, min_value=1)

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"end": ["end must not be before start."]})
        return attrs


class CompareQuerySerializer(ReportQuerySerializer):
    model = None
    channel = None
    campaign = None


_ROW = inline_serializer("AttributionReportRow", {
    "group": serializers.CharField(),
    "campaign_id": serializers.IntegerField(required=False, allow_null=True),
    "attributed_revenue": serializers.DecimalField(max_digits=18, decimal_places=2),
    "attributed_conversions": serializers.FloatField(),
    "attributed_pipeline": serializers.DecimalField(max_digits=18, decimal_places=2),
    "opportunity_count": serializers.IntegerField(),
    "spend": serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True),
    "roas": serializers.FloatField(allow_null=True),
    "roi": serializers.FloatField(allow_null=True),
    "cpa": serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True),
}, many=True)


class _ReportView(APIView):
    renderer_classes = [JSONRenderer, CSVRenderer]
    throttle_classes = [AnonRateThrottle, ClientRateThrottle]
    permission_model = AttributionCredit
    required_scopes = {"read": ApiClient.Scope.ATTRIBUTION_READ.value}

    def _query(self, serializer_class, request) -> dict:
        params = {k: v for k, v in request.query_params.items() if k != "format"}
        serializer = serializer_class(data=params)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


class ReportView(_ReportView):
    @extend_schema(
        operation_id="attribution_report",
        parameters=[ReportQuerySerializer, OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"])],
        responses={200: inline_serializer("AttributionReport", {
            "model": serializers.CharField(), "group_by": serializers.CharField(), "results": _ROW,
        })},
    )
    def get(self, request):
        q = self._query(ReportQuerySerializer, request)
        rows = selectors.attribution_report(
            model=q["model"], group_by=q["group_by"], start=q.get("start"), end=q.get("end"),
            channel=q.get("channel"), campaign_id=q.get("campaign"),
        )
        return Response({"model": q["model"], "group_by": q["group_by"], "results": _plain(rows)})


class CompareView(_ReportView):
    @extend_schema(
        operation_id="attribution_compare",
        parameters=[CompareQuerySerializer, OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"])],
        responses={200: inline_serializer("AttributionComparison", {
            "group_by": serializers.CharField(),
            "results": inline_serializer("AttributionComparisonRow", {
                "group": serializers.CharField(),
                "revenue": serializers.DictField(child=serializers.DecimalField(max_digits=18, decimal_places=2)),
            }, many=True),
        })},
    )
    def get(self, request):
        q = self._query(CompareQuerySerializer, request)
        rows = selectors.attribution_compare(
            group_by=q["group_by"], start=q.get("start"), end=q.get("end"), models=[m.value for m in AttributionModel]
        )
        return Response({"group_by": q["group_by"], "results": _plain(rows)})


class ImportInputSerializer(serializers.Serializer):
    rows = serializers.ListField(child=serializers.DictField(child=serializers.CharField(allow_blank=True)), required=False, max_length=10000)
    csv = serializers.CharField(required=False, allow_blank=False, max_length=20_000_000)

    def validate(self, attrs):
        if ("rows" in attrs) == ("csv" in attrs):
            raise serializers.ValidationError({"rows": ["Give exactly one of rows (objects) or csv (text)."]})
        return attrs


_IMPORT_DOC = "All or nothing: any bad row refuses the whole request, naming each row and field."


class _ImportView(APIView):
    throttle_classes = [AnonRateThrottle, ClientRateThrottle]
    required_scopes = {"read": ApiClient.Scope.ATTRIBUTION_READ.value, "write": ApiClient.Scope.ATTRIBUTION_WRITE.value}

    def _rows(self, request) -> list[dict]:
        serializer = ImportInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "csv" in data:
            return csv_rows(data["csv"])
        return [{k.strip().lower(): v.strip() for k, v in row.items()} for row in data["rows"]]

    def _run(self, fn, request, **kwargs):
        try:
            return Response(fn(rows=self._rows(request), **kwargs), status=200)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"rows": exc.messages})


class SpendImportView(_ImportView):
    permission_model = CampaignSpend

    @extend_schema(
        operation_id="attribution_spend_import", description="Upsert daily campaign spend by (campaign, date). " + _IMPORT_DOC,
        request=ImportInputSerializer, responses={200: inline_serializer("SpendImportResult", {"rows": serializers.IntegerField()})},
    )
    def post(self, request):
        return self._run(spend_import, request)


class OpportunityImportView(_ImportView):
    permission_model = Opportunity

    @extend_schema(
        operation_id="opportunities_import",
        description="Create or update opportunities (by CRM id) through opportunity_upsert; contacts is a ';' list of lead emails, the first primary. " + _IMPORT_DOC,
        request=ImportInputSerializer,
        responses={200: inline_serializer("OpportunityImportResult", {"created": serializers.IntegerField(), "updated": serializers.IntegerField()})},
    )
    def post(self, request):
        return self._run(opportunities_import, request, actor=request.user if request.user.is_authenticated else None)


class PipelineQuerySerializer(serializers.Serializer):
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)


class PipelineView(_ReportView):
    renderer_classes = [JSONRenderer]
    permission_model = Opportunity

    @extend_schema(
        operation_id="attribution_pipeline",
        description="Pipeline stage conversion, time in stage, win rate by source, average deal size, weighted "
        "forecast, velocity, and the lead lifecycle funnel, for opportunities created (transitions made) in the range.",
        parameters=[PipelineQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        q = self._query(PipelineQuerySerializer, request)
        body = selectors.pipeline_report(start=q.get("start"), end=q.get("end"))
        body["lifecycle_funnel"] = selectors.lifecycle_funnel(start=q.get("start"), end=q.get("end"))
        return Response(_plain(body))
