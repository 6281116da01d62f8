"""REST API for leads, accounts, events, lifecycle stages and campaigns.

Views are thin (docs/style.md, 11): an input serializer checks the request's shape,
a service in ``martech.services`` writes (``lead_upsert`` is the only way a
lead is created or changed), an output serializer renders. Querysets choose
their joins here, so list pages cost a fixed number of queries.

Who may call what is ``ScopedOrModelPermission``: API clients by the scopes in
``required_scopes``, staff sessions by Django model permissions (the roles).
"""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.metadata import SimpleMetadata
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle

from martech.api import filters
from martech.api import serializers as s
from martech.api.pagination import CursorPagination
from martech.api.retry import ConflictRetryMixin
from martech.api.throttling import ClientRateThrottle
from martech.models import Account, ApiClient, Campaign, Event, Lead, LifecycleStage
from martech.selectors import lead_consent_state
from martech.services.accounts import account_upsert
from martech.services.campaigns import campaign_save
from martech.services.leads import lead_change_stage, lead_upsert

Scope = ApiClient.Scope


def _scopes(read: Scope, write: Scope | None = None) -> dict[str, str]:
    # Plain strings: ApiClient.scopes holds strings, and errors name them.
    return {"read": read.value, **({"write": write.value} if write else {})}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    described = {
        400: "Invalid input; `fields` names each offending field.",
        401: "No or invalid credentials.",
        403: "Authenticated, but lacking the scope or model permission.",
        404: "No such object (or an invalid cursor).",
        429: "Throttled; `retry_after` says how long to wait.",
    }
    return {c: OpenApiResponse(s.ApiErrorSerializer, description=described[c]) for c in codes}


READ_ERRORS = _errors(401, 403, 429)
LIST_ERRORS = _errors(400, 401, 403, 404, 429)
DETAIL_ERRORS = _errors(401, 403, 404, 429)
WRITE_ERRORS = _errors(400, 401, 403, 404, 429)


def _actor(request):
    """The acting staff user for audit rows; None for an API client (its
    stand-in user is not a row in the user table)."""
    return None if isinstance(request.auth, ApiClient) else request.user


def _source(request) -> str:
    if isinstance(request.auth, ApiClient):
        return f"api:{request.auth.name}"
    return f"api-user:{request.user.get_username()}"


def _valid(serializer_class, request, **kwargs) -> dict:
    serializer = serializer_class(data=request.data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class SchemaPointerMetadata(SimpleMetadata):
    """OPTIONS answers without DRF's form description: it would need one
    serializer per view, and these views have an input and an output one.
    The OpenAPI schema at /api/schema/ describes every body."""

    def determine_metadata(self, request, view):
        metadata = super().determine_metadata(request, view)
        metadata.pop("actions", None)
        metadata["schema"] = "/api/schema/"
        return metadata

    def determine_actions(self, request, view):
        return {}


class ApiViewSet(ConflictRetryMixin, viewsets.GenericViewSet):
    metadata_class = SchemaPointerMetadata
    throttle_classes = [AnonRateThrottle, ClientRateThrottle]
    # No OrderingFilter: each list keeps the one order its index and cursor serve.
    filter_backends = [DjangoFilterBackend]
    pagination_class = CursorPagination


def _paginated(view: ApiViewSet, queryset, serializer_class) -> Response:
    page = view.paginate_queryset(view.filter_queryset(queryset))
    return view.get_paginated_response(serializer_class(page, many=True).data)


# --- Leads -------------------------------------------------------------------


def _lead_queryset():
    # Everything LeadOutputSerializer reads, in the one list query.
    return Lead.objects.select_related("lifecycle_stage", "account", "owner")


def _lead_detail(lead: Lead) -> dict:
    lead = _lead_queryset().get(pk=lead.pk)
    return s.LeadDetailOutputSerializer(lead, context={"consent": lead_consent_state(lead=lead)}).data


@extend_schema_view(
    list=extend_schema(summary="List leads", responses={200: s.LeadOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(
        summary="A lead, with its current consent per channel",
        responses={200: s.LeadDetailOutputSerializer, **DETAIL_ERRORS},
    ),
    partial_update=extend_schema(
        summary="Edit a lead",
        description="Only the fields sent change; a blank value clears the field. Goes through the same "
        "upsert as every other write, so normalization and dedupe rules apply.",
        request=s.LeadInputSerializer,
        responses={200: s.LeadDetailOutputSerializer, **WRITE_ERRORS},
    ),
)
class LeadViewSet(ApiViewSet):
    queryset = Lead.objects.all()  # the model ScopedOrModelPermission checks
    required_scopes = _scopes(Scope.LEADS_READ, Scope.LEADS_WRITE)
    filterset_class = filters.LeadFilter

    def get_queryset(self):
        return _lead_queryset()

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.LeadOutputSerializer)

    def retrieve(self, request, pk=None):
        lead = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(s.LeadDetailOutputSerializer(lead, context={"consent": lead_consent_state(lead=lead)}).data)

    def partial_update(self, request, pk=None):
        lead = get_object_or_404(Lead.objects.only("id"), pk=pk)
        data = _valid(s.LeadInputSerializer, request)
        lead, _ = lead_upsert(data=data, source=_source(request), actor=_actor(request), overwrite=True, lead=lead)
        return Response(_lead_detail(lead))

    @extend_schema(
        summary="Create or update a lead by email (else CRM id)",
        description="The lead is found by normalized email, else by a CRM id, and updated; otherwise created "
        "(201). Blank values never clear stored ones here; custom properties merge key by key.",
        request=s.LeadUpsertInputSerializer,
        responses={200: s.LeadDetailOutputSerializer, 201: s.LeadDetailOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=False, methods=["post"], url_path="upsert")
    def upsert(self, request):
        data = _valid(s.LeadUpsertInputSerializer, request)
        lead, created = lead_upsert(data=data, source=_source(request), actor=_actor(request))
        return Response(_lead_detail(lead), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Move a lead to another lifecycle stage",
        description="Records the transition with its reason and actor. Moving to the current stage changes nothing.",
        request=s.LeadStageInputSerializer,
        responses={200: s.LeadDetailOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="stage")
    def stage(self, request, pk=None):
        lead = get_object_or_404(Lead.objects.only("id", "lifecycle_stage_id"), pk=pk)
        data = _valid(s.LeadStageInputSerializer, request)
        lead_change_stage(
            lead=lead,
            to_stage=data["lifecycle_stage"],
            reason=data["reason"],
            actor=_actor(request),
            source=_source(request),
        )
        return Response(_lead_detail(lead))


# --- Accounts ----------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List accounts", responses={200: s.AccountOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="An account", responses={200: s.AccountOutputSerializer, **DETAIL_ERRORS}),
    partial_update=extend_schema(
        summary="Edit an account",
        request=s.AccountInputSerializer,
        responses={200: s.AccountOutputSerializer, **WRITE_ERRORS},
    ),
)
class AccountViewSet(ApiViewSet):
    queryset = Account.objects.all()
    required_scopes = _scopes(Scope.ACCOUNTS_READ, Scope.ACCOUNTS_WRITE)
    filterset_class = filters.AccountFilter

    def get_queryset(self):
        return Account.objects.select_related("owner").order_by("-created_at", "-id")

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.AccountOutputSerializer)

    def retrieve(self, request, pk=None):
        return Response(s.AccountOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def partial_update(self, request, pk=None):
        account = get_object_or_404(Account.objects.only("id"), pk=pk)
        account, _ = account_upsert(
            data=_valid(s.AccountInputSerializer, request), account=account, source=_source(request)
        )
        return Response(s.AccountOutputSerializer(self.get_queryset().get(pk=account.pk)).data)

    @extend_schema(
        summary="Create or update an account by domain",
        description="The domain is normalized (https://www.Acme.com/ -> acme.com) and the account with it updated; "
        "otherwise one is created (201). Without a domain a new account is always created.",
        request=s.AccountUpsertInputSerializer,
        responses={200: s.AccountOutputSerializer, 201: s.AccountOutputSerializer, **WRITE_ERRORS},
    )
    @action(detail=False, methods=["post"], url_path="upsert")
    def upsert(self, request):
        account, created = account_upsert(data=_valid(s.AccountUpsertInputSerializer, request), source=_source(request))
        return Response(
            s.AccountOutputSerializer(self.get_queryset().get(pk=account.pk)).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


# --- Events (read-only: capture writes them) ---------------------------------


class EventPagination(CursorPagination):
    # Serves the event_time_idx index.
    ordering = ("-occurred_at", "-id")


@extend_schema_view(
    list=extend_schema(
        summary="List events",
        description="Newest first by occurred_at. Events are written by capture (POST /api/v1/events).",
        responses={200: s.EventOutputSerializer(many=True), **LIST_ERRORS},
    ),
    retrieve=extend_schema(summary="An event", responses={200: s.EventOutputSerializer, **DETAIL_ERRORS}),
)
class EventViewSet(ApiViewSet):
    queryset = Event.objects.all()
    required_scopes = _scopes(Scope.EVENTS_READ)  # no write scope: capture has its own endpoint
    filterset_class = filters.EventFilter
    pagination_class = EventPagination

    def get_queryset(self):
        return Event.objects.select_related("event_type")

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.EventOutputSerializer)

    def retrieve(self, request, pk=None):
        return Response(s.EventOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)


# --- Lifecycle stages --------------------------------------------------------


class StagePagination(CursorPagination):
    ordering = ("order",)


@extend_schema_view(
    list=extend_schema(
        summary="List lifecycle stages, in order",
        responses={200: s.LifecycleStageOutputSerializer(many=True), **LIST_ERRORS},
    ),
)
class LifecycleStageViewSet(ApiViewSet):
    queryset = LifecycleStage.objects.all()
    required_scopes = _scopes(Scope.STAGES_READ)
    pagination_class = StagePagination
    filter_backends = []

    def list(self, request):
        return _paginated(self, LifecycleStage.objects.all(), s.LifecycleStageOutputSerializer)


# --- Campaigns ---------------------------------------------------------------


class CampaignPagination(CursorPagination):
    # Not the model's (-start_date, name): a cursor needs a non-null, stable first key.
    ordering = ("-created_at", "-id")


def _campaign_save(campaign: Campaign, request) -> Campaign:
    # simple_history takes the history row's user from the request; an API
    # client's stand-in user is not a User row, so name the actor explicitly.
    campaign._history_user = _actor(request)
    try:
        return campaign_save(campaign=campaign)
    except DjangoValidationError as exc:
        # The UTM-triple unique constraint reports under __all__; name the
        # field a client is most likely to change.
        if hasattr(exc, "error_dict") and "__all__" in exc.error_dict:
            errors = exc.message_dict
            errors.setdefault("utm_campaign", []).extend(errors.pop("__all__"))
            raise DjangoValidationError(errors) from exc
        raise


@extend_schema_view(
    list=extend_schema(summary="List campaigns", responses={200: s.CampaignOutputSerializer(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="A campaign", responses={200: s.CampaignOutputSerializer, **DETAIL_ERRORS}),
    create=extend_schema(
        summary="Create a campaign",
        description="UTM keys are normalized with the alias table before saving.",
        request=s.CampaignCreateInputSerializer,
        responses={201: s.CampaignOutputSerializer, **WRITE_ERRORS},
    ),
    partial_update=extend_schema(
        summary="Edit a campaign",
        request=s.CampaignInputSerializer,
        responses={200: s.CampaignOutputSerializer, **WRITE_ERRORS},
    ),
)
class CampaignViewSet(ApiViewSet):
    queryset = Campaign.objects.all()
    required_scopes = _scopes(Scope.CAMPAIGNS_READ, Scope.CAMPAIGNS_WRITE)
    filterset_class = filters.CampaignFilter
    pagination_class = CampaignPagination

    def get_queryset(self):
        return Campaign.objects.all()

    def list(self, request):
        return _paginated(self, self.get_queryset(), s.CampaignOutputSerializer)

    def retrieve(self, request, pk=None):
        return Response(s.CampaignOutputSerializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def create(self, request):
        campaign = _campaign_save(Campaign(**_valid(s.CampaignCreateInputSerializer, request)), request)
        return Response(s.CampaignOutputSerializer(campaign).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        campaign = get_object_or_404(self.get_queryset(), pk=pk)
        for key, value in _valid(s.CampaignInputSerializer, request).items():
            setattr(campaign, key, value)
        return Response(s.CampaignOutputSerializer(_campaign_save(campaign, request)).data)
