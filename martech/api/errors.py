"""Every API error is JSON: {"error": {"code", "message", "fields"}}.

``fields`` maps each offending field to its reasons (empty when the error is
not about a field). Django ValidationErrors raised by services are turned
into 400s here, so views can let them through.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.views import exception_handler as drf_exception_handler


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for k, v in _flatten(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(d, (dict, list)) for d in detail):
            out.setdefault(prefix or "non_field_errors", []).extend(str(d) for d in detail)
        else:
            for i, item in enumerate(detail):
                for k, v in _flatten(item, f"{prefix}[{i}]" if prefix else f"[{i}]").items():
                    out.setdefault(k, []).extend(v)
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return out


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail=detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real 500: let Django log it
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("", [""]))
        message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        response.data = error_body("invalid", message, fields)
    else:
        code = getattr(exc, "default_code", "error")
        detail = getattr(exc, "detail", str(exc))
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else code
        if isinstance(codes, str):
            code = codes
        response.data = error_body(code, str(detail))
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            response.data["error"]["retry_after"] = int(exc.wait)
    return response


def _is_api(request) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def server_error(request, *args, **kwargs):
    """handler500: JSON with a code on API paths, Django's page elsewhere."""
    if _is_api(request):
        return JsonResponse(error_body("server_error", "Internal server error."), status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request, *args, **kwargs)


def not_found(request, exception=None, *args, **kwargs):
    """handler404: JSON with a code on API paths (unknown URL under /api/)."""
    if _is_api(request):
        return JsonResponse(error_body("not_found", f"No endpoint at {request.path}."), status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception, *args, **kwargs)
