"""Privacy API under /api/v1/privacy/ (thin views, docs/style.md, 11).

``POST exports`` answers everything held about a person (the JSON document,
or the zip); ``POST erasures`` erases them and answers the receipt. API
clients need the scope ``privacy:export`` / ``privacy:erase``; staff
sessions the permission ``privacy.export_subject`` / ``privacy.erase_subject``
(the Privacy role). Both are audited by the services (a privacy request
naming the client or user)."""
from __future__ import annotations

from django.http import HttpResponse

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from martech.api.permissions import ScopedOrModelPermission
from martech.api.retry import ConflictRetryMixin
from martech.api.views import WRITE_ERRORS, ApiViewSet, _actor, _source, _valid
from martech.models import ApiClient
from martech.privacy import services
from martech.privacy.api import serializers as s


class PrivacyPermission(ScopedOrModelPermission):
    """API clients by scope (``required_scopes``); staff sessions by the
    view's ``staff_permission`` (not a model's add/change: these act on a
    person, not on a row of one table)."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiClient):
            return super().has_permission(request, view)
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff and user.has_perm(view.staff_permission))


class _PrivacyView(ConflictRetryMixin, APIView):
    permission_classes = [PrivacyPermission]
    throttle_classes = ApiViewSet.throttle_classes
    metadata_class = ApiViewSet.metadata_class


class ExportView(_PrivacyView):
    required_scopes = {"read": ApiClient.Scope.PRIVACY_EXPORT.value, "write": ApiClient.Scope.PRIVACY_EXPORT.value}
    staff_permission = "privacy.export_subject"

    @extend_schema(
        summary="Export everything held about a person (subject access)",
        description="Named by exactly one of email, lead or crm_id. Answers the document (format json) or a zip "
                    "with the document and one CSV per kind of record (format zip). Every export is recorded "
                    "(who, when, a salted hash of the person; never the data).",
        request=s.ExportInputSerializer,
        responses={200: OpenApiResponse(s.ExportOutputSerializer, description="The document (format json); "
                                        "application/zip for format zip."), **WRITE_ERRORS},
        tags=["privacy"],
    )
    def post(self, request):
        data = _valid(s.ExportInputSerializer, request)
        export = services.subject_export(email=data.get("email", ""), lead_id=data.get("lead"),
                                         crm_id=data.get("crm_id", ""), actor=_actor(request),
                                         source=_source(request))
        if data["format"] == "zip":
            response = HttpResponse(export.zip(), content_type="application/zip")
            response["Content-Disposition"] = f'attachment; filename="subject-access-{export.request.pk}.zip"'
            return response
        return Response(export.document)


class ErasureView(_PrivacyView):
    required_scopes = {"read": ApiClient.Scope.PRIVACY_ERASE.value, "write": ApiClient.Scope.PRIVACY_ERASE.value}
    staff_permission = "privacy.erase_subject"

    @extend_schema(
        summary="Erase a person from every app",
        description="Named by exactly one of email, lead or crm_id. Deletes or anonymizes everything held about "
                    "them in one transaction, keeps a salted-hash tombstone so later imports, CRM pulls, webhooks, "
                    "forms and tracker calls do not bring them back, and (crm_delete) queues a delete in each "
                    "connected CRM. Answers the receipt: counts per kind of record, no personal data. Erasing "
                    "an email again is harmless (an empty receipt).",
        request=s.ErasureInputSerializer,
        responses={201: s.ReceiptOutputSerializer, **WRITE_ERRORS},
        tags=["privacy"],
    )
    def post(self, request):
        data = _valid(s.ErasureInputSerializer, request)
        receipt = services.subject_erase(email=data.get("email", ""), lead_id=data.get("lead"),
                                         crm_id=data.get("crm_id", ""), actor=_actor(request),
                                         source=_source(request), crm_delete=data["crm_delete"])
        return Response(s.ReceiptOutputSerializer(receipt).data, status=status.HTTP_201_CREATED)



