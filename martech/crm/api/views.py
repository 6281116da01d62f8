"""POST /api/v1/webhooks/hubspot: HubSpot's v3-signed notifications."""
from __future__ import annotations

import json

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from martech.api.errors import error_body
from martech.api.retry import ConflictRetryMixin
from martech.crm import services
from martech.crm.connectors.hubspot import verify_v3_signature


class HubSpotWebhookView(ConflictRetryMixin, APIView):
    """No session or token: HubSpot proves itself with the v3 signature
    (HMAC-SHA256 of method, URL, body and timestamp with the app secret),
    checked on the raw body before anything is parsed."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]

    @extend_schema(
        request=inline_serializer("HubSpotNotification", {
            "eventId": serializers.IntegerField(), "subscriptionType": serializers.CharField(),
            "objectId": serializers.IntegerField(), "occurredAt": serializers.IntegerField(),
        }, many=True),
        responses={
            202: inline_serializer("WebhookAccepted", {"accepted": serializers.IntegerField(),
                                                       "duplicates": serializers.IntegerField()}),
            400: OpenApiResponse(description="The body is not a JSON list of notifications."),
            401: OpenApiResponse(description="Missing, bad or stale X-HubSpot-Signature-v3."),
        },
        tags=["webhooks"],
    )
    def post(self, request):
        body = request.body
        headers = {k: request.headers.get(k, "") for k in ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp")}
        if not verify_v3_signature(secret=settings.MARTECH_CRM["HUBSPOT_APP_SECRET"], method=request.method,
                                   uri=request.build_absolute_uri(), body=body, headers=headers):
            return Response(error_body("bad_signature", "Missing, invalid or stale HubSpot v3 signature."),
                            status=status.HTTP_401_UNAUTHORIZED)
        try:
            events = json.loads(body or b"null")
        except ValueError:
            events = None
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return Response(error_body("invalid", "Send a JSON list of notifications.", {"body": ["Not a list."]}),
                            status=status.HTTP_400_BAD_REQUEST)
        with transaction.atomic():
            new_ids = services.webhook_receive(provider="hubspot", events=events)
            if new_ids:
                transaction.on_commit(lambda: _enqueue(new_ids))
        return Response({"accepted": len(new_ids), "duplicates": len(events) - len(new_ids)},
                        status=status.HTTP_202_ACCEPTED)


def _enqueue(ids: list[int]) -> None:
    from django_q.tasks import async_task

    async_task("martech.crm.tasks.process_webhooks", ids)
