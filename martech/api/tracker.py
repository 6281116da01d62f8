"""POST /api/v1/t: the website tracker's public endpoint.

Thin: find the website by its publishable key, check the request's origin
against the website's (``martech.cors``), bound the batch, and hand it to
``martech.services.tracker.tracker_ingest``. The body is JSON sent as
``text/plain`` (what ``navigator.sendBeacon`` sends, and a content type a
browser posts cross-origin without a preflight) or ``application/json``;
the key comes in the body (``"key"``) or the query string (``?key=``).
"""
from __future__ import annotations

import json

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from martech import configcache
from martech.api.capture import EventBatchResultSerializer
from martech.api.throttling import TrackerThrottle
from martech.cors import cors_headers, origin_allowed, preflight
from martech.models import Website
from martech.services.tracker import tracker_ingest, website_by_key


class InvalidKey(exceptions.APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "Unknown or inactive website key."
    default_code = "invalid_key"


class OriginNotAllowed(exceptions.APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "This origin is not one of the website's allowed origins."
    default_code = "origin_not_allowed"


class TooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def _privacy_signal(request) -> bool:
    # Browsers send "DNT: 1" (Do Not Track) and "Sec-GPC: 1" (Global Privacy Control).
    return request.headers.get("DNT") == "1" or request.headers.get("Sec-GPC") == "1"


class TrackerBatchView(APIView):
    """POST ``{"key": "pk_...", "sentAt": "...", "batch": [page/track/identify items]}``.

    No credentials besides the publishable key, no cookies, no CSRF token:
    website pages post here. Per-IP rate limit; a batch and a body have a
    size limit. Answers per item like ``/api/v1/events``; an identify is
    answered the same whether or not its email is known.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [TrackerThrottle]
    website: Website | None = None

    def _allowed(self) -> list[str]:
        return self.website.allowed_origins if self.website is not None else []

    def options(self, request, *args, **kwargs):
        # A preflight carries no body: the key, when given, is in the query
        # string; without it any active website's origin is answered (the
        # POST itself is checked against its website's own origins).
        key = request.query_params.get("key")
        websites = Website.objects.filter(is_active=True)
        allowed = [o for origins in websites.filter(**({"key": key} if key else {})).values_list(
            "allowed_origins", flat=True) for o in origins]
        return preflight(request._request, allowed)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if request.method != "OPTIONS":
            cors_headers(response, getattr(request, "_request", request), self._allowed())
        return response

    @extend_schema(
        request=inline_serializer(
            "TrackerBatch",
            {
                "key": serializers.CharField(help_text="The website's publishable key (or ?key=)."),
                "sentAt": serializers.DateTimeField(required=False),
                "batch": serializers.ListField(child=serializers.DictField()),
            },
        ),
        responses={
            200: EventBatchResultSerializer,
            202: OpenApiResponse(description='{"status": "ignored", "reason": "privacy_signal"}: the browser asked '
                                             "not to be tracked and the website respects that; nothing was stored."),
            400: OpenApiResponse(description="Not JSON, no batch, too many events."),
            403: OpenApiResponse(description="invalid_key or origin_not_allowed."),
            413: OpenApiResponse(description="too_large: the body is over the limit."),
            429: OpenApiResponse(description="Too many requests from this address."),
        },
        tags=["capture"],
    )
    # One query reads every configuration token (the website, the event
    # catalog, the UTM tables, and what the hooks and after-commit receivers
    # of this request read): martech.configcache.
    @configcache.snapshot()
    def post(self, request):
        limit = settings.MARTECH["TRACKER_BODY_MAX"]
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise TooLarge(f"The body is {length} bytes; at most {limit}.")
        raw = request._request.body
        if len(raw) > limit:
            raise TooLarge(f"The body is {len(raw)} bytes; at most {limit}.")
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError) as exc:
            raise exceptions.ParseError(f"The body is not JSON: {exc}.") from None
        except RecursionError:
            raise exceptions.ParseError("The body is nested too deeply.") from None
        if not isinstance(body, dict):
            raise exceptions.ParseError('Send a JSON object: {"key": ..., "batch": [...]}.')

        key = body.get("key") or request.query_params.get("key")
        website = website_by_key(key) if isinstance(key, str) and key else None
        if website is None:
            raise InvalidKey()
        self.website = website
        if not origin_allowed(request._request, website.allowed_origins):
            raise OriginNotAllowed()

        items = body.get("batch")
        batch_max = settings.MARTECH["TRACKER_BATCH_MAX"]
        if not isinstance(items, list) or not items:
            raise exceptions.ValidationError({"batch": ["Send a non-empty list of events."]})
        if len(items) > batch_max:
            raise exceptions.ValidationError({"batch": [f"At most {batch_max} events per request (got {len(items)})."]})

        result = tracker_ingest(
            website=website,
            items=items,
            sent_at=body.get("sentAt"),
            user_agent=request.headers.get("User-Agent", ""),
            privacy_signal=_privacy_signal(request),
        )
        code = status.HTTP_202_ACCEPTED if result.ingest is None else status.HTTP_200_OK
        return Response(result.as_dict(), status=code)
