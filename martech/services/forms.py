"""Public form capture: the hosted page /f/<form_key> and
POST /api/v1/capture/<form_key> (embedded forms) both call ``form_submit``.

``form_submit`` turns one submission into a lead (through ``lead_upsert``),
an optional consent record with its evidence, an identity link and one
event of the form's type carrying the submission's UTM. Scoring, routing,
lifecycle rules and journey enrollment run after the commit in one task
(``capture.capture_process``). A submission that
repeats a ``submission_id`` is answered with the first one's lead and writes
nothing again.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from martech import configcache
from martech.models import (
    VISITOR_REFUSED_FIELDS, ConsentChannel, Event, EventType, Form, FormFieldType, Identity, consent_text_version,
)
from martech.selectors import NOT_APPLIED
from martech.services import capture
from martech.services.campaigns import UTM_FIELDS
from martech.services.ingest import Touch, UtmResolver, lead_touch_update
from martech.services.leads import SubjectErased, consent_record, identity_link, lead_upsert
from martech.services.normalize import refuse_unstorable
from martech.services.preferences import consent_confirmation_request

log = logging.getLogger(__name__)

SUBMISSION_ID_FIELD = "submission_id"
ANONYMOUS_ID_FIELD = "anonymous_id"
PAGE_URL_FIELD = "page_url"
CONSENT_VERSION_FIELD = "consent_version"
MAX_VALUE_LENGTH = 5000
_TRUTHY = {"1", "true", "on", "yes", "y", "checked", "granted"}
# Stable namespace: the same (form, submission id) always gives the same event id.
_SUBMISSION_NS = uuid.UUID("9b7d6a52-52a4-4a3e-9d0c-4f1f3c0a6e21")


@dataclass(frozen=True)
class FormSubmission:
    lead_id: int | None
    created: bool
    event_id: int | None = None
    spam: bool = False
    duplicate: bool = False
    # The person was erased (privacy): answered like a success, nothing kept.
    suppressed: bool = False


# The active forms by key, per process (martech.configcache; bumped when a
# form or an event type is saved or deleted): the capture endpoint reads its
# form on every post, inside the request's configuration snapshot.
FORMS_KEY = "martech.forms"


def _load_active_forms() -> dict[str, Form]:
    return {form.key: form for form in Form.objects.filter(is_active=True).select_related("event_type")}


def active_form(key: str) -> Form | None:
    """The active form with this key, or None (shared by the process: read-only)."""
    return configcache.cached(FORMS_KEY, _load_active_forms).get(key)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return str(value or "").strip().lower() in _TRUTHY


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _client_event_id(form: Form, data: Mapping[str, Any]) -> str:
    submission = data.get(SUBMISSION_ID_FIELD)
    if _blank(submission):
        return f"form:{form.key}:{uuid.uuid4()}"
    # Hashed so any length or charset of the site's id fits the 255-char column.
    return f"form:{form.key}:{uuid.uuid5(_SUBMISSION_NS, f'{form.key}:{submission}')}"


def form_submit(
    *,
    form: Form,
    data: Mapping[str, Any],
    ip: str | None,
    user_agent: str = "",
    page_url: str = "",
) -> FormSubmission:
    """Record one submission of an active form. Raises ValidationError keyed
    by the *form* field names (so a page can point at its own inputs), with
    the field's own error message when the form gives one. A filled honeypot
    is answered like a success but writes nothing. ``page_url`` is the page
    the form was shown on (the hosted page's address, or what the embedding
    page reported); it is kept on the event and the consent evidence. The
    caller throttles, checks the origin and that the form is active."""
    source = f"form:{form.key}"
    if form.honeypot_field and not _blank(data.get(form.honeypot_field)):
        log.warning("form %s: honeypot %r filled from %s; dropped", form.key, form.honeypot_field, ip)
        return FormSubmission(lead_id=None, created=False, spam=True)

    refuse_unstorable(data)
    lead_data, errors = form_values(form=form, data=data)
    if errors:
        raise ValidationError(errors)
    for lead_field, value in (form.defaults or {}).items():
        if _blank(lead_data.get(lead_field)):
            lead_data[lead_field] = value

    client_event_id = _client_event_id(form, data)
    seen = None
    if not _blank(data.get(SUBMISSION_ID_FIELD)):
        # Without a submission id the event's id is new (random): nothing to look up.
        seen = Event.objects.filter(client_event_id=client_event_id).values_list("id", "lead_id").first()
    if seen:
        return FormSubmission(lead_id=seen[1], created=False, event_id=seen[0], duplicate=True)

    page_url = _page_url(page_url or data.get(PAGE_URL_FIELD))
    try:
        # What the submission causes runs in one task after the commit
        # (martech.services.capture): this request only stores and answers.
        with capture.deferred(source=source):
            return _store(
                form=form,
                data=data,
                lead_data=lead_data,
                source=source,
                client_event_id=client_event_id,
                ip=ip,
                user_agent=user_agent,
                page_url=page_url,
            )
    except SubjectErased:
        log.info("form %s: a submission about an erased person; nothing kept", form.key)
        return FormSubmission(lead_id=None, created=False, suppressed=True)
    except ValidationError as exc:
        # Name the form's own fields, not the lead's.
        by_lead_field = {f["lead_field"]: f for f in form.fields}
        named: dict[str, list[str]] = {}
        for key, messages in exc.message_dict.items():
            field = by_lead_field.get(key)
            if field is None:
                named[key] = messages
            else:
                named[field["name"]] = [field["error_message"]] if field.get("error_message") else messages
        raise ValidationError(named) from None
    except IntegrityError:
        # The same submission id raced in from another request and won.
        seen = Event.objects.filter(client_event_id=client_event_id).values_list("id", "lead_id").first()
        if seen is None:
            raise
        return FormSubmission(lead_id=seen[1], created=False, event_id=seen[0], duplicate=True)


def form_values(*, form: Form, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The lead fields a submission fills, by the form's field definitions,
    and ``{form field: [reason]}`` for every field that is missing or not
    acceptable for its type. Fields the form does not define are ignored."""
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for field in form.fields:
        name, kind = field["name"], field["type"]
        if field["lead_field"] in VISITOR_REFUSED_FIELDS:
            # A form saved before such fields were refused: what the visitor
            # posts there is not applied; the form's defaults still are.
            continue
        raw = data.get(name)
        if kind == FormFieldType.HIDDEN and _blank(raw):
            raw = field.get("initial") or None
        reason = None
        if kind == FormFieldType.CHECKBOX:
            if _truthy(raw):
                values[field["lead_field"]] = True
            elif field.get("required"):
                reason = "Tick this box to continue."
        elif _blank(raw):
            if field.get("required"):
                reason = "This field is required."
        elif not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            reason = "Give a single value."
        else:
            value = str(raw).strip()
            if len(value) > MAX_VALUE_LENGTH:
                reason = f"At most {MAX_VALUE_LENGTH} characters (got {len(value)})."
            elif kind == FormFieldType.SELECT and value not in {c[0] for c in field.get("choices") or []}:
                reason = "Choose one of the listed options."
            elif kind == FormFieldType.EMAIL and not _looks_like_email(value):
                reason = "Enter a valid email address."
            else:
                values[field["lead_field"]] = value
        if reason:
            errors[name] = [field.get("error_message") or reason]
    return values, errors


def _looks_like_email(value: str) -> bool:
    try:
        validate_email(value)
    except ValidationError:
        return False
    return True


def _page_url(value: Any) -> str:
    """An http(s) page address, at most 2000 characters; anything else is dropped."""
    text = str(value or "").strip()[:2000]
    return text if text.lower().startswith(("http://", "https://")) else ""


def _consent_text(form: Form, version: Any) -> dict[str, Any]:
    """The consent wording the visitor saw. A rendered form carries the
    version (digest) of its text; a page embedded before the wording changed
    still shows the old one, found in the form's history."""
    current = form.consent_version
    version = str(version or "").strip()
    if not version or version == current:
        return {"text": form.consent_text, "text_version": current}
    for text in form.history.values_list("consent_text", flat=True).distinct():
        if consent_text_version(text) == version:
            return {"text": text, "text_version": version}
    # Unknown version: keep the current text and say it could not be matched.
    return {"text": form.consent_text, "text_version": current, "text_version_shown": version[:64]}


@transaction.atomic
def _store(
    *,
    form: Form,
    data: Mapping[str, Any],
    lead_data: dict[str, Any],
    source: str,
    client_event_id: str,
    ip: str | None,
    user_agent: str,
    page_url: str,
) -> FormSubmission:
    utm = UtmResolver()
    raw = {f: str(data[f"utm_{f}"]) for f in UTM_FIELDS if not _blank(data.get(f"utm_{f}"))}
    normalized = utm.normalize(raw)
    utm.load_campaigns([normalized] if raw else [])
    channel = utm.channel(normalized)
    event_type = form.event_type or EventType.objects.get(name="form_submitted")
    now = timezone.now()
    touch = Touch(now, normalized, channel) if event_type.is_touchpoint or raw else None

    not_applied: dict[str, Any] = {}
    # No savepoints inside: _store is the transaction, form_submit answers
    # every error it raises after the whole of it rolled back. A new lead is
    # inserted with the submission as its first touch.
    lead, created = lead_upsert(
        data=lead_data, source=source, public=True, policy=form.write_policy(), unapplied=not_applied,
        savepoint=False, touch=touch,
    )
    capture.note_lead(lead.pk, created=created)

    if form.consent_field and _truthy(data.get(form.consent_field)):
        evidence = {
            "form": form.key,
            "ip": ip,
            **_consent_text(form, data.get(CONSENT_VERSION_FIELD)),
            "page_url": page_url,
            "user_agent": user_agent[:500],
        }
        if form.double_opt_in and form.consent_channel == ConsentChannel.EMAIL:
            # Not consent yet: a request and a confirmation email; the click grants it.
            consent_confirmation_request(lead=lead, channel=form.consent_channel, form=form, evidence=evidence)
        else:
            consent_record(lead=lead, channel=form.consent_channel, granted=True, source=source, evidence=evidence,
                           lead_locked=True, savepoint=False)

    anonymous_id = str(data.get(ANONYMOUS_ID_FIELD) or "").strip()[:255]
    if anonymous_id:
        identity_link(lead=lead, kind=Identity.Kind.ANONYMOUS, value=anonymous_id)

    properties = {"form": form.key, "form_name": form.name}
    if page_url:
        properties["page_url"] = page_url
    if not_applied:
        # Kept as evidence and shown on the lead's timeline, never applied.
        properties[NOT_APPLIED] = not_applied
    # A concurrent twin of this submission (same submission id) makes this
    # insert fail; the whole submission rolls back and form_submit answers
    # with the twin's result.
    event = Event.objects.create(
        client_event_id=client_event_id,
        kind=Event.Kind.FORM,
        event_type=event_type,
        lead=lead,
        anonymous_id=anonymous_id,
        properties=properties,
        context={"ip": ip, "userAgent": user_agent[:500]},
        occurred_at=now,
        received_at=now,
        utm_source=normalized["source"],
        utm_medium=normalized["medium"],
        utm_campaign=normalized["campaign"],
        utm_term=normalized["term"],
        utm_content=normalized["content"],
        channel=channel,
        campaign=utm.campaigns.get((normalized["source"], normalized["medium"], normalized["campaign"])),
    )
    if touch is not None and not created:
        # The lead is locked and as stored (lead_upsert read it), unless the
        # anonymous id's history just moved its touches.
        lead_touch_update(touches={lead.pk: [touch]}, locked=None if anonymous_id else {lead.pk: lead})
    capture.note_event(event.pk)  # on commit: the capture task, which announces the event
    return FormSubmission(lead_id=lead.pk, created=created, event_id=event.pk)
