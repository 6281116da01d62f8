"""Routing REST API under /api/v1/routing/ (thin views, STYLE.md 11).

Configuration CRUD (reps, teams, territories, rule sets) saves through
``routing.services.config_save`` / ``rule_set_save_draft``; ``route``
assigns through ``lead_route``; ``preview`` calls ``lead_preview`` and
writes nothing. API clients need ``routing:read`` / ``routing:write``; staff
sessions need the routing model permissions (Sales Ops edit, Marketing Ops
and Analysts read). ``preview`` is a POST that only reads, so it needs what a
read needs (``routing:read``, the view permission): whoever may see
assignments may ask what one would be.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import ProtectedError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from martech.api.pagination import CursorPagination
from martech.api.views import DETAIL_ERRORS, LIST_ERRORS, WRITE_ERRORS, ApiViewSet, _actor, _scopes, _valid
from martech.models import ApiClient, Lead
from routing import services
from routing.api import serializers as s
from routing.models import Assignment, Rep, RuleSet, Team, Territory

Scope = ApiClient.Scope
SCOPES = _scopes(Scope.ROUTING_READ, Scope.ROUTING_WRITE)


class ByIdPagination(CursorPagination):
    ordering = ("id",)


class ConfigViewSet(ApiViewSet):
    """CRUD over one configuration model, saved through ``config_save``."""

    required_scopes = SCOPES
    pagination_class = ByIdPagination
    serializer_class = None  # set per subclass

    def get_queryset(self):
        return self.queryset.all()

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.serializer_class(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(self.serializer_class(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def _save(self, request, instance, *, partial: bool):
        serializer = self.serializer_class(instance, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        obj = services.config_save(instance=instance or self.queryset.model(), data=dict(serializer.validated_data),
                                   actor=_actor(request))
        return self.serializer_class(obj).data

    def create(self, request):
        return Response(self._save(request, None, partial=False), status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        return Response(self._save(request, get_object_or_404(self.get_queryset(), pk=pk), partial=True))

    def destroy(self, request, pk=None):
        obj = get_object_or_404(self.get_queryset(), pk=pk)
        try:
            obj.delete()
        except ProtectedError:
            raise ValidationError({"id": ["In use by rules, rule sets or assignments; deactivate it instead."]}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


def _crud_schema(serializer, name: str):
    return extend_schema_view(
        list=extend_schema(summary=f"List {name}s", responses={200: serializer(many=True), **LIST_ERRORS}),
        retrieve=extend_schema(summary=f"A {name}", responses={200: serializer, **DETAIL_ERRORS}),
        create=extend_schema(summary=f"Create a {name}", request=serializer, responses={201: serializer, **WRITE_ERRORS}),
        partial_update=extend_schema(summary=f"Change a {name}", request=serializer, responses={200: serializer, **WRITE_ERRORS}),
        destroy=extend_schema(summary=f"Delete a {name}", responses={204: None, **WRITE_ERRORS}),
    )


@_crud_schema(s.TeamSerializer, "team")
class TeamViewSet(ConfigViewSet):
    queryset = Team.objects.all()
    serializer_class = s.TeamSerializer


@_crud_schema(s.RepSerializer, "rep")
class RepViewSet(ConfigViewSet):
    queryset = Rep.objects.all()
    serializer_class = s.RepSerializer


@_crud_schema(s.TerritorySerializer, "territory")
class TerritoryViewSet(ConfigViewSet):
    queryset = Territory.objects.all()
    serializer_class = s.TerritorySerializer


def _rule_set_out(rule_set: RuleSet) -> dict:
    return s.RuleSetOutputSerializer(RuleSet.objects.prefetch_related("rules").get(pk=rule_set.pk)).data


@extend_schema_view(
    list=extend_schema(summary="List rule sets (drafts and versions)", responses={200: s.RuleSetOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="A rule set with its rules", responses={200: s.RuleSetOutputSerializer, **DETAIL_ERRORS}),
    create=extend_schema(summary="Create a draft rule set", request=s.RuleSetInputSerializer,
                         responses={201: s.RuleSetOutputSerializer, **WRITE_ERRORS}),
    partial_update=extend_schema(summary="Change a draft (rules, when given, replace its rules in order)",
                                 request=s.RuleSetInputSerializer, responses={200: s.RuleSetOutputSerializer, **WRITE_ERRORS}),
    destroy=extend_schema(summary="Delete a draft", responses={204: None, **WRITE_ERRORS}),
)
class RuleSetViewSet(ApiViewSet):
    queryset = RuleSet.objects.all()
    required_scopes = SCOPES
    pagination_class = ByIdPagination

    def get_queryset(self):
        return RuleSet.objects.prefetch_related("rules")

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.RuleSetOutputSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(s.RuleSetOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def _save(self, request, rule_set):
        data = _valid(s.RuleSetInputSerializer, request)
        rules = data.pop("rules", None)
        saved = services.rule_set_save_draft(rule_set=rule_set, data=data, rules=[dict(r) for r in rules] if rules is not None else None,
                                             actor=_actor(request))
        return _rule_set_out(saved)

    def create(self, request):
        return Response(self._save(request, None), status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        return Response(self._save(request, get_object_or_404(RuleSet, pk=pk)))

    def destroy(self, request, pk=None):
        services.rule_set_delete_draft(rule_set=get_object_or_404(RuleSet, pk=pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Publish a draft as the next (immutable, live) version", request=None,
                   responses={200: s.RuleSetOutputSerializer, **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        return Response(_rule_set_out(services.rule_set_publish(rule_set=get_object_or_404(RuleSet, pk=pk), actor=_actor(request))))

    @extend_schema(summary="Roll back: publish a copy of this version as the new live version", request=None,
                   responses={200: s.RuleSetOutputSerializer, **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        return Response(_rule_set_out(services.rule_set_rollback(to=get_object_or_404(RuleSet, pk=pk), actor=_actor(request))))

    @extend_schema(summary="Copy this rule set to a new draft", request=None,
                   responses={201: s.RuleSetOutputSerializer, **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def copy(self, request, pk=None):
        draft = services.rule_set_copy(source=get_object_or_404(RuleSet, pk=pk), actor=_actor(request))
        return Response(_rule_set_out(draft), status=status.HTTP_201_CREATED)


class RoutingViewSet(ApiViewSet):
    queryset = Assignment.objects.all()  # the model whose permissions staff sessions need
    required_scopes = SCOPES
    read_actions = ("preview",)  # see martech.api.permissions
    pagination_class = None

    @extend_schema(
        summary="Route a lead: assign it by the live rule set and return the decision and its explanation",
        description="A lead that already has a current assignment keeps it (`created` false) unless `reroute`.",
        request=s.RouteInputSerializer, responses={200: s.AssignmentOutputSerializer, 201: s.AssignmentOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=False, methods=["post"])
    def route(self, request):
        data = _valid(s.RouteInputSerializer, request)
        get_object_or_404(Lead.objects.only("id"), pk=data["lead_id"])
        assignment, created = services.lead_route(
            lead_id=data["lead_id"], trigger=Assignment.Trigger.API, reason="API call", actor=_actor(request),
            reroute=data["reroute"])
        assignment.created = created
        return Response(s.AssignmentOutputSerializer(assignment).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Preview: the decision and explanation for a lead now; writes nothing",
        description="Needs only read access (scope `routing:read`, or the routing view permission on a staff session).",
        request=s.LeadIdSerializer, responses={200: s.ExplanationSerializer, **WRITE_ERRORS},
    )
    @action(detail=False, methods=["post"])
    def preview(self, request):
        data = _valid(s.LeadIdSerializer, request)
        get_object_or_404(Lead.objects.only("id"), pk=data["lead_id"])
        return Response(services.lead_preview(lead_id=data["lead_id"]))
