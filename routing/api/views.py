"""Routing REST API under /api/v1/routing/ (thin views, docs/style.md, 11).

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
from martech.api.views import (
    DETAIL_ERRORS,
    LIST_ERRORS,
    WRITE_ERRORS,
    ApiViewSet,
    _actor,
    _paginated,
    _scopes,
    _source,
    _valid,
)
from martech.models import ApiClient, Lead
from routing import services
from routing.api import serializers as s
from routing.api.filters import AbsenceFilter, AssignmentFilter
from routing.models import Assignment, OutOfOffice, Rep, RuleSet, Team, Territory
from routing.simulation import leads_for_simulation, rule_set_simulate

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
    read_actions = ("simulate",)  # a POST that only reads (see martech.api.permissions)

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

    @extend_schema(
        summary="Simulate this rule set (a draft or a version) over past leads; writes nothing",
        description="The leads are a segment's members now, those created in [created_after, created_before), or "
        "those created in the last `days` days (default 30). Returns the distribution by team, rep and rule, "
        "compared with `compare_to` (default: the live set), and the leads that would move from team/rep X to Y. "
        "Needs only read access (scope `routing:read`).",
        request=s.SimulateInputSerializer, responses={200: s.SimulationOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def simulate(self, request, pk=None):
        rule_set = get_object_or_404(RuleSet, pk=pk)
        data = _valid(s.SimulateInputSerializer, request)
        leads = leads_for_simulation(days=data.get("days"), segment=data.get("segment"),
                                     created_from=data.get("created_after"), created_to=data.get("created_before"))
        result = rule_set_simulate(rule_set=rule_set, leads=leads, compare_to=data.get("compare_to"))
        moves = result.pop("moves")
        result.update(moves_total=len(moves), moves=moves[:data["moves_limit"]])
        result.setdefault("team_delta", {})
        return Response(result)

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


# --- Assignments, a lead's routing history, absences (issue 17) ----------------------


class AssignmentPagination(CursorPagination):
    ordering = ("-created_at", "-id")


@extend_schema_view(
    list=extend_schema(summary="List assignments (filter by rep, team, lead, status, lifecycle, dates)",
                       responses={200: s.AssignmentSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="An assignment with its explanation",
                           responses={200: s.AssignmentHistorySerializer, **DETAIL_ERRORS}),
)
class AssignmentViewSet(ApiViewSet):
    """Assignments (decision records), newest first. ``touch`` and ``close``
    move the lifecycle (open -> worked -> closed) of the lead's current one."""

    queryset = Assignment.objects.all()
    required_scopes = SCOPES
    filterset_class = AssignmentFilter
    pagination_class = AssignmentPagination

    def get_queryset(self):
        return Assignment.objects.all()

    def list(self, request):
        return _paginated(self, self.get_queryset().defer("explanation"), s.AssignmentSerializer)

    def retrieve(self, request, pk=None):
        return Response(s.AssignmentHistorySerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def _current(self, pk) -> Assignment:
        assignment = get_object_or_404(self.get_queryset(), pk=pk)
        if not assignment.is_current:
            raise ValidationError({"id": [f"Assignment {assignment.pk} is no longer the lead's current one."]})
        return assignment

    @extend_schema(summary="Record the rep's first touch (open -> worked; stops the SLA clock)",
                   request=s.AssignmentTouchInputSerializer, responses={200: s.AssignmentSerializer, **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def touch(self, request, pk=None):
        assignment = self._current(pk)
        data = _valid(s.AssignmentTouchInputSerializer, request)
        if assignment.status != Assignment.Status.ASSIGNED:
            raise ValidationError({"id": [f"Assignment {assignment.pk} has no rep to touch the lead ({assignment.status})."]})
        services.assignment_touch(lead_id=assignment.lead_id, source=f"{_source(request)}:{data['source']}",
                                  at=data.get("at"))
        assignment.refresh_from_db()
        return Response(s.AssignmentSerializer(assignment).data)

    @extend_schema(summary="Close the assignment (converted, disqualified, api): it stops counting against the cap",
                   request=s.AssignmentCloseInputSerializer, responses={200: s.AssignmentSerializer, **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def close(self, request, pk=None):
        assignment = self._current(pk)
        data = _valid(s.AssignmentCloseInputSerializer, request)
        if assignment.lifecycle == Assignment.Lifecycle.CLOSED:
            raise ValidationError({"id": [f"Assignment {assignment.pk} is already closed ({assignment.close_reason})."]})
        services.assignment_close(lead_id=assignment.lead_id, reason=data["reason"])
        assignment.refresh_from_db()
        return Response(s.AssignmentSerializer(assignment).data)


class LeadRoutingViewSet(ApiViewSet):
    queryset = Assignment.objects.all()  # the model whose permissions staff sessions need
    required_scopes = SCOPES
    pagination_class = AssignmentPagination

    @extend_schema(summary="A lead's routing history: every decision record with its explanation, newest first",
                   responses={200: s.AssignmentHistorySerializer(many=True), **LIST_ERRORS})
    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        lead = get_object_or_404(Lead.objects.only("id"), pk=pk)
        return _paginated(self, Assignment.objects.filter(lead_id=lead.pk), s.AssignmentHistorySerializer)


@_crud_schema(s.AbsenceSerializer, "rep absence (out of office)")
class AbsenceViewSet(ConfigViewSet):
    """Reps' out-of-office periods (a partial day counts). Saved through
    ``config_save``; deleting one may free a rep, so the waiting queue is
    woken in the background."""

    queryset = OutOfOffice.objects.all()
    serializer_class = s.AbsenceSerializer
    filterset_class = AbsenceFilter

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(self.serializer_class(page, many=True).data)

    def destroy(self, request, pk=None):
        response = super().destroy(request, pk)
        services.waiting_assign_later()
        return response
