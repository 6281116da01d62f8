"""Capture endpoints: the events batch API and public form capture.

Thin views: check the envelope, call the service, answer. The
per-item rules live in ``martech.services.ingest``; the form rules in
``martech.services.forms``.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import QueryDict
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from martech import configcache
from martech.api.errors import error_body
from martech.api.parsers import JSONParser
from martech.api.retry import ConflictRetryMixin
from martech.api.throttling import ClientRateThrottle, FormCaptureThrottle
from martech.cors import cors_headers, origin_allowed, preflight
from martech.hosted import form_done, form_page_response
from martech.models import ApiClient, Event, Form
from martech.services.forms import PAGE_URL_FIELD, active_form, form_submit
from martech.services.ingest import REJECTED, events_ingest

log = logging.getLogger(__name__)

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
    status = serializers.ChoiceField(
        choices=["received"],
        help_text="The same answer for a new or a known email, a repeated submission and a trapped bot.",
    )


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


PUBLIC_RECEIVED = {"status": "received"}


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
    form-encoded). No credentials and no CSRF token: the form's allowed
    websites post here; abuse is held off by the per-IP throttle, the
    honeypot field and the origin check: a browser call (one with an Origin
    header) from a site not in the form's ``allowed_origins`` is refused with
    403 and writes nothing; listed sites get CORS headers and preflights.
    Every accepted post gets the same answer: it changes an existing lead only
    as the public-input rules and the form's write policies allow.

    A plain HTML form post (form-encoded, Accept preferring text/html: a
    browser navigating, not fetch) is answered for a person: 303 to the form's
    redirect URL or thank-you page, and a failed one re-renders the hosted
    page with the errors next to the fields and the values kept."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    throttle_classes = [FormCaptureThrottle]
    form: Form | None = None

    def dispatch(self, request, *args, **kwargs):
        # One read of the configuration's tokens for the whole request (the
        # form, then the store's UTM rules, stages, CRM mappings...).
        with configcache.snapshot():
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        # Loaded before the throttle runs, so a 429 still carries the CORS
        # headers a listed site needs to read it.
        self.form = active_form(kwargs["form_key"])
        super().initial(request, *args, **kwargs)

    def get_throttles(self):
        # A preflight is the browser asking, not a submission: not counted.
        return [] if self.request.method == "OPTIONS" else super().get_throttles()

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        return cors_headers(response, request, self.form.allowed_origins if self.form else [])

    def handle_exception(self, exc):
        if self.form is not None and _wants_html(self.request):
            if isinstance(exc, exceptions.Throttled):
                return form_page_response(
                    self.request._request, self.form, data=_form_data(self.request), status=429,
                    message="Too many submissions from your address; try again in a minute.",
                )
            if isinstance(exc, DjangoValidationError):
                return form_page_response(
                    self.request._request, self.form, data=_form_data(self.request),
                    errors=exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages},
                    status=400,
                )
        return super().handle_exception(exc)

    @extend_schema(exclude=True)
    def options(self, request, form_key: str):
        return preflight(request, self.form.allowed_origins if self.form else [])

    @extend_schema(
        request=inline_serializer("FormSubmission", {"email": serializers.EmailField()}),
        responses={
            202: FormCaptureResultSerializer,
            303: OpenApiResponse(description="A plain HTML form post: to the redirect URL or the thank-you page."),
            400: OpenApiResponse(description="A required field is missing or a value is invalid (named by form field)."),
            403: OpenApiResponse(description="A browser post from a website not in the form's allowed origins "
                                             "(code origin_not_allowed); nothing is written."),
            404: OpenApiResponse(description="No active form with this key."),
            429: OpenApiResponse(description="Too many submissions from this address."),
        },
        tags=["capture"],
    )
    def post(self, request, form_key: str):
        form = self.form
        if form is None:
            raise exceptions.NotFound(f"No active form {form_key!r}.")
        if not origin_allowed(request, form.allowed_origins):
            # Refused before the body is read: nothing from this page is written.
            # Logged, so ops can see a site that embeds the form without being listed.
            log.warning("form %s: post from origin %r refused (not in allowed_origins)", form.key,
                        request.headers.get("Origin"))
            message = "This form does not take submissions from this website."
            return Response(error_body("origin_not_allowed", message), status=status.HTTP_403_FORBIDDEN)
        data = _form_data(request)
        if not isinstance(data, dict):
            raise exceptions.ValidationError({"non_field_errors": ["Send the form's fields as an object."]})
        form_submit(
            form=form,
            data=data,
            ip=FormCaptureThrottle().get_ident(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
            # The embed script sends the page's address; without it, what the browser's referrer policy tells.
            page_url=str(data.get(PAGE_URL_FIELD) or request.META.get("HTTP_REFERER", "")),
        )
        if _wants_html(request):
            return form_done(form)
        # Public: whether the email was known, the submission a repeat or the
        # sender a bot caught by the honeypot is never told.
        return Response(PUBLIC_RECEIVED, status=status.HTTP_202_ACCEPTED)


def _form_data(request):
    data = request.data
    if isinstance(data, QueryDict):
        return data.dict()  # the last value of a repeated field, like Django forms
    return data


def _wants_html(request) -> bool:
    """A browser submitting a plain HTML form (navigation), not a script: the
    body is form-encoded and Accept prefers HTML to JSON (fetch sends */*)."""
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return False
    return request._request.get_preferred_type(["application/json", "text/html"]) == "text/html"


def _source(request) -> str:
    if isinstance(request.auth, ApiClient):
        return f"api:{request.auth.name}"
    return f"api:user:{request.user.get_username()}"


def _actor(request):
    # API clients are not users; a staff session's user is the actor.
    return None if isinstance(request.auth, ApiClient) else request.user
