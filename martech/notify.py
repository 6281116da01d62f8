"""Outbound notifications to the team: an email, or a JSON POST to a webhook
(Slack-compatible incoming webhooks take ``{"text": ...}``). The SQL
handoff (``martech.scoring.tasks``), routing's SLA escalation
(``routing.services.sla``) and nurture's notify and webhook steps
(``nurture.engine``) all send through here; each call is recorded as one
``martech.models.Notification`` row with its outcome and attempts.

Timeout: every webhook call has one (the caller's setting, else
``MARTECH_NOTIFY["TIMEOUT"]``); email uses the mail backend's
``EMAIL_TIMEOUT``.

Retry, only where a second try cannot send the notification twice: a
webhook whose connection could not be made (refused, no such host, connect
timeout: the request never left) or that answered 429, 502, 503 or 504 (the
receiver asks to try again), and an email whose SMTP connection could not be
opened. A timeout or a dropped connection after the request was sent is
``in_doubt`` and never retried here: the receiver may have acted on it. Up
to ``MARTECH_NOTIFY["ATTEMPTS"]`` tries, ``RETRY_WAIT`` seconds apart
(doubling).

Idempotency is the caller's: each caller has its own row that says whether
a notification was sent (``Handoff.webhook_sent_at``, the ``Escalation``
row, nurture's ``Message``) and passes its key, sent as the
``Idempotency-Key`` header so a receiver can drop a repeat. These functions
never raise for a failed send; they return the row (``ok``, ``summary``;
``sent_or_raise`` for a caller that treats a failure as an error).
"""
from __future__ import annotations

import http.client
import json
import logging
import smtplib
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from martech.models import Notification

log = logging.getLogger(__name__)

# Statuses that ask the sender to come back later: nothing was done.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class NotifyError(Exception):
    """A notification that was not sent (``Notification.raise_for_outcome``)."""


def sent_or_raise(notification: Notification) -> Notification:
    """``notification``, or ``NotifyError`` with its summary when it was not sent."""
    if not notification.ok:
        raise NotifyError(notification.summary)
    return notification


def _conf() -> dict:
    return settings.MARTECH_NOTIFY


def _target_of(url: str) -> str:
    # Only the host is kept: a Slack-style webhook URL carries its secret in the path.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "(invalid URL)"


def _wait(attempt: int) -> None:
    time.sleep(_conf()["RETRY_WAIT"] * 2 ** (attempt - 1))


def _webhook_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[str, int | None, str, bool]:
    """(status, HTTP status, error, worth retrying) for one POST."""
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - an ops-configured URL
            response.read()
            return Notification.Status.SENT, response.status, "", False
    except urllib.error.HTTPError as exc:
        return Notification.Status.FAILED, exc.code, str(exc), exc.code in RETRY_STATUSES
    except urllib.error.URLError as exc:
        # Raised while connecting or sending: no answer came, and the
        # receiver did not get a whole request.
        return Notification.Status.FAILED, None, str(exc), True
    except ValueError as exc:  # not a URL urllib can open
        return Notification.Status.FAILED, None, str(exc), False
    except (OSError, http.client.HTTPException) as exc:
        # The request went out and the answer did not come back.
        return Notification.Status.IN_DOUBT, None, f"{type(exc).__name__}: {exc}", False


def webhook_post(*, url: str, payload: dict, source: str, key: str = "", timeout: float | None = None,
                 attempts: int | None = None) -> Notification:
    """POST ``payload`` as JSON to ``url``; the outcome is recorded and returned."""
    attempts = attempts or _conf()["ATTEMPTS"]
    timeout = timeout if timeout is not None else _conf()["TIMEOUT"]
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    body = json.dumps(payload).encode()
    started = timezone.now()
    tried = 0
    while True:
        tried += 1
        status, code, error, retry = _webhook_once(url, body, headers, timeout)
        if status == Notification.Status.SENT or not retry or tried >= attempts:
            break
        log.info("notify: webhook for %s failed (%s), attempt %s of %s", source, error, tried, attempts)
        _wait(tried)
    return _record(channel=Notification.Channel.WEBHOOK, source=source, key=key, target=_target_of(url),
                   status=status, attempts=tried, response_status=code, error=error, started=started)


def _smtp_not_connected(exc: Exception) -> bool:
    return isinstance(exc, (smtplib.SMTPConnectError, ConnectionRefusedError, socket.gaierror))


def email_send(*, subject: str, body: str, to: list[str], source: str, key: str = "", connection=None,
               attempts: int | None = None) -> Notification:
    """Send a plain-text email to ``to`` (through ``connection``, else the
    default backend); the outcome is recorded and returned."""
    attempts = attempts or _conf()["ATTEMPTS"]
    started = timezone.now()
    tried, status, error = 0, Notification.Status.SENT, ""
    while True:
        tried += 1
        try:
            send_mail(subject, body, None, to, connection=connection)
            status, error = Notification.Status.SENT, ""
            break
        except Exception as exc:  # noqa: BLE001 - recorded on the row; the caller decides what follows
            status, error = Notification.Status.FAILED, str(exc) or type(exc).__name__
            if not _smtp_not_connected(exc) or tried >= attempts:
                break
        log.info("notify: email for %s failed (%s), attempt %s of %s", source, error, tried, attempts)
        _wait(tried)
    return _record(channel=Notification.Channel.EMAIL, source=source, key=key, target=", ".join(to),
                   status=status, attempts=tried, response_status=None, error=error, started=started)


def _record(*, channel: str, source: str, key: str, target: str, status: str, attempts: int,
            response_status: int | None, error: str, started) -> Notification:
    if status != Notification.Status.SENT:
        log.warning("notify: %s for %s %s: %s", channel, source, status, error)
    return Notification.objects.create(
        channel=channel, source=source[:100], key=key[:200], target=target[:500], status=status, attempts=attempts,
        response_status=response_status, error=error[:2000], created_at=started, finished_at=timezone.now(),
    )
