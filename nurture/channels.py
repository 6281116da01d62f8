"""Channels: rendering, email (Django backends / anymail), SMS backends, ad
audience export and push adapters, webhooks. Nothing here decides whether to
send; nurture.engine does, and calls these after its transaction commits."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import smtplib
import socket
import urllib.request
from functools import lru_cache
from typing import Any, Protocol

from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.urls import reverse
from django.utils.html import escape
from django.utils.module_loading import import_string

from nurture.conditions import condition_matches

log = logging.getLogger(__name__)
TRACK_SALT = "nurture.track"
_TOKEN = re.compile(r"\{\{\s*([a-zA-Z0-9_.]+)\s*(?:\|([^}]*))?\}\}")
_HREF = re.compile(r'href="(https?://[^"]+)"')


# --- rendering --------------------------------------------------------------
def lead_value(lead, path: str) -> Any:
    """``email``, ``first_name``, ``properties.cart_value``, ``account.name``."""
    head, _, rest = path.partition(".")
    if head == "properties":
        return (lead.properties or {}).get(rest)
    if head == "account":
        account = lead.account if lead.account_id else None
        return getattr(account, rest, None) if account and rest else None
    if head == "lifecycle_stage":
        return lead.lifecycle_stage.key if lead.lifecycle_stage_id else None
    return getattr(lead, path, None) if not rest else None


def render(text: str, lead, *, blocks: list[dict] | None = None, html: bool = False) -> str:
    """Replace ``{{path|fallback}}`` tokens (a missing or blank value uses the
    fallback, or nothing) and ``{{blocks}}`` with the content blocks whose
    condition the lead meets (all of them, in order)."""
    def token(m: re.Match) -> str:
        name, fallback = m.group(1), m.group(2)
        if name == "blocks":
            chosen = [b.get("text", "") for b in blocks or [] if condition_matches(b.get("condition", ""), lead)]
            return "\n".join(render(t, lead, html=html) for t in chosen)
        value = lead_value(lead, name)
        value = fallback.strip() if value in (None, "") and fallback is not None else ("" if value is None else str(value))
        return escape(value) if html else value
    return _TOKEN.sub(token, text or "")


_BARE_URL = re.compile(r'(?<!["=])(https?://[^\s<>"]+)')


def html_from_text(text: str) -> str:
    """HTML for a plain-text body (already escaped): bare URLs become links
    (so clicks are tracked), newlines become breaks."""
    return _BARE_URL.sub(r'<a href="\1">\1</a>', text).replace("\n", "<br>\n")


# --- signed links -------------------------------------------------------------
@lru_cache(maxsize=8)
def _url_template(name: str, base: str) -> str:
    return base.rstrip("/") + reverse(name, args=["TOKEN"])


def _url(name: str, token: str) -> str:
    # reverse() once per name: a batch builds three links per email.
    return _url_template(name, settings.MARTECH_NURTURE["PUBLIC_BASE_URL"]).replace("TOKEN", token)


def sign(message_id: int, **extra) -> str:
    # Compress only payloads that carry a URL; unsign reads both forms.
    return signing.dumps({"m": message_id, **extra}, salt=TRACK_SALT, compress=bool(extra))


def unsign(token: str, max_age=None) -> dict:
    """The link's payload; raises BadSignature (SignatureExpired past ``max_age``)."""
    return signing.loads(token, salt=TRACK_SALT, max_age=max_age)


def unsubscribe_url(message_id: int, token: str | None = None) -> str:
    return _url("nurture:unsubscribe", token or sign(message_id))


def email_build(message, *, html_body: str) -> EmailMultiAlternatives:
    """The outgoing email: List-Unsubscribe with the one-click POST of RFC
    8058, a Message-ID derived from the idempotency key (an ESP or a
    reconciliation can recognise a repeat), click links rewritten to the
    signed redirect, and an open pixel."""
    token = sign(message.pk)  # the open pixel and the unsubscribe link carry the same one
    unsub = unsubscribe_url(message.pk, token)

    def rewrite(m: re.Match) -> str:
        return f'href="{_url("nurture:click", sign(message.pk, u=m.group(1)))}"'

    html = _HREF.sub(rewrite, html_body)
    html += f'<img src="{_url("nurture:open", token)}" width="1" height="1" alt="">'
    html += f'<p style="font-size:12px"><a href="{unsub}">Unsubscribe</a></p>'
    text = message.body + f"\n\nUnsubscribe: {unsub}\n"
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    mail = EmailMultiAlternatives(
        subject=message.subject,
        body=text,
        to=[message.to],
        headers={
            "List-Unsubscribe": f"<{unsub}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-ID": f"<{message.key.replace(':', '.')}@{domain}>",
            "X-Nurture-Key": message.key,
        },
    )
    mail.attach_alternative(html, "text/html")
    # anymail passes metadata to the ESP, which echoes it in tracking
    # events: a delivery of a message whose worker died before storing the
    # ESP's id still finds it by key (services.messages_confirm_sent).
    mail.metadata = {"nurture_key": message.key}
    return mail


def email_connection():
    conn = get_connection()
    # A send that hangs must end before the recovery lease does (the
    # nurture.W002 check keeps NURTURE_SEND_TIMEOUT_SECONDS below it).
    if isinstance(conn, SmtpBackend) and conn.timeout is None:
        conn.timeout = settings.MARTECH_NURTURE["SEND_TIMEOUT_SECONDS"]
    return conn


def email_was_sent(connection, key: str) -> bool | None:
    """Ask the backend whether the message with this key went out: True,
    False, or None when the backend cannot tell (then a message a dead worker
    left ``sending`` is marked in doubt, never resent blindly)."""
    lookup = getattr(connection, "was_sent", None)
    return lookup(key) if lookup else None


class EmailInDoubt(Exception):
    """The backend may have taken the message (no answer after the point of
    no return): the Message is marked ``in_doubt``, never resent blindly."""


class EmailSession:
    """One email connection for a run of sends, each in two phases around
    ``commit_point`` (the caller durably marks the message ``sending`` there).

    SMTP is split at the protocol's own point of no return: MAIL, RCPT, DATA
    and the content go first, then ``commit_point()``, then the final "." that
    makes the server take the message. A worker killed before the "." leaves
    nothing on the server (it drops an unfinished DATA) and the message is
    known unsent; only a kill between the "." and the caller's commit of
    ``sent`` leaves a message truly in doubt. Any other backend (console,
    file, locmem, anymail's ESPs) is one call: ``commit_point()`` then the
    call. anymail's ESP message id is returned, for tracking events to
    confirm the message by."""

    def __init__(self):
        self.backend = email_connection()
        self.smtp = isinstance(self.backend, SmtpBackend)

    def send(self, mail: EmailMultiAlternatives, *, commit_point) -> str:
        if self.smtp:
            return self._send_smtp(mail, commit_point)
        commit_point()
        mail.connection = self.backend
        try:
            mail.send()
        except Exception as exc:
            if _maybe_taken(exc):
                raise EmailInDoubt(f"{type(exc).__name__}: {exc}") from exc
            raise
        status = getattr(mail, "anymail_status", None)
        provider = getattr(status, "message_id", None) if status is not None else None
        # One recipient, one id (anymail gives a set when recipients' ids differ).
        return "" if provider is None or isinstance(provider, (set, frozenset)) else str(provider)

    def _send_smtp(self, mail: EmailMultiAlternatives, commit_point) -> str:
        from django.core.mail.message import sanitize_address

        backend = self.backend
        if backend.connection is None:
            backend.open()
            # The content and the final "." are separate small writes (the
            # mark is committed between them): without this, Nagle's
            # algorithm holds the "." until the server's delayed ACK (40 ms
            # on Linux) on every message.
            sock = getattr(backend.connection, "sock", None)
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        smtp = backend.connection
        encoding = mail.encoding or settings.DEFAULT_CHARSET
        sender = sanitize_address(mail.from_email, encoding)
        recipients = [sanitize_address(a, encoding) for a in mail.recipients()]
        content = _DOT_LINE.sub(b"..", mail.message().as_bytes(linesep="\r\n"))
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        try:
            smtp.ehlo_or_helo_if_needed()
            code, resp = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, sender)
            refused = {}
            for rcpt in recipients:
                code, resp = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, resp)
            if len(refused) == len(recipients):
                raise smtplib.SMTPRecipientsRefused(refused)
            code, resp = smtp.docmd("data")
            if code != 354:
                raise smtplib.SMTPDataError(code, resp)
            smtp.send(content)
        except Exception:
            self.abort()  # nothing was taken; start the next message on a fresh connection
            raise
        try:
            commit_point()
        except Exception:
            self.abort()  # without the "." the server drops what it was given
            raise
        try:
            smtp.send(b".\r\n")
            code, resp = smtp.getreply()
        except Exception as exc:  # the server may have taken it and its answer was lost
            self.abort()
            raise EmailInDoubt(f"{type(exc).__name__}: {exc}") from exc
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)  # a refusal: not sent
        return ""

    def abort(self) -> None:
        conn, self.backend.connection = getattr(self.backend, "connection", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead socket is what we are dropping
                pass

    def close(self) -> None:
        if self.smtp:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001 - QUIT on a dead connection
                self.abort()


_DOT_LINE = re.compile(rb"(?m)^\.")


def _maybe_taken(exc: Exception) -> bool:
    """A timeout, a dropped connection or a 5xx from an ESP's API may hide
    an accepted message; a 4xx or a refusal did not send it."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return status >= 500
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout
    except ImportError:  # pragma: no cover - requests ships with the project
        return isinstance(exc, (socket.timeout, ConnectionError))
    return isinstance(exc, (Timeout, RequestsConnectionError, socket.timeout, ConnectionError))


# --- SMS ------------------------------------------------------------------------
class SmsBackend(Protocol):
    def send(self, *, to: str, body: str, key: str) -> str: ...  # returns the provider id


class ConsoleSmsBackend:
    def send(self, *, to: str, body: str, key: str) -> str:
        print(f"SMS to {to} [{key}]: {body}")
        return key


class DisabledSmsBackend:
    """For a site that sends no SMS: an SMS step fails with this reason on
    its message instead of pretending to send, as the console backend does."""

    def send(self, *, to: str, body: str, key: str) -> str:
        raise SmsError("sms_disabled", "SMS is not configured on this site (NURTURE_SMS_BACKEND).")


class LocmemSmsBackend:
    outbox: list[dict] = []

    def send(self, *, to: str, body: str, key: str) -> str:
        LocmemSmsBackend.outbox.append({"to": to, "body": body, "key": key})
        return key


class SmsError(Exception):
    """The provider refused the message (it was not sent): kept on the
    Message as ``failed`` with the provider's error code."""

    def __init__(self, code, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class SmsInDoubt(Exception):
    """The provider may have accepted the message (a 5xx, a read timeout):
    the Message is marked ``in_doubt`` and never resent blindly."""


def _never_connected(exc: Exception) -> bool:
    """A connect that failed (refused, unreachable, connect timeout): the
    request never reached the provider, so retrying cannot double-send."""
    from requests.exceptions import ConnectTimeout
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

    if isinstance(exc, ConnectTimeout):
        return True
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


class TwilioSmsBackend:
    """Twilio's Messages API over HTTPS (basic auth), with ``requests``.

    ``TWILIO_BASE_URL`` (default https://api.twilio.com) points it elsewhere,
    e.g. at the loopback emulator in the tests. Every request carries the
    message's idempotency key as ``I-Twilio-Idempotency-Token``. Retries are
    limited to answers that prove Twilio did not take the message: a refused
    connection or a 429 (rate limited), up to ``TWILIO_RETRIES`` times with
    the same key. A 4xx is a refusal (SmsError with Twilio's error code); a
    5xx or a read timeout may hide an accepted message, so it raises
    SmsInDoubt and the engine keeps the message ``in_doubt``."""

    def send(self, *, to: str, body: str, key: str) -> str:
        import requests

        cfg = settings.MARTECH_NURTURE
        sid = cfg["TWILIO_ACCOUNT_SID"]
        if not sid or not cfg["TWILIO_AUTH_TOKEN"] or not cfg["TWILIO_FROM"]:
            raise SmsError("config", "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM must be set.")
        url = f"{cfg['TWILIO_BASE_URL'].rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        attempts = cfg["TWILIO_RETRIES"] + 1
        for attempt in range(attempts):
            try:
                r = requests.post(url, data={"To": to, "From": cfg["TWILIO_FROM"], "Body": body},
                                  auth=(sid, cfg["TWILIO_AUTH_TOKEN"]), headers={"I-Twilio-Idempotency-Token": key},
                                  timeout=(5, 15))
            except requests.ConnectionError as exc:
                # Raised for a refused or failed connect (nothing was sent) and
                # for a connection dropped mid-answer (maybe sent).
                if _never_connected(exc):
                    if attempt + 1 < attempts:
                        continue
                    raise SmsError("connect", f"Twilio unreachable: {exc}") from exc
                raise SmsInDoubt(f"connection lost after sending: {exc}") from exc
            except requests.Timeout as exc:
                raise SmsInDoubt(f"no answer from Twilio: {exc}") from exc
            if r.status_code == 429 and attempt + 1 < attempts:
                continue
            if r.status_code >= 500:
                raise SmsInDoubt(f"Twilio answered {r.status_code}")
            if r.status_code >= 400:
                try:
                    err = r.json()
                except ValueError:
                    err = {}
                raise SmsError(err.get("code", r.status_code), err.get("message") or r.text[:200])
            return r.json().get("sid", "")
        raise SmsError(429, "rate limited by Twilio")


def sms_backend() -> SmsBackend:
    return import_string(settings.MARTECH_NURTURE["SMS_BACKEND"])()


# --- ad audiences -------------------------------------------------------------
def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest() if value else ""


def audience_rows(leads) -> list[dict[str, str]]:
    """Normalized, SHA-256-hashed identifiers: email trimmed and lower-cased,
    phone in E.164 (as stored) - the normalization both Google Customer Match
    and LinkedIn Matched Audiences ask for before hashing."""
    return [{"email": sha256(normalize_email(lead.email or "")), "phone": sha256(str(lead.phone or ""))} for lead in leads]


def audience_csv(rows: list[dict[str, str]], *, fmt: str) -> str:
    """``google``: Customer Match's hashed upload columns (Email, Phone);
    ``linkedin``: Matched Audiences' contact list column (email, hashed)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    if fmt == "google":
        w.writerow(["Email", "Phone"])
        w.writerows([r["email"], r["phone"]] for r in rows)
    elif fmt == "linkedin":
        w.writerow(["email"])
        w.writerows([r["email"]] for r in rows if r["email"])
    else:
        raise ValueError(f"Unknown audience format {fmt!r} (google or linkedin).")
    return buf.getvalue()


class AudienceAdapter(Protocol):
    def push(self, *, audience: str, rows: list[dict[str, str]]) -> None: ...


class LogAudienceAdapter:
    def push(self, *, audience: str, rows: list[dict[str, str]]) -> None:
        log.info("audience %s: %d hashed members ready to push", audience, len(rows))


def audience_adapter() -> AudienceAdapter:
    return import_string(settings.MARTECH_NURTURE["AUDIENCE_ADAPTER"])()


def audience_push(*, audience: str) -> int:
    """Push every member of ``audience`` (hashed) through the configured
    adapter; returns the number of rows pushed."""
    from martech.models import Lead

    leads = Lead.objects.filter(nurture_audiences__audience=audience).only("email", "phone").order_by("pk")
    rows = audience_rows(leads)
    audience_adapter().push(audience=audience, rows=rows)
    return len(rows)


# --- webhooks ------------------------------------------------------------------
def post_json(url: str, payload: dict, *, key: str, timeout: float = 10) -> int:
    """POST JSON with an ``Idempotency-Key`` header (the receiver can drop a
    repeat). Slack-compatible incoming webhooks take ``{"text": ...}``."""
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - ops-configured URL
        return resp.status
