"""Scoring API: segments (with members), a lead's score with its
explanation, score history. Thin views over selectors/services."""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.decorators import action
from rest_framework.response import Response

from martech.api import serializers as core
from martech.api.pagination import CursorPagination
from martech.api.views import DETAIL_ERRORS, LIST_ERRORS, ApiViewSet, _scopes
from martech.models import ApiClient, Lead
from martech.scoring.api import serializers as s
from martech.scoring.models import ScoreHistory, ScoringModel, Segment
from martech.scoring.selectors import score_explanation, score_history, segment_condition, segment_members

Scope = ApiClient.Scope


class SegmentPagination(CursorPagination):
    ordering = ("name", "id")


class MemberPagination(CursorPagination):
    ordering = ("-id",)


class HistoryPagination(CursorPagination):
    ordering = ("-changed_at", "-id")


@extend_schema_view(
    list=extend_schema(summary="List segments", responses={200: s.SegmentOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="A segment with its live member count",
                           responses={200: s.SegmentDetailOutputSerializer, **DETAIL_ERRORS}),
)
class SegmentViewSet(ApiViewSet):
    queryset = Segment.objects.all()
    required_scopes = _scopes(Scope.SEGMENTS_READ)
    pagination_class = SegmentPagination
    filter_backends = []
    lookup_value_regex = r"\d+"

    def list(self, request):
        page = self.paginate_queryset(Segment.objects.all())
        return self.get_paginated_response(s.SegmentOutputSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        segment = get_object_or_404(Segment, pk=pk)
        segment.member_count = segment_members(segment).count()
        segment.fields_read = sorted(segment_condition(segment).fields)
        return Response(s.SegmentDetailOutputSerializer(segment).data)

    @extend_schema(summary="The segment's members now", responses={200: core.LeadOutputSerializer(many=True),
                                                                   **LIST_ERRORS})
    @action(detail=True, methods=["get"], pagination_class=MemberPagination)
    def members(self, request, pk=None):
        segment = get_object_or_404(Segment, pk=pk)
        page = self.paginate_queryset(segment_members(segment).select_related("owner"))
        return self.get_paginated_response(core.LeadOutputSerializer(page, many=True).data)


@extend_schema_view(
    retrieve=extend_schema(summary="A lead's score and why (rule by rule)",
                           responses={200: s.ScoreOutputSerializer, **DETAIL_ERRORS}),
)
class ScoreViewSet(ApiViewSet):
    queryset = ScoreHistory.objects.all()  # the model ScopedOrModelPermission checks
    required_scopes = _scopes(Scope.SCORES_READ)
    pagination_class = HistoryPagination
    filter_backends = []
    lookup_value_regex = r"\d+"

    def retrieve(self, request, pk=None):
        lead = get_object_or_404(Lead, pk=pk)
        latest = score_explanation(lead.pk)
        model = ScoringModel.objects.filter(is_active=True).values_list("name", flat=True).first()
        data = {"lead_id": lead.pk, "fit_score": lead.fit_score, "engagement_score": lead.engagement_score,
                "total_score": lead.total_score, "model": model,
                "computed_at": latest.changed_at if latest else None,
                "contributions": latest.breakdown if latest else []}
        return Response(s.ScoreOutputSerializer(data).data)

    @extend_schema(summary="A lead's score history, newest first",
                   responses={200: s.ScoreHistoryOutputSerializer(many=True), **LIST_ERRORS})
    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        lead = get_object_or_404(Lead, pk=pk)
        page = self.paginate_queryset(score_history(lead.pk))
        return self.get_paginated_response(s.ScoreHistoryOutputSerializer(page, many=True).data)
