"""Capture endpoints: the events batch API and public form capture.

Thin views (STYLE.md 11): check the envelope, call the service, answer. The
per-item rules live in ``martech.services.ingest``; the form rules in
``martech.services.forms``.
"""
from __future__ import annotations

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from martech.api.errors import error_body
from martech.api.retry import ConflictRetryMixin
from martech.api.throttling import ClientRateThrottle, FormCaptureThrottle
from martech.models import ApiClient, Event, Form
from martech.services.forms import form_submit
from martech.services.ingest import REJECTED, events_ingest

# --- Serializers (output shapes; the input is checked item by item in the service)


class EventItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    messageId = serializers.CharField(allow_null=True)  # noqa: N815 (Segment's spelling)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected", "quarantined"])
    field = serializers.CharField(required=False, allow_null=True, help_text="The offending field, for rejections.")
    reason = serializers.CharField(required=False, allow_null=True)


class EventBatchResultSerializer(serializers.Serializer):
    results = EventItemResultSerializer(many=True)
    accepted = serializers.IntegerField()
    duplicate = serializers.IntegerField()
    rejected = serializers.IntegerField()
    quarantined = serializers.IntegerField(required=False)


class FormCaptureResultSerializer(serializers.Serializer):
    lead_id = serializers.IntegerField(allow_null=True)
    created = serializers.BooleanField()


_EVENT_EXAMPLE = {
    "batch": [
        {
            "type": "page",
            "messageId": "m-1",
            "anonymousId": "a-1",
            "name": "Pricing",
            "properties": {"url": "https://example.com/pricing?utm_source=google&utm_medium=cpc"},
            "timestamp": "2025-01-01T12:00:00Z",
        },
        {
            "type": "identify",
            "messageId": "m-2",
            "anonymousId": "a-1",
            "traits": {"email": "ann@example.com", "firstName": "Ann"},
            "timestamp": "2025-01-01T12:01:00Z",
        },
    ]
}


# --- Views ---------------------------------------------------------------------


class EventBatchView(ConflictRetryMixin, APIView):
    """POST /api/v1/events: one Segment-shaped event, or ``{"batch": [...]}``.

    API clients need the ``capture`` scope; staff sessions need the add-event
    permission. Items are answered in order; accepted ones are kept even
    when others are rejected.
    """

    required_scopes = {"write": "capture"}
    permission_model = Event
    parser_classes = [JSONParser]
    throttle_classes = [ClientRateThrottle]

    @extend_schema(
        request=inline_serializer("EventBatchRequest", {"batch": serializers.ListField(child=serializers.DictField())}),
        responses={
            200: EventBatchResultSerializer,
            400: OpenApiResponse(description="Malformed body (not JSON, not a list, too many items) or a rejected single event."),
        },
        examples=[OpenApiExample("batch", value=_EVENT_EXAMPLE, request_only=True)],
        tags=["capture"],
    )
    def post(self, request):
        body = request.data
        limit = settings.MARTECH["EVENT_BATCH_MAX"]
        if not isinstance(body, dict):
            raise exceptions.ValidationError({"non_field_errors": ['Send one event object or {"batch": [...]}.']})
        single = "batch" not in body
        if single:
            items, batch_context = [body], None
        else:
            items = body["batch"]
            if not isinstance(items, list):
                raise exceptions.ValidationError({"batch": ["Must be a list of events."]})
            if not items:
                raise exceptions.ValidationError({"batch": ["Send at least one event."]})
            if len(items) > limit:
                raise exceptions.ValidationError({"batch": [f"At most {limit} events per batch (got {len(items)})."]})
            batch_context = body.get("context") if isinstance(body.get("context"), dict) else None

        result = events_ingest(items=items, source=_source(request), actor=_actor(request), batch_context=batch_context)
        data = result.as_dict()
        if single and result.results[0].status == REJECTED:
            # A lone event that was refused is a client error; the body still
            # carries the per-item answer so both kinds of client can read it.
            first = result.results[0]
            name = first.field or "non_field_errors"
            data.update(error_body("invalid", f"{name}: {first.reason}", {name: [first.reason]}))
            return Response(data, status=status.HTTP_400_BAD_REQUEST)
        return Response(data, status=status.HTTP_200_OK)


class FormCaptureView(ConflictRetryMixin, APIView):
    """POST /api/v1/capture/<form_key>: a public form submission (JSON or
    form-encoded). No credentials and no CSRF token: third-party sites post
    here; abuse is held off by the per-IP throttle and the honeypot field."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    throttle_classes = [FormCaptureThrottle]

    @extend_schema(
        request=inline_serializer("FormSubmission", {"email": serializers.EmailField()}),
        responses={
            201: FormCaptureResultSerializer,
            200: OpenApiResponse(description="The same submission_id again, answered with the first result."),
            400: OpenApiResponse(description="A required field is missing or a value is invalid (named by form field)."),
            404: OpenApiResponse(description="No active form with this key."),
            429: OpenApiResponse(description="Too many submissions from this address."),
        },
        tags=["capture"],
    )
    def post(self, request, form_key: str):
        form = Form.objects.filter(key=form_key, is_active=True).select_related("event_type").first()
        if form is None:
            raise exceptions.NotFound(f"No active form {form_key!r}.")
        data = request.data
        if isinstance(data, QueryDict):
            data = data.dict()  # the last value of a repeated field, like Django forms
        elif not isinstance(data, dict):
            raise exceptions.ValidationError({"non_field_errors": ["Send the form's fields as an object."]})
        outcome = form_submit(
            form=form,
            data=data,
            ip=FormCaptureThrottle().get_ident(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
        code = status.HTTP_201_CREATED if not (outcome.spam or outcome.duplicate) else status.HTTP_200_OK
        return Response({"lead_id": outcome.lead_id, "created": outcome.created}, status=code)


def _source(request) -> str:
    if isinstance(request.auth, ApiClient):
        return f"api:{request.auth.name}"
    return f"api:user:{request.user.get_username()}"


def _actor(request):
    # API clients are not users; a staff session's user is the actor.
    return None if isinstance(request.auth, ApiClient) else request.user
