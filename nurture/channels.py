"""Channels: rendering, email (Django backends / anymail), SMS backends, ad
audience export and push adapters (notifications and webhooks go through
martech.notify). Nothing here decides whether to send; nurture.engine does,
and calls these after its transaction commits."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import smtplib
import socket
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, Protocol

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.urls import reverse
from django.utils.html import escape
from django.utils.module_loading import import_string

from nurture.conditions import condition_check, condition_matches

log = logging.getLogger(__name__)
TRACK_SALT = "nurture.track"


# --- rendering --------------------------------------------------------------
# The template language of emails, SMS, tasks and notifications:
#   {{first_name|there}}          a merge field (a field path of the condition
#                                 language) with an optional fallback
#   {{#if score >= 50}}..{{else}}..{{/if}}
#                                 a conditional block (a condition of the
#                                 condition language; may nest; else optional)
#   {{blocks}}                    a step's content blocks whose condition the
#                                 lead meets
# A condition may not contain "}}". Lead values are inserted once, as text
# (escaped in HTML): a value that looks like a tag is never rendered again.
_TAG = re.compile(
    r"\{\{\s*(?:#if\s+(?P<cond>.*?)|(?P<else>else)|(?P<endif>/if)"
    r"|(?P<name>[a-zA-Z0-9_.]+)\s*(?:\|(?P<fallback>[^}]*))?)\s*\}\}",
    re.S,
)
_ANY_TAG = re.compile(r"\{\{.*?\}\}", re.S)
_HREF = re.compile(r'href="(https?://[^"]+)"')


@dataclass(frozen=True)
class _Var:
    name: str
    fallback: str | None
    pos: int


@dataclass(frozen=True)
class _If:
    condition: str
    then: tuple
    otherwise: tuple
    pos: int


class TemplateError(ValidationError):
    """Template text that does not parse; the message names the column."""


def _column(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}" if line > 1 else f"column {col}"


@lru_cache(maxsize=1024)
def _parse(text: str) -> tuple:
    """Text -> nodes (str, _Var, _If). Pure, so cached: a batch renders the
    same few texts for thousands of leads."""
    root: list = []
    # Open {{#if}}s: (condition, position, then-nodes, else-nodes or None).
    stack: list[tuple[str, int, list, list | None]] = []
    out, last = root, 0
    for m in _TAG.finditer(text):
        if m.start() > last:
            out.append(text[last:m.start()])
        last = m.end()
        where = _column(text, m.start())
        if m.group("cond") is not None:
            cond = m.group("cond").strip()
            if not cond:
                raise TemplateError(f"{where}: {{{{#if}}}} needs a condition.")
            stack.append((cond, m.start(), [], None))
            out = stack[-1][2]
        elif m.group("else"):
            if not stack or stack[-1][3] is not None:
                raise TemplateError(f"{where}: {{{{else}}}} outside an {{{{#if}}}} block.")
            cond, pos, then, _ = stack.pop()
            stack.append((cond, pos, then, []))
            out = stack[-1][3]
        elif m.group("endif"):
            if not stack:
                raise TemplateError(f"{where}: {{{{/if}}}} without an {{{{#if}}}}.")
            cond, pos, then, otherwise = stack.pop()
            out = stack[-1][3] if stack and stack[-1][3] is not None else (stack[-1][2] if stack else root)
            out.append(_If(cond, tuple(then), tuple(otherwise or ()), pos))
        else:
            out.append(_Var(m.group("name"), m.group("fallback"), m.start()))
    if stack:
        raise TemplateError(f"{_column(text, stack[-1][1])}: {{{{#if}}}} is never closed with {{{{/if}}}}.")
    if last < len(text):
        out.append(text[last:])
    return tuple(root)


def _walk(nodes: tuple):
    for node in nodes:
        yield node
        if isinstance(node, _If):
            yield from _walk(node.then)
            yield from _walk(node.otherwise)


def template_check(text: str) -> None:
    """Raise ValidationError naming the place and the reason: a syntax error,
    an unknown merge field, a condition that does not parse."""
    from martech.conditions import field_check

    nodes = _parse(text or "")
    errors = [f"{_column(text, m.start())}: {m.group(0)[:40]!r} is neither a merge field nor an "
              f"{{{{#if}}}}/{{{{else}}}}/{{{{/if}}}} tag."
              for m in _ANY_TAG.finditer(text or "") if not _TAG.fullmatch(m.group(0))]
    for node in _walk(nodes):
        where = _column(text, node.pos) if not isinstance(node, str) else ""
        if isinstance(node, _Var) and node.name != "blocks":
            try:
                field_check(node.name)
            except ValidationError:
                errors.append(f"{where}: unknown merge field {node.name!r} (use a lead field, score, "
                              f"email_domain, account.<field> or properties.<name>).")
        elif isinstance(node, _If):
            try:
                condition_check(node.condition)
            except ValidationError as exc:
                errors.append(f"{where}: {{{{#if}}}} condition: {'; '.join(exc.messages)}")
    if errors:
        raise ValidationError(errors)


def lead_value(lead, path: str) -> Any:
    """``email``, ``first_name``, ``properties.cart_value``, ``account.name``:
    a field path of the condition language, else None (nothing else of the
    lead is reachable from a template)."""
    from martech.conditions import field_value

    try:
        return field_value(path, lead)
    except ValidationError:
        return None


def render(text: str, lead, *, blocks: list[dict] | None = None, html: bool = False) -> str:
    """Render ``text`` for ``lead`` (the language above): a missing or blank
    value uses the fallback, or nothing; values are escaped when ``html``.
    Raises TemplateError for text that does not parse (saving a template or
    a workflow checks first, see ``template_check``)."""
    parts: list[str] = []

    def emit(nodes: tuple) -> None:
        for node in nodes:
            if isinstance(node, str):
                parts.append(node)
            elif isinstance(node, _If):
                emit(node.then if condition_matches(node.condition, lead) else node.otherwise)
            elif node.name == "blocks":
                chosen = [b.get("text", "") for b in blocks or [] if condition_matches(b.get("condition", ""), lead)]
                parts.append("\n".join(render(t, lead, html=html) for t in chosen))
            else:
                value = lead_value(lead, node.name)
                if value in (None, "") and node.fallback is not None:
                    value = node.fallback.strip()
                value = "" if value is None else str(value)
                parts.append(escape(value) if html else value)

    emit(_parse(text or ""))
    return "".join(parts)


_BARE_URL = re.compile(r'(?<!["=])(https?://[^\s<>"]+)')


def html_from_text(text: str) -> str:
    """HTML for a plain-text body (already escaped): bare URLs become links
    (so clicks are tracked), newlines become breaks."""
    return _BARE_URL.sub(r'<a href="\1">\1</a>', text).replace("\n", "<br>\n")


class _TextFromHtml(HTMLParser):
    _SKIP = {"script", "style", "head", "title"}
    _BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "tr", "blockquote", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[tuple[str, int]] = []

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skipping += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in self._BLOCK:
            self.out.append("\n\n")
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BLOCK:
            self.out.append("\n\n")
        elif tag == "a" and self.links:
            href, at = self.links.pop()
            label = "".join(self.out[at:]).strip()
            if href.startswith(("http://", "https://", "mailto:")) and href != label:
                self.out.append(f" ({href})" if label else href)

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(re.sub(r"\s+", " ", data))


def text_from_html(html: str) -> str:
    """The plain-text version of an HTML body (what a template without a
    text body sends as its text part): tags dropped, entities decoded,
    paragraphs and breaks kept as blank lines and newlines, links as
    "label (url)"."""
    parser = _TextFromHtml()
    parser.feed(html or "")
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _one_line(text: str) -> str:
    # A subject is a header: a newline in a lead's value must not end it.
    return re.sub(r"[\r\n]+", " ", text).strip()


def render_email(content: dict, lead, *, blocks: list[dict] | None = None) -> dict[str, str]:
    """Render an email's content for ``lead``: ``content`` has ``subject``,
    ``text``, ``html`` and ``preheader`` (an inline send-email step's fields,
    or an EmailTemplate's ``content()``). A blank text part is derived from
    the HTML, a blank HTML part from the text; the preheader goes first in the
    HTML, hidden (the inbox shows it after the subject). Returns ``subject``,
    ``preheader``, ``text`` and ``html``."""
    text_src, html_src = content.get("text") or "", content.get("html") or ""
    html = render(html_src, lead, blocks=blocks, html=True) if html_src.strip() else ""
    if text_src.strip():
        text = render(text_src, lead, blocks=blocks)
        if not html:
            html = html_from_text(render(text_src, lead, blocks=blocks, html=True))
    else:
        text = text_from_html(html)
    preheader = _one_line(render(content.get("preheader") or "", lead))
    if preheader:
        hidden = ('<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
                  f"{escape(preheader)}</div>")
        body = re.search(r"<body[^>]*>", html, re.I)
        html = html[:body.end()] + hidden + html[body.end():] if body else hidden + html
    return {"subject": _one_line(render(content.get("subject") or "", lead)), "preheader": preheader,
            "text": text, "html": html}


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


def email_build_test(rendered: dict[str, str], *, to: str) -> EmailMultiAlternatives:
    """A test send of rendered content (``render_email``): "[Test]" before
    the subject, an ``X-Nurture-Test`` header and ``nurture_test`` in the
    ESP's metadata (its tracking events are ignored), and no tracking links,
    pixel or unsubscribe link: there is no message or lead to track."""
    mail = EmailMultiAlternatives(subject=f"[Test] {rendered['subject']}", body=rendered["text"], to=[to],
                                  headers={"X-Nurture-Test": "1"})
    mail.attach_alternative(rendered["html"], "text/html")
    mail.metadata = {"nurture_test": "1"}
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
