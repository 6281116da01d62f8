"""Cross-origin access for the public endpoints (hosted forms, the website
tracker). Each form or website lists the origins allowed to call it; a
browser's preflight and actual request are answered with CORS headers only
for those origins, and a request whose Origin is not listed is refused. A
request without an Origin header (a server, curl) is not a browser request:
CORS does not apply to it.

Origins are kept normalized: ``scheme://host[:port]``, lower-case, the port
omitted when it is the scheme's default.
"""
from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

_DEFAULT_PORTS = {"http": 80, "https": 443}
PREFLIGHT_MAX_AGE = 600


def origin_normalize(value: str) -> str:
    """``scheme://host[:port]`` of ``value``; ValidationError naming why not."""
    text = (value or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"{text!r} is not an origin: {exc}.") from exc
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValidationError(f"{text!r} is not an origin: give scheme and host, e.g. https://www.example.com.")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError(f"{text!r} is not an origin: no path, query or credentials.")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def origins_clean(values: Iterable[str]) -> list[str]:
    """A list of normalized, distinct origins; ValidationError listing every bad one."""
    out: list[str] = []
    errors: list[str] = []
    for value in values:
        try:
            origin = origin_normalize(value)
        except ValidationError as exc:
            errors.extend(exc.messages)
            continue
        if origin not in out:
            out.append(origin)
    if errors:
        raise ValidationError(errors)
    return out


def request_origin(request: HttpRequest) -> str | None:
    """The request's normalized Origin, None when it has none, "" when unusable."""
    raw = request.headers.get("Origin")
    if raw is None:
        return None
    try:
        return origin_normalize(raw)
    except ValidationError:
        return ""  # "null" (sandboxed pages, file://) or junk: never allowed


def origin_allowed(request: HttpRequest, allowed: Iterable[str]) -> bool:
    """True for a request without Origin, or whose Origin is listed."""
    origin = request_origin(request)
    return origin is None or (bool(origin) and origin in set(allowed))


def cors_headers(response: HttpResponse, request: HttpRequest, allowed: Iterable[str], *, methods: str = "POST, OPTIONS") -> HttpResponse:
    """Add CORS headers for the request's origin when it is allowed."""
    response["Vary"] = ", ".join(v for v in (response.get("Vary"), "Origin") if v)
    origin = request_origin(request)
    if origin and origin in set(allowed):
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Methods"] = methods
        response["Access-Control-Allow-Headers"] = "Content-Type"
        response["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return response


def preflight(request: HttpRequest, allowed: Iterable[str], *, methods: str = "POST, OPTIONS") -> HttpResponse:
    """The answer to an OPTIONS preflight: 204 with CORS headers for an allowed
    origin, 403 without them otherwise (the browser then refuses the call)."""
    ok = request_origin(request) not in (None, "") and origin_allowed(request, allowed)
    return cors_headers(HttpResponse(status=204 if ok else 403), request, allowed, methods=methods)
