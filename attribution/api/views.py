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

from attribution import forecast, selectors
from django.core.exceptions import ValidationError as DjangoValidationError

from attribution.imports import csv_rows, opportunities_import, spend_import
from attribution.models import AttributionCredit, AttributionModel, CampaignSpend, Opportunity, OpportunityStageChange
from martech.csvsafe import cell_escape
from martech.api.throttling import ClientRateThrottle
from martech.api.views import _errors
from martech.models import ApiClient, Channel
from routing.models import Assignment


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
            writer.writerows({k: cell_escape(v) for k, v in row.items()} for row in flat)
        return buffer.getvalue().encode()


class ReportQuerySerializer(serializers.Serializer):
    model = serializers.ChoiceField(choices=AttributionModel.choices, default=AttributionModel.LINEAR)
    group_by = serializers.ChoiceField(choices=[(g, g) for g in selectors.GROUPS], default="channel")
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)
    channel = serializers.ChoiceField(choices=Channel.choices + [(AttributionCredit.UNATTRIBUTED, "Unattributed")], required=False)
    campaign = serializers.IntegerField(required=False, min_value=1)
    currency = serializers.CharField(
        required=False, min_length=3, max_length=3,
        help_text="Only the deals and spend in this ISO 4217 currency, unconverted. Default: everything, converted "
        "to the company currency.",
    )

    def validate_currency(self, value: str) -> str:
        if not value.isalpha():
            raise serializers.ValidationError("A three-letter ISO 4217 code.")
        return value.upper()

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"end": ["end must not be before start."]})
        return attrs


class CompareQuerySerializer(ReportQuerySerializer):
    model = None
    channel = None
    campaign = None


_MONEY_ROW = {
    "currency": serializers.CharField(help_text="The currency of every amount in the row."),
    "rate_date_first": serializers.DateField(allow_null=True, help_text="The earliest exchange rate date used."),
    "rate_date_last": serializers.DateField(allow_null=True, help_text="The latest exchange rate date used."),
    "unconverted_currencies": serializers.CharField(
        help_text="Comma-separated currencies whose amounts had no rate and are left out of the row's sums."),
}
_MONEY_HEAD = {
    "currency": serializers.CharField(),
    "converted": serializers.BooleanField(help_text="Amounts converted to the company currency (no currency filter)."),
    "rate_date_first": serializers.DateField(allow_null=True),
    "rate_date_last": serializers.DateField(allow_null=True),
    "unconverted_currencies": serializers.ListField(child=serializers.CharField()),
}

_ROW = inline_serializer("AttributionReportRow", {
    "group": serializers.CharField(),
    "campaign_id": serializers.IntegerField(required=False, allow_null=True),
    **_MONEY_ROW,
    "attributed_revenue": serializers.DecimalField(max_digits=18, decimal_places=2),
    "attributed_conversions": serializers.FloatField(),
    "attributed_pipeline": serializers.DecimalField(max_digits=18, decimal_places=2),
    "opportunity_count": serializers.IntegerField(),
    "spend": serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True),
    "roas": serializers.FloatField(allow_null=True),
    "roi": serializers.FloatField(allow_null=True),
    "cpa": serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True),
    "new_leads": serializers.IntegerField(),
    "cost_per_lead": serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True),
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
            "model": serializers.CharField(), "group_by": serializers.CharField(), **_MONEY_HEAD, "results": _ROW,
        })},
    )
    def get(self, request):
        q = self._query(ReportQuerySerializer, request)
        rows = selectors.attribution_report(
            model=q["model"], group_by=q["group_by"], start=q.get("start"), end=q.get("end"),
            channel=q.get("channel"), campaign_id=q.get("campaign"), currency=q.get("currency"),
        )
        return Response({
            "model": q["model"], "group_by": q["group_by"], **selectors.money_summary(rows, currency=q.get("currency")),
            "results": _plain(rows),
        })


class CompareView(_ReportView):
    @extend_schema(
        operation_id="attribution_compare",
        parameters=[CompareQuerySerializer, OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"])],
        responses={200: inline_serializer("AttributionComparison", {
            "group_by": serializers.CharField(),
            **_MONEY_HEAD,
            "results": inline_serializer("AttributionComparisonRow", {
                "group": serializers.CharField(),
                "campaign_id": serializers.IntegerField(required=False, allow_null=True),
                **_MONEY_ROW,
                "revenue": serializers.DictField(child=serializers.DecimalField(max_digits=18, decimal_places=2)),
            }, many=True),
        })},
    )
    def get(self, request):
        q = self._query(CompareQuerySerializer, request)
        rows = selectors.attribution_compare(
            group_by=q["group_by"], start=q.get("start"), end=q.get("end"), models=[m.value for m in AttributionModel],
            currency=q.get("currency"),
        )
        return Response({
            "group_by": q["group_by"], **selectors.money_summary(rows, currency=q.get("currency")), "results": _plain(rows),
        })


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
            raise serializers.ValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"rows": exc.messages}) from exc


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
        # _actor: an API client's stand-in user is not a User row (the stage history's actor would be a 500).
        return self._run(opportunities_import, request, actor=_actor(request))


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


class ForecastQuerySerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="Keep expected close months from this day's month.")
    end = serializers.DateField(required=False, help_text="Keep expected close months up to this day's month.")
    source = serializers.ChoiceField(choices=Channel.choices, required=False)
    currency = serializers.CharField(
        required=False, min_length=3, max_length=3,
        help_text="Only the open deals in this ISO 4217 currency, unconverted. Default: all, in the company currency.",
    )
    validate_currency = ReportQuerySerializer.validate_currency  # the same check

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"end": ["end must not be before start."]})
        return attrs


class AccuracyQuerySerializer(ForecastQuerySerializer):
    currency = None
    taken_on = serializers.DateField(
        required=False, help_text="Compare this day's snapshot; default: per month, the last taken before it began."
    )


_FORECAST_GROUP = {
    "open_deals": serializers.IntegerField(),
    "pipeline": serializers.DecimalField(max_digits=20, decimal_places=2),
    "weighted": serializers.DecimalField(max_digits=20, decimal_places=2),
    "commit": serializers.DecimalField(max_digits=20, decimal_places=2),
    "unconverted_deals": serializers.IntegerField(help_text="Deals left out of the sums: no rate for their currency."),
}


class ForecastView(_ReportView):
    renderer_classes = [JSONRenderer, CSVRenderer]
    permission_model = Opportunity

    @extend_schema(
        operation_id="attribution_forecast",
        description="The open pipeline's forecast by expected close month and by source: weighted (amount x win "
        "probability, the deal's own or its stage's) and commit (amounts of deals at or above the commit "
        "probability). Expected close: the deal's own date, else entering its stage plus the stage's days to close; "
        "neither: month \"(unscheduled)\". In the company currency at each deal's creation-day rate. CSV: the months.",
        parameters=[ForecastQuerySerializer, OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"])],
        responses={200: inline_serializer("AttributionForecast", {
            "currency": serializers.CharField(), "converted": serializers.BooleanField(),
            "commit_probability": serializers.IntegerField(),
            "rate_date_first": serializers.DateField(allow_null=True), "rate_date_last": serializers.DateField(allow_null=True),
            "unconverted_currencies": serializers.ListField(child=serializers.CharField()),
            "total": inline_serializer("AttributionForecastTotal", _FORECAST_GROUP),
            "by_month": inline_serializer("AttributionForecastMonth", {"month": serializers.CharField(), **_FORECAST_GROUP}, many=True),
            "by_source": inline_serializer("AttributionForecastSource", {"source": serializers.CharField(), **_FORECAST_GROUP}, many=True),
        })},
    )
    def get(self, request):
        q = self._query(ForecastQuerySerializer, request)
        body = forecast.forecast_report(source=q.get("source"), currency=q.get("currency"), start=q.get("start"), end=q.get("end"))
        if request.accepted_renderer.format == "csv":
            body["results"] = [{"currency": body["currency"], **row} for row in body["by_month"]]
        return Response(_plain(body))


class ForecastAccuracyView(_ReportView):
    renderer_classes = [JSONRenderer, CSVRenderer]
    permission_model = Opportunity

    @extend_schema(
        operation_id="attribution_forecast_accuracy",
        description="For each finished month: the forecast for it of the last daily snapshot taken before it began "
        "(or of the snapshot of taken_on) against the revenue won in it, with the errors (forecast - actual) / actual. "
        "In the company currency.",
        parameters=[AccuracyQuerySerializer, OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"])],
        responses={200: inline_serializer("AttributionForecastAccuracy", {
            "currency": serializers.CharField(),
            "results": inline_serializer("AttributionForecastAccuracyRow", {
                "month": serializers.CharField(), "forecast_taken_on": serializers.DateField(),
                "open_deals": serializers.IntegerField(),
                "weighted": serializers.DecimalField(max_digits=20, decimal_places=2),
                "commit": serializers.DecimalField(max_digits=20, decimal_places=2),
                "actual": serializers.DecimalField(max_digits=20, decimal_places=2),
                "weighted_error": serializers.FloatField(allow_null=True),
                "commit_error": serializers.FloatField(allow_null=True),
                "unconverted_deals": serializers.IntegerField(),
            }, many=True),
        })},
    )
    def get(self, request):
        q = self._query(AccuracyQuerySerializer, request)
        body = forecast.forecast_accuracy(start=q.get("start"), end=q.get("end"), source=q.get("source"), taken_on=q.get("taken_on"))
        return Response(_plain(body))


class SpeedToLeadQuerySerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First UTC day (default: 29 days before end).")
    end = serializers.DateField(required=False, help_text="Last UTC day, inclusive (default: today).")
    group_by = serializers.ChoiceField(choices=[(g, g) for g in selectors.SPEED_GROUPS], default="day")
    source = serializers.ChoiceField(choices=Channel.choices, required=False,
                                     help_text="Only forms submitted from this channel.")

    def validate(self, attrs):
        from datetime import timedelta

        from django.utils import timezone

        attrs["end"] = attrs.get("end") or timezone.now().date()
        attrs["start"] = attrs.get("start") or attrs["end"] - timedelta(days=29)
        if attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"end": ["end must not be before start."]})
        if (attrs["end"] - attrs["start"]).days >= selectors.SPEED_MAX_DAYS:
            raise serializers.ValidationError({"start": [f"At most {selectors.SPEED_MAX_DAYS} days from start to end."]})
        return attrs


_SPEED_STAGE = inline_serializer("SpeedToLeadStage", {
    "reached": serializers.IntegerField(help_text="Leads of the group that reached the stage."),
    "p50_seconds": serializers.FloatField(allow_null=True, help_text="Median seconds from the form."),
    "p95_seconds": serializers.FloatField(allow_null=True),
})
_SPEED_GROUP = {
    "day": serializers.DateField(required=False),
    "source": serializers.CharField(required=False, help_text="The form submission's channel code."),
    "source_label": serializers.CharField(required=False),
    "leads": serializers.IntegerField(help_text="Leads whose first form submission is in the group."),
    "stages": serializers.DictField(child=_SPEED_STAGE, help_text="By stage key (see stages)."),
    "sla": inline_serializer("SpeedToLeadSla", {
        "within": serializers.IntegerField(help_text="First touch by the SLA deadline."),
        "breached": serializers.IntegerField(help_text="Touched late, or untouched past the deadline."),
        "open": serializers.IntegerField(help_text="Untouched, deadline still ahead."),
        "no_sla": serializers.IntegerField(help_text="No assignment with an SLA policy."),
        "share_within": serializers.FloatField(allow_null=True, help_text="within / (within + breached)."),
    }),
}


class SpeedToLeadView(_ReportView):
    renderer_classes = [JSONRenderer]
    # Sales leaders and analysts read it: the routing view permission (every
    # staff role has it), as the admin page checks.
    permission_model = Assignment

    @extend_schema(
        operation_id="speed_to_lead",
        description="Speed to lead: for leads whose first form submission falls in the range (UTC days), per day, "
        "per source or both, the seconds from the form to the owner, to the owner in each connected CRM, to the "
        "first email and to the rep's first touch (median and 95th percentile), and the share of first touches "
        "within the routing SLA policy's deadline.",
        parameters=[SpeedToLeadQuerySerializer],
        responses={**_errors(400, 401, 403, 429), 200: inline_serializer("SpeedToLead", {
            "start": serializers.DateField(), "end": serializers.DateField(), "group_by": serializers.CharField(),
            "stages": inline_serializer("SpeedToLeadStageName", {"key": serializers.CharField(),
                                                                 "label": serializers.CharField()}, many=True),
            "results": inline_serializer("SpeedToLeadGroup", _SPEED_GROUP, many=True),
            "total": inline_serializer("SpeedToLeadTotal", {k: v for k, v in _SPEED_GROUP.items()
                                                            if k not in ("day", "source", "source_label")}),
        })},
    )
    def get(self, request):
        q = self._query(SpeedToLeadQuerySerializer, request)
        return Response(selectors.speed_to_lead(start=q["start"], end=q["end"], group_by=q["group_by"],
                                                source=q.get("source")))


# --- Opportunities and spend (REST) ------------------------------------------

import django_filters as df  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models import Prefetch  # noqa: E402
from drf_spectacular.utils import extend_schema_view  # noqa: E402
from rest_framework import status  # noqa: E402
from rest_framework.decorators import action  # noqa: E402
from rest_framework.generics import get_object_or_404  # noqa: E402

from attribution import services  # noqa: E402
from attribution.api import serializers as s  # noqa: E402
from attribution.models import OpportunityContactRole  # noqa: E402
from martech.api.filters import DateTimeFilter, IntegerFilter  # noqa: E402
from martech.api.pagination import CursorPagination  # noqa: E402
from martech.api.views import DETAIL_ERRORS, LIST_ERRORS, WRITE_ERRORS, ApiViewSet, _actor, _paginated, _source, _valid  # noqa: E402


class OpportunityFilter(df.FilterSet):
    pipeline = df.CharFilter(field_name="pipeline__key", help_text="Pipeline key")
    stage = df.CharFilter(field_name="stage__key", help_text="Stage key")
    is_closed = df.BooleanFilter(method="_closed", help_text="In a won or lost stage")
    is_won = df.BooleanFilter(field_name="stage__is_won")
    source = df.ChoiceFilter(field_name="source", choices=Channel.choices)
    account = IntegerFilter(field_name="account_id")
    owner = IntegerFilter(field_name="owner_id")
    lead = IntegerFilter(field_name="contact_roles__lead_id", help_text="Deals this lead has a contact role on")
    created_at_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at_before = DateTimeFilter(field_name="created_at", lookup_expr="lte")
    closed_at_after = DateTimeFilter(field_name="closed_at", lookup_expr="gte")
    closed_at_before = DateTimeFilter(field_name="closed_at", lookup_expr="lte")
    updated_at_after = DateTimeFilter(field_name="updated_at", lookup_expr="gte")

    class Meta:
        model = Opportunity
        fields = []

    def _closed(self, queryset, name, value):
        from django.db.models import Q

        closed = Q(stage__is_won=True) | Q(stage__is_lost=True)
        return queryset.filter(closed) if value else queryset.exclude(closed)


def _opportunity_queryset():
    # Everything the output serializers read, in a fixed number of queries per page.
    return Opportunity.objects.select_related("pipeline", "stage").prefetch_related(
        Prefetch("contact_roles", queryset=OpportunityContactRole.objects.select_related("lead").only(
            "id", "opportunity_id", "lead_id", "lead__email", "role", "is_primary").order_by("-is_primary", "id"))
    )


def _opportunity_detail(pk: int) -> dict:
    opp = _opportunity_queryset().prefetch_related(
        Prefetch("stage_changes", queryset=OpportunityStageChange.objects.select_related("from_stage", "to_stage"))
    ).get(pk=pk)
    return s.OpportunityDetailOutputSerializer(opp).data


def _opportunity_save(request, data: dict, opportunity: Opportunity | None = None) -> tuple[Opportunity, bool]:
    """One transaction: the fields (and stage move) through opportunity_upsert,
    then the contact list; a bad contact list leaves the deal unchanged."""
    contacts = data.pop("contacts", None)
    with transaction.atomic():
        opp, created = services.opportunity_upsert(
            data=data, source=_source(request), actor=_actor(request), opportunity=opportunity
        )
        if contacts is not None:
            services.opportunity_set_contacts(opportunity=opp, contacts=contacts)
    return opp, created


@extend_schema_view(
    list=extend_schema(
        summary="List opportunities",
        description="Newest first by created_at, with contact roles.",
        responses={200: s.OpportunityOutputSerializer(many=True), **LIST_ERRORS},
    ),
    retrieve=extend_schema(
        summary="An opportunity, with its contact roles and stage history",
        responses={200: s.OpportunityDetailOutputSerializer, **DETAIL_ERRORS},
    ),
    create=extend_schema(
        summary="Create an opportunity (or update the one with the same CRM id)",
        description="Through opportunity_upsert, as the CSV import and the CRM sync: without a stage the deal starts "
        "in its pipeline's first; a closed stage sets closed_at. 201 when created, 200 when a CRM id matched.",
        request=s.OpportunityCreateInputSerializer,
        responses={201: s.OpportunityDetailOutputSerializer, 200: s.OpportunityDetailOutputSerializer, **WRITE_ERRORS},
    ),
    partial_update=extend_schema(
        summary="Edit an opportunity",
        description="Only the fields sent change. A new stage is recorded in the stage history (entering a won "
        "or lost stage sets closed_at); contacts, when sent, replace the list. Its credits are recomputed after commit.",
        request=s.OpportunityInputSerializer,
        responses={200: s.OpportunityDetailOutputSerializer, **WRITE_ERRORS},
    ),
    destroy=extend_schema(
        summary="Delete an opportunity",
        description="Deletes the deal with its contact roles and stage history, and removes its credits under "
        "every model and its part of the report rollup in the same transaction. Needs attribution:write "
        "(a staff session: the opportunity delete permission). A deal a connected CRM holds is deleted there "
        "too through the CRM outbox when the connection pushes deals (kept there when it only pulls them), and "
        "no later pull creates it here again.",
        responses={204: None, **DETAIL_ERRORS},
    ),
)
class OpportunityViewSet(ApiViewSet):
    queryset = Opportunity.objects.all()
    required_scopes = {"read": ApiClient.Scope.ATTRIBUTION_READ.value, "write": ApiClient.Scope.ATTRIBUTION_WRITE.value}
    filterset_class = OpportunityFilter

    def get_queryset(self):
        return _opportunity_queryset()

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.OpportunityOutputSerializer)

    def retrieve(self, request, pk=None):
        get_object_or_404(Opportunity.objects.only("id"), pk=pk)
        return Response(_opportunity_detail(pk))

    def create(self, request):
        opp, created = _opportunity_save(request, _valid(s.OpportunityCreateInputSerializer, request))
        return Response(_opportunity_detail(opp.pk), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def partial_update(self, request, pk=None):
        opp = get_object_or_404(Opportunity.objects.all(), pk=pk)
        opp, _ = _opportunity_save(request, _valid(s.OpportunityInputSerializer, request), opportunity=opp)
        return Response(_opportunity_detail(opp.pk))

    def destroy(self, request, pk=None):
        opp = get_object_or_404(Opportunity.objects.only("id"), pk=pk)
        services.opportunity_delete(opportunity=opp, source=_source(request), actor=_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Close an opportunity won or lost",
        description="Moves it to its pipeline's first won (lost) stage, recorded in the stage history, with "
        "closed_at (default now). Closing it again the same way changes nothing.",
        request=s.OpportunityCloseInputSerializer,
        responses={200: s.OpportunityDetailOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="close")
    def close(self, request, pk=None):
        opp = get_object_or_404(Opportunity.objects.select_related("pipeline"), pk=pk)
        data = _valid(s.OpportunityCloseInputSerializer, request)
        services.opportunity_close(
            opportunity=opp, won=data["won"], at=data.get("closed_at"), source=_source(request), actor=_actor(request)
        )
        return Response(_opportunity_detail(opp.pk))


class SpendFilter(df.FilterSet):
    campaign = IntegerFilter(field_name="campaign_id")
    channel = df.ChoiceFilter(field_name="campaign__channel", choices=Channel.choices)
    date_after = df.DateFilter(field_name="date", lookup_expr="gte")
    date_before = df.DateFilter(field_name="date", lookup_expr="lte")

    class Meta:
        model = CampaignSpend
        fields = []


class SpendPagination(CursorPagination):
    # Serves spend_campaign_date_uniq's index for one campaign, and is stable (id breaks ties).
    ordering = ("-date", "-id")


@extend_schema_view(
    list=extend_schema(summary="List campaign spend by day", responses={200: s.SpendOutputSerializer(many=True), **LIST_ERRORS}),
    create=extend_schema(
        summary="Record one campaign-day of spend",
        description="Upserts by (campaign, date): 201 when new, 200 when it replaced the day's figures. "
        "For many rows at once, POST /api/v1/attribution/spend/import.",
        request=s.SpendInputSerializer,
        responses={201: s.SpendOutputSerializer, 200: s.SpendOutputSerializer, **WRITE_ERRORS},
    ),
)
class SpendViewSet(ApiViewSet):
    queryset = CampaignSpend.objects.all()
    required_scopes = {"read": ApiClient.Scope.ATTRIBUTION_READ.value, "write": ApiClient.Scope.ATTRIBUTION_WRITE.value}
    filterset_class = SpendFilter
    pagination_class = SpendPagination

    def get_queryset(self):
        return CampaignSpend.objects.all()

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.SpendOutputSerializer)

    def create(self, request):
        spend, created = services.campaign_spend_upsert(**_valid(s.SpendInputSerializer, request))
        return Response(s.SpendOutputSerializer(spend).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
