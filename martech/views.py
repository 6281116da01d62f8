"""Site-level views. The admin and the API have their own modules."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

log = logging.getLogger(__name__)


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _check_broker() -> dict[str, Any]:
    from django_q.brokers import get_broker

    broker = get_broker()
    # Redis's ping is a real round trip; the ORM broker's ping is always True,
    # so the queue-size query is what proves its table answers.
    if not broker.ping():
        raise RuntimeError("broker did not answer ping")
    return {"broker": broker.info(), "queued": broker.queue_size()}


def _check_cluster() -> dict[str, Any]:
    """Healthy when a qcluster reported within MARTECH_HEALTHZ_CLUSTER_MAX_AGE
    seconds. A cluster saves its stat through the broker (Redis, or the cache
    for the ORM broker: a file cache by default, so runserver sees the stat
    the qcluster process wrote) every guard cycle with a short expiry."""
    from django_q.status import Stat

    max_age = settings.MARTECH.get("HEALTHZ_CLUSTER_MAX_AGE", 30)
    stats = Stat.get_all()
    if not stats:
        raise RuntimeError("no qcluster has reported; start one with `python manage.py qcluster`")
    newest = max(stats, key=lambda s: s.timestamp)
    age = (timezone.now() - newest.timestamp).total_seconds()
    detail = {
        "clusters": len(stats),
        "last_seen_seconds": round(age, 1),
        "max_age_seconds": max_age,
        "status": newest.status,
        "host": newest.host,
    }
    if age > max_age:
        raise _CheckFailed(f"last qcluster report is {age:.0f}s old (limit {max_age}s)", detail)
    return detail


class _CheckFailed(Exception):
    def __init__(self, message: str, detail: dict[str, Any]):
        super().__init__(message)
        self.detail = detail


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _check_database,
    "broker": _check_broker,
    "cluster": _check_cluster,
}


def _run(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = {"ok": True, **check()}
    except Exception as exc:  # a health check reports every failure, never raises
        log.warning("healthz: %s check failed: %s", name, exc)
        result = {"ok": False, **getattr(exc, "detail", {}), "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers and monitors: 200 when the database, the task
    broker and a qcluster are all healthy, 503 otherwise. Unauthenticated and
    free of data: it names components, never rows."""
    checks = {name: _run(name, check) for name, check in CHECKS.items()}
    healthy = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if healthy else "fail", "checks": checks}, status=200 if healthy else 503)


@never_cache
@require_http_methods(["GET", "POST"])
def consent_confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The link in a double opt-in confirmation email. GET shows a button,
    POST confirms: mail scanners that open every link (GET) do not consent
    for the person. A forged or edited link answers 404, an old one 410;
    the page never names the address or anything else we hold."""
    from martech.api.throttling import FormCaptureThrottle
    from martech.services.preferences import ConfirmationLinkError, confirmation_from_token, consent_confirm as confirm

    try:
        confirmation = confirmation_from_token(token)
    except ConfirmationLinkError as exc:
        if exc.expired:
            return render(request, "martech/consent_confirm.html", {"state": "expired"}, status=410)
        raise Http404("Unknown link.") from None
    if request.method == "GET":
        state = "confirmed" if confirmation.status == confirmation.Status.CONFIRMED else "ask"
        return render(request, "martech/consent_confirm.html", {"state": state})
    from martech.db import run_in_transaction

    # The transaction boundary: a deadlock or serialization failure reruns the confirmation.
    record = run_in_transaction(lambda: confirm(confirmation=confirmation, ip=FormCaptureThrottle().get_ident(request),
                                                user_agent=request.META.get("HTTP_USER_AGENT", "")))
    if record is None:
        return render(request, "martech/consent_confirm.html", {"state": "expired"}, status=410)
    return render(request, "martech/consent_confirm.html", {"state": "confirmed"})
