"""Event capture: validate, deduplicate, resolve identity and store a batch.

``events_ingest`` is the one write path for inbound events (the batch API
calls it; forms use ``lead_touch_update`` from here). It is set-based: a
500-item batch costs a fixed number of queries (existing ids, identities,
leads by email, campaigns, one INSERT, one locked read and one UPDATE of the
touched leads; the event catalog and the UTM tables come from the process's
``configcache``) plus a few per item that makes something new (a lead for a
new email, a new identity link). Those per-item writes each run in a
savepoint, so a failure rejects that item only.

Idempotency: ``Event.client_event_id`` is unique (on PostgreSQL through the
``martech_event_key`` table the events' trigger keeps). Events are inserted
skipping a stored id (ON CONFLICT DO NOTHING; PostgreSQL: the trigger) and
tagged with this call's ``ingest_batch`` uuid; the rows the INSERT returns (elsewhere than PostgreSQL: the rows read back under
that uuid) are the ones this call inserted, everything else lost to an
earlier or concurrent sender of the same id ("duplicate").
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from martech import configcache, hooks
from martech import fields as declared
from martech.db import is_conflict, run_in_transaction, update_rows
from martech.models import Campaign, Event, EventType, Identity, Lead, QuarantinedEvent
from martech.selectors import NOT_APPLIED
from martech.services import capture
from martech.services.campaigns import UTM_FIELDS, UtmNormalizer, campaigns_by_utm
from martech.services.leads import ERASED_MESSAGE, clean_lead_data, erased_keys, identity_link, lead_upsert
from martech.services.normalize import find_unstorable, normalize_email

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
QUARANTINED = "quarantined"

# Segment call type -> (Event.kind, fixed event type name or None for "event").
_TYPES = {
    "track": (Event.Kind.TRACK, None),
    "page": (Event.Kind.PAGE, "page_view"),
    "identify": (Event.Kind.IDENTIFY, "identify"),
}
# Where an item may carry the person's email, in the order they are read.
_EMAIL_PATHS = (("traits", "email"), ("context", "traits", "email"), ("properties", "email"))
# Segment identify traits that set lead fields (through lead_upsert).
_TRAIT_FIELDS = {
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "title": "job_title",
    "phone": "phone",
    "company": "company_name",
}
_UTM_KEYS = {"source": "source", "medium": "medium", "name": "campaign", "campaign": "campaign", "term": "term", "content": "content"}
_ID_MAX = 255
TOUCH_UTM_FIELDS = tuple(f"utm_{f}" for f in UTM_FIELDS)
# The lead fields events write: first and latest touch, original source.
TOUCH_FIELDS = declared.names(declared.LEAD_FIELDS, set_by="touch")


class _Reject(Exception):
    def __init__(self, field: str, reason: str, *, catalog: bool = False):
        super().__init__(reason)
        self.field = field
        self.reason = reason
        # Catalog failures (unknown type, properties schema) may be quarantined;
        # malformed items (no id, bad timestamp) are always rejected.
        self.catalog = catalog


@dataclass
class ItemResult:
    index: int
    message_id: str | None
    status: str
    field: str | None = None
    reason: str | None = None
    event_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "messageId": self.message_id, "status": self.status}
        if self.field is not None or self.reason is not None:
            out["field"] = self.field
            out["reason"] = self.reason
        return out


@dataclass
class IngestResult:
    results: list[ItemResult]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def event_ids(self) -> list[int]:
        return [r.event_id for r in self.results if r.event_id is not None]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results": [r.as_dict() for r in self.results]}
        for status in (ACCEPTED, DUPLICATE, REJECTED):
            out[status] = self.count(status)
        quarantined = self.count(QUARANTINED)
        if quarantined:
            out[QUARANTINED] = quarantined
        return out


@dataclass
class Touch:
    """One marketing touch of a lead: when, its normalized UTM and channel."""

    at: datetime
    utm: dict[str, str]
    channel: str


@dataclass
class _Item:
    index: int
    raw: Any
    message_id: str | None = None
    kind: str = ""
    type_name: str = ""
    event_type: EventType | None = None
    anonymous_id: str = ""
    user_id: str = ""
    email: str | None = None
    email_field: str = ""
    lead_data: dict[str, Any] = field(default_factory=dict)  # identify traits -> lead fields
    trait_keys: dict[str, str] = field(default_factory=dict)  # lead field -> trait name
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    received_at: datetime | None = None
    utm_raw: dict[str, str] = field(default_factory=dict)
    utm: dict[str, str] = field(default_factory=dict)  # normalized
    touch: Touch | None = None
    lead_id: int | None = None
    campaign_id: int | None = None
    result: ItemResult | None = None
    # Set when parsing or the catalog refused the item, before any query.
    refused: bool = False
    quarantine: _Reject | None = None


# --- Parsing and validation (no queries) --------------------------------------


def _str_id(value: Any, name: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise _Reject(name, "This field is required.")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Reject(name, "Must be a string.")
    value = str(value).strip()
    if required and not value:
        raise _Reject(name, "This field is required.")
    if len(value) > _ID_MAX:
        raise _Reject(name, f"At most {_ID_MAX} characters.")
    return value


def _datetime(value: Any, name: str, *, required: bool) -> datetime | None:
    if value is None or value == "":
        if required:
            raise _Reject(name, "This field is required.")
        return None
    if not isinstance(value, str):
        raise _Reject(name, "Must be an ISO 8601 date-time string.")
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise _Reject(name, f"Not an ISO 8601 date-time: {value[:64]!r}.")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _Reject(name, "Give a UTC offset (e.g. 'Z' or '+02:00'); naive times are ambiguous.")
    return parsed


def _object(item: dict, name: str) -> dict:
    value = item.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Reject(name, "Must be an object.")
    return value


def _utm_from_url(url: Any) -> dict[str, str]:
    if not isinstance(url, str) or "utm_" not in url:
        return {}
    query = parse_qs(urlsplit(url).query)
    return {f: query[f"utm_{f}"][0] for f in UTM_FIELDS if query.get(f"utm_{f}")}


def _parse(index: int, raw: Any, *, batch_context: dict) -> _Item:
    """Structural checks and extraction. Raises _Reject naming the field."""
    item = _Item(index=index, raw=raw)
    if not isinstance(raw, dict):
        raise _Reject("", "Each item must be an object.")
    bad_text = find_unstorable(raw)
    if bad_text:
        raise _Reject(*bad_text)
    item.message_id = _str_id(raw.get("messageId"), "messageId", required=True)
    call = raw.get("type")
    if call not in _TYPES:
        raise _Reject("type", f"Must be one of {', '.join(sorted(_TYPES))}." if call else "This field is required.")
    item.kind, fixed_name = _TYPES[call]
    _datetime(raw.get("sentAt"), "sentAt", required=False)
    item.received_at = _datetime(raw.get("receivedAt"), "receivedAt", required=False)
    # Optional, as in Segment's spec: without it the event happened when received.
    item.occurred_at = _datetime(raw.get("timestamp"), "timestamp", required=False) or item.received_at or timezone.now()

    properties = dict(_object(raw, "properties"))
    traits = _object(raw, "traits")
    context = _object(raw, "context")
    if batch_context:
        context = {**batch_context, **context}
    item.context = context
    if fixed_name is None:
        name = raw.get("event")
        if not isinstance(name, str) or not name.strip():
            raise _Reject("event", "This field is required for a track call." if not name else "Must be a string.")
        item.type_name = name.strip()
    else:
        item.type_name = fixed_name
    if call == "page" and isinstance(raw.get("name"), str) and raw["name"]:
        # Segment sends the page's name beside its properties; keep it with them.
        properties.setdefault("name", raw["name"])
    item.properties = properties

    item.anonymous_id = _str_id(raw.get("anonymousId"), "anonymousId")
    item.user_id = _str_id(raw.get("userId"), "userId")
    for path in _EMAIL_PATHS:
        node: Any = {"traits": traits, "context": context, "properties": properties}
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node not in (None, ""):
            name = ".".join(path)
            try:
                item.email = normalize_email(node) if isinstance(node, str) else None
            except ValidationError:
                item.email = None
            if item.email is None:
                raise _Reject(name, "Not a valid email address.")
            item.email_field = name
            break
    if not (item.anonymous_id or item.user_id or item.email):
        raise _Reject("anonymousId", "Give an anonymousId, a userId or an email.")

    if call == "identify":
        data = {}
        for trait, lead_field in _TRAIT_FIELDS.items():
            value = traits.get(trait)
            if trait == "company" and isinstance(value, dict):
                value = value.get("name")
            if value not in (None, "") and lead_field not in data:
                data[lead_field] = value
                item.trait_keys[lead_field] = f"traits.{trait}"
        if data:
            try:
                cleaned = clean_lead_data(data)
            except ValidationError as exc:
                bad = next(iter(exc.message_dict.items()))
                raise _Reject(item.trait_keys.get(bad[0], f"traits.{bad[0]}"), bad[1][0]) from None
            if item.email is None and not item.user_id:
                # Traits of nobody in particular have no lead to land on; they
                # stay on the event. With a userId they update its lead.
                cleaned = {}
            item.lead_data = cleaned

    campaign = context.get("campaign")
    utm: dict[str, str] = {}
    if isinstance(campaign, dict):
        for key, f in _UTM_KEYS.items():
            value = campaign.get(key)
            if value not in (None, "") and f not in utm:
                utm[f] = str(value)
    page = context.get("page")
    for url in ((page.get("url") if isinstance(page, dict) else None), properties.get("url") if call == "page" else None):
        for f, value in _utm_from_url(url).items():
            utm.setdefault(f, value)
    item.utm_raw = utm
    return item


# The event catalog with its compiled properties validators, per process
# (martech.configcache): every batch reads it, and it changes only when an
# event type is saved or deleted (MartechConfig.ready watches EventType).
CATALOG_KEY = "martech.event_catalog"


def _load_catalog() -> tuple[dict[str, EventType], dict[int, Draft202012Validator]]:
    types = {et.name: et for et in EventType.objects.all()}
    validators = {
        et.pk: Draft202012Validator(et.properties_schema)
        for et in types.values()
        if et.properties_schema and et.properties_schema != {"type": "object"}
    }
    return types, validators


class _Catalog:
    """Event types with their compiled properties validators (read-only,
    shared by the process)."""

    def __init__(self):
        self.types, self._validators = configcache.cached(CATALOG_KEY, _load_catalog)

    def check(self, item: _Item) -> None:
        et = self.types.get(item.type_name)
        if et is None or not et.is_active:
            state = "inactive" if et is not None else "unknown"
            raise _Reject("event", f"The event type {item.type_name!r} is {state}; add it to the event catalog.", catalog=True)
        item.event_type = et
        validator = self._validators.get(et.pk)
        if validator is None:
            return  # the common case: nothing to check beyond "an object"
        error = best_match(validator.iter_errors(item.properties))
        if error is None:
            return
        path = "".join(f".{p}" for p in error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [p for p in error.validator_value if p not in error.instance]
            if missing:
                path += f".{missing[0]}"
        raise _Reject(f"properties{path}", error.message, catalog=True)


# --- Touches ------------------------------------------------------------------


def lead_touch_update(*, touches: dict[int, list[Touch]], locked: Mapping[int, Lead] | None = None) -> int:
    """Fold touches into the leads' first/latest touch fields: first touch
    only when the lead has none or an earlier one arrives (then
    ``original_source`` is its channel), latest touch only when later.

    The leads are read with FOR UPDATE in id order (one query) and written
    with one bulk UPDATE, so concurrent batches cannot both win "first" and
    never lock the same leads in opposite orders. Returns the leads changed.
    Call inside a transaction. ``locked``: the caller's transaction already
    holds these leads' row locks and their touch fields as stored (a form's
    lead, just upserted): they are not read again.
    """
    if not touches:
        return 0
    changed: list[Lead] = []
    now = timezone.now()
    if locked is not None and all(pk in locked for pk in touches):
        leads = [locked[pk] for pk in sorted(touches)]
    else:
        leads = Lead.objects.select_for_update().filter(pk__in=touches).order_by("pk").only("pk", *TOUCH_FIELDS)
    for lead in leads:
        if touch_fold(lead, touches[lead.pk]):
            lead.updated_at = now
            changed.append(lead)
    if changed:
        _write_touch_fields(changed)
        hooks.leads_changed(ids=[lead.pk for lead in changed], fields=TOUCH_FIELDS, source="events")
    return len(changed)


def touch_fold(lead: Lead, touches: list[Touch]) -> bool:
    """Fold touches into ``lead``'s first/latest touch fields in memory (the
    rules of ``lead_touch_update``); True when a field changed. A new lead's
    first touch is folded in before its INSERT (``lead_upsert(touch=)``)."""
    first = min(touches, key=lambda t: t.at)
    last = max(touches, key=lambda t: t.at)
    dirty = False
    if lead.first_touch_at is None or first.at < lead.first_touch_at:
        lead.first_touch_at = first.at
        for f in UTM_FIELDS:
            setattr(lead, f"first_utm_{f}", first.utm.get(f, ""))
        lead.original_source = first.channel
        dirty = True
    if lead.latest_touch_at is None or last.at > lead.latest_touch_at:
        lead.latest_touch_at = last.at
        for f in UTM_FIELDS:
            setattr(lead, f"latest_utm_{f}", last.utm.get(f, ""))
        dirty = True
    return dirty


def _write_touch_fields(leads: list[Lead]) -> None:
    # Not bulk_update: one CASE WHEN per field over all ids, which the server
    # evaluates for every row (quadratic, ~0.3 s for a few hundred leads).
    update_rows(Lead, leads, [*TOUCH_FIELDS, "updated_at"])


class UtmResolver:
    """Normalizer, channel and campaign lookups of one batch, cached."""

    def __init__(self):
        self.normalizer = UtmNormalizer.cached()
        self._channels: dict[tuple[str, str], str] = {}
        self.campaigns: dict[tuple[str, str, str], Campaign] = {}

    def normalize(self, raw: dict[str, str]) -> dict[str, str]:
        return self.normalizer.normalize_all(raw) if raw else dict.fromkeys(UTM_FIELDS, "")

    def channel(self, utm: dict[str, str]) -> str:
        key = (utm["source"], utm["medium"])
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = self.normalizer.channel(*key)
        return channel

    def load_campaigns(self, utms: Iterable[dict[str, str]]) -> None:
        self.campaigns = campaigns_by_utm({(u["source"], u["medium"], u["campaign"]) for u in utms if u["campaign"]})


# --- The batch ----------------------------------------------------------------


def events_ingest(
    *,
    items: list[Any],
    source: str,
    actor=None,
    batch_context: dict | None = None,
    policy: str | None = None,
    public: bool = False,
) -> IngestResult:
    """Validate and store a batch of Segment-shaped items (track, page,
    identify). Every item is answered, in order: accepted, duplicate (its
    messageId is already stored, or repeats an earlier item of the batch),
    rejected (with the field and reason; it wrote nothing) or quarantined
    (``policy`` / MARTECH["UNKNOWN_EVENT_POLICY"] is "quarantine" and the
    event catalog refused it). Accepted items are kept when others fail.
    What the stored events cause (scoring, routing, lifecycle, journeys,
    ``events_ingested``) runs in one capture task enqueued when the batch
    commits (``martech.services.capture``). The caller checks permissions.

    ``public`` marks anonymous input (the website tracker): identify traits
    and emails reach leads through ``lead_upsert(public=True)`` (found by
    email only, empty fields filled, nothing overwritten), and what could not
    be applied is kept on the item's event under ``not_applied``.
    """
    # One read of the configuration tokens for the whole batch (the catalog,
    # UTM tables, erasure tombstones); a caller's snapshot (the tracker's) holds.
    with configcache.snapshot():
        return _ingest(items=items, source=source, actor=actor, batch_context=batch_context, policy=policy,
                       public=public)


def _ingest(*, items: list[Any], source: str, actor, batch_context: dict | None, policy: str | None,
            public: bool) -> IngestResult:
    policy = policy or settings.MARTECH["UNKNOWN_EVENT_POLICY"]
    parsed: list[_Item] = []
    for index, raw in enumerate(items):
        try:
            parsed.append(_parse(index, raw, batch_context=batch_context or {}))
        except _Reject as exc:
            mid = raw.get("messageId") if isinstance(raw, dict) else None
            item = _Item(index=index, raw=raw, message_id=str(mid) if isinstance(mid, (str, int)) else None)
            item.result = ItemResult(index, item.message_id, REJECTED, exc.field, exc.reason)
            item.refused = True
            parsed.append(item)

    live = [i for i in parsed if i.result is None]
    if live:
        catalog = _Catalog()
        for item in live:
            try:
                catalog.check(item)
            except _Reject as exc:
                if policy == "quarantine":
                    item.quarantine = exc
                else:
                    item.result = ItemResult(item.index, item.message_id, REJECTED, exc.field, exc.reason)
                    item.refused = True

    # A deadlock between two batches that create the same leads in a
    # different order is resolved by PostgreSQL aborting one; the batch is
    # one transaction, so running it again is safe (martech.db).
    def reset() -> None:
        for item in parsed:
            if not item.refused:
                item.result, item.lead_id, item.touch = None, None, None

    def attempt() -> IngestResult:
        # What the batch causes (scoring, routing, lifecycle, journeys) runs
        # in one task when this transaction commits (martech.services.capture):
        # the request stores, dedupes, identifies and answers.
        with capture.deferred(source=source, reason="event"):
            return _store(parsed, source=source, actor=actor, public=public)

    return run_in_transaction(attempt, on_retry=reset)


def _store(parsed: list[_Item], *, source: str, actor, public: bool = False) -> IngestResult:
    # Rejected items are fixed before this point; an item that fails in here is
    # marked with a result and the rest go on.
    pending = [i for i in parsed if i.result is None]
    ids = {i.message_id for i in pending}
    # A stored id must not reach lead writes or the quarantine. Items that can
    # write nothing but their event (an anonymous id only: the tracker's page
    # views) skip the look-up: the insert skips a stored id, and says so.
    may_write = any(i.email or i.user_id or i.quarantine for i in pending)
    existing = (set(Event.objects.filter(client_event_id__in=ids).values_list("client_event_id", flat=True))
                if ids and may_write else set())
    claimed: set[str] = set()
    candidates: list[_Item] = []
    quarantined: list[_Item] = []
    erased = _erased_items(pending)
    for item in pending:
        if item.message_id in existing or item.message_id in claimed:
            item.result = ItemResult(item.index, item.message_id, DUPLICATE)
            continue
        if item.index in erased:
            # An erased person's input is not kept anywhere (not even in the
            # quarantine). Public senders (the tracker) hear "accepted", as for
            # anyone: the answer must not tell whom we erased.
            fld = erased[item.index]
            item.result = (ItemResult(item.index, item.message_id, ACCEPTED) if public else
                           ItemResult(item.index, item.message_id, REJECTED, fld, ERASED_MESSAGE))
            continue
        claimed.add(item.message_id)
        (quarantined if item.quarantine else candidates).append(item)

    if quarantined:
        _quarantine(quarantined, source=source)

    if candidates:
        _resolve_leads(candidates, source=source, actor=actor, public=public)
        _insert_events(candidates)

    result = IngestResult(results=[i.result for i in parsed])
    stored = [i for i in candidates if i.lead_id and i.result is not None and i.result.event_id is not None]
    # Events of leads (and the leads the batch wrote, noted by the write
    # paths) go to the capture task; anonymous page views make no task.
    capture.note_events([i.result.event_id for i in stored], [i.lead_id for i in stored])
    capture.enqueue_on_commit()
    return result


def _erased_items(items: list[_Item]) -> dict[int, str]:
    """Item index -> the field that names an erased person (email,
    anonymousId, userId): one tombstone look-up for the whole batch."""
    keys = {}
    for item in items:
        for kind, value, fld in (("email", item.email, item.email_field or "email"),
                                 ("anonymous", item.anonymous_id, "anonymousId"), ("user", item.user_id, "userId")):
            if value:
                keys.setdefault((kind, value), []).append((item.index, fld))
    out: dict[int, str] = {}
    for key in erased_keys(list(keys)):
        for index, fld in keys[key]:
            out.setdefault(index, fld)
    return out


def _quarantine(items: list[_Item], *, source: str) -> None:
    # A sender that retries a refused event should not pile up copies.
    waiting = set(
        QuarantinedEvent.objects.filter(
            client_event_id__in=[i.message_id for i in items], status=QuarantinedEvent.Status.PENDING
        ).values_list("client_event_id", flat=True)
    )
    rows = []
    for item in items:
        reason = item.quarantine
        item.result = ItemResult(item.index, item.message_id, QUARANTINED, reason.field, reason.reason)
        if item.message_id not in waiting:
            waiting.add(item.message_id)
            rows.append(
                QuarantinedEvent(
                    client_event_id=item.message_id,
                    payload=item.raw,
                    field=reason.field,
                    reason=reason.reason,
                    source=source[:100],
                )
            )
    QuarantinedEvent.objects.bulk_create(rows)


def _resolve_leads(items: list[_Item], *, source: str, actor, public: bool = False) -> None:
    """Set ``lead_id`` on each item: by email, else userId, else anonymousId.
    New emails go through lead_upsert (the one dedupe path) and new ids are
    linked with identity_link, each item in its own savepoint."""
    anon = {i.anonymous_id for i in items if i.anonymous_id}
    users = {i.user_id for i in items if i.user_id}
    identities: dict[tuple[str, str], int] = {}
    if anon or users:
        rows = Identity.objects.filter(
            Q(kind=Identity.Kind.ANONYMOUS, value__in=anon) | Q(kind=Identity.Kind.USER, value__in=users)
        ).values_list("kind", "value", "lead_id")
        identities = {(k, v): lead_id for k, v, lead_id in rows}
    emails = {i.email for i in items if i.email}
    trait_fields = sorted({k for i in items for k in i.lead_data if k != "email"})
    leads: dict[str, dict[str, Any]] = {}
    if emails:
        leads = {row["email"]: row for row in Lead.objects.filter(email__in=emails).values("id", "email", *trait_fields)}

    def needs_upsert(item: _Item) -> bool:
        row = leads.get(item.email)
        if row is None:
            return True
        # Traits that would change the lead; identical ones cost no write.
        return any(k != "email" and v not in ("", None) and str(row.get(k) or "") != str(v) for k, v in item.lead_data.items())

    def needs_link(item: _Item, lead_id: int | None) -> bool:
        return bool(lead_id) and (
            (item.anonymous_id and (Identity.Kind.ANONYMOUS, item.anonymous_id) not in identities)
            or (item.user_id and (Identity.Kind.USER, item.user_id) not in identities)
        )

    def current_lead(item: _Item) -> int | None:
        if item.email and item.email in leads:
            return leads[item.email]["id"]
        return identities.get((Identity.Kind.USER, item.user_id)) or identities.get(
            (Identity.Kind.ANONYMOUS, item.anonymous_id)
        )

    # Writers go in email order so two batches creating the same leads take
    # the unique-index locks in the same order.
    writers = [i for i in items if (i.email and needs_upsert(i)) or needs_link(i, current_lead(i))]
    writers.sort(key=lambda i: (i.email or "", i.index))
    for item in writers:
        try:
            # A savepoint that also forgets the leads and moves it noted for the capture task.
            with capture.atomic():
                lead_id = current_lead(item)
                if item.email and needs_upsert(item):
                    unapplied: dict[str, Any] = {}
                    lead, _ = lead_upsert(
                        data={**item.lead_data, "email": item.email}, source=source, actor=actor,
                        public=public, unapplied=unapplied if public else None,
                    )
                    if unapplied:
                        # Kept as evidence on the event, never applied (public input).
                        item.properties = {**item.properties, NOT_APPLIED: unapplied}
                    lead_id = lead.pk
                    row = {"id": lead.pk, "email": lead.email}
                    row.update({k: getattr(lead, k) for k in trait_fields})
                else:
                    row = None
                new_links = []
                if lead_id and item.anonymous_id and (Identity.Kind.ANONYMOUS, item.anonymous_id) not in identities:
                    ident = identity_link(lead=Lead(pk=lead_id), kind=Identity.Kind.ANONYMOUS, value=item.anonymous_id)
                    new_links.append((Identity.Kind.ANONYMOUS, item.anonymous_id, ident.lead_id))
                if lead_id and item.user_id and (Identity.Kind.USER, item.user_id) not in identities:
                    ident = identity_link(lead=Lead(pk=lead_id), kind=Identity.Kind.USER, value=item.user_id)
                    new_links.append((Identity.Kind.USER, item.user_id, ident.lead_id))
        except (ValidationError, DatabaseError) as exc:
            _write_failed(item, exc)
            continue
        # Only a committed savepoint updates what later items see.
        if row is not None:
            leads[item.email] = row
        for kind, value, linked in new_links:
            identities[(kind, value)] = linked

    # Traits of an identify that names the person by userId only update the
    # lead that id is linked to (perhaps by an earlier item of this batch),
    # through the same write path; an unknown userId keeps them on the event.
    for item in items:
        if item.result is not None or item.email or not (item.user_id and item.lead_data):
            continue
        lead_id = identities.get((Identity.Kind.USER, item.user_id))
        if lead_id is None:
            continue
        try:
            with capture.atomic():
                lead_upsert(data=item.lead_data, source=source, actor=actor, lead=Lead(pk=lead_id))
        except (ValidationError, DatabaseError) as exc:
            _write_failed(item, exc)

    # Resolved after all links, so an anonymous event earlier in the batch
    # lands on the lead its identify (later in the batch) revealed.
    for item in items:
        if item.result is None:
            item.lead_id = current_lead(item)


def _write_failed(item: _Item, exc: Exception) -> None:
    """Reject the item whose lead write failed, naming the field; a deadlock or
    serialization failure is raised instead (the whole batch is retried)."""
    if isinstance(exc, ValidationError):
        name, reasons = next(iter(exc.message_dict.items()))
        fld = item.email_field if name == "email" else item.trait_keys.get(name, f"traits.{name}")
        item.result = ItemResult(item.index, item.message_id, REJECTED, fld, reasons[0])
        return
    if is_conflict(exc):
        raise exc
    log.error("events_ingest: lead write failed for item %s", item.index, exc_info=exc)
    fld = item.email_field or ("userId" if item.user_id else "anonymousId")
    item.result = ItemResult(item.index, item.message_id, REJECTED, fld, "Could not be stored; send it again.")


def _insert_events(items: list[_Item]) -> None:
    items = [i for i in items if i.result is None]
    if not items:
        return
    utm = UtmResolver()
    for item in items:
        item.utm = utm.normalize(item.utm_raw)
    utm.load_campaigns(i.utm for i in items if i.utm_raw)
    batch = uuid.uuid4()
    now = timezone.now()
    rows: list[dict[str, Any]] = []
    for item in items:
        u = item.utm
        touch = item.event_type.is_touchpoint or bool(item.utm_raw)
        channel = utm.channel(u) if touch else ""
        campaign = utm.campaigns.get((u["source"], u["medium"], u["campaign"])) if u["campaign"] else None
        item.touch = Touch(item.occurred_at, u, channel) if touch else None
        item.campaign_id = campaign.pk if campaign else None
        rows.append(
            {
                "client_event_id": item.message_id,
                "kind": item.kind,
                "event_type_id": item.event_type.pk,
                "lead_id": item.lead_id,
                "anonymous_id": item.anonymous_id,
                "properties": item.properties,
                "context": item.context,
                "occurred_at": item.occurred_at,
                "received_at": item.received_at or now,
                "utm_source": u["source"],
                "utm_medium": u["medium"],
                "utm_campaign": u["campaign"],
                "utm_term": u["term"],
                "utm_content": u["content"],
                "channel": channel,
                "campaign_id": item.campaign_id,
                "ingest_batch": batch,
            }
        )
    # ON CONFLICT DO NOTHING skipped the ids stored meanwhile; the rows it
    # returns (or, read back, the rows under this call's uuid) are exactly
    # the ones this call inserted.
    inserted = _insert_rows(rows)
    if inserted is None:
        inserted = dict(Event.objects.filter(ingest_batch=batch).values_list("client_event_id", "id"))
    touches: dict[int, list[Touch]] = {}
    for item in items:
        event_id = inserted.get(item.message_id)
        if event_id is None:
            # A concurrent call stored this id between our check and insert.
            item.result = ItemResult(item.index, item.message_id, DUPLICATE)
            continue
        item.result = ItemResult(item.index, item.message_id, ACCEPTED, event_id=event_id)
        if item.lead_id and item.touch is not None:
            touches.setdefault(item.lead_id, []).append(item.touch)
    lead_touch_update(touches=touches)


_EVENT_FIELDS = [f for f in Event._meta.concrete_fields if not f.primary_key]


def _insert_rows(rows: list[dict[str, Any]]) -> dict[str, int] | None:
    """INSERT the rows, skipping client_event_ids that exist (elsewhere: ON
    CONFLICT DO NOTHING; PostgreSQL, whose events table is partitioned: the
    events' key trigger skips a row tagged with an ingest batch whose id a
    live event holds, see martech/migrations/0014_events_partitioned.py); the
    inserted rows' ids by client_event_id (RETURNING), or None
    where the backend does not say (the caller reads them back). PostgreSQL: one statement with one array parameter per column
    (INSERT ... SELECT FROM unnest(...)), bound server-side; Django's
    bulk_create would quote ~10,000 values into the SQL text client-side,
    which costs more than the insert itself. The arrays go in binary format
    (``%b``): the text format escapes every element with a regular
    expression, a third of a small batch's insert. Elsewhere: bulk_create."""
    if connection.vendor != "postgresql":
        Event.objects.bulk_create([Event(**row) for row in rows], ignore_conflicts=True)
        return None
    import psycopg

    qn = connection.ops.quote_name
    columns, arrays = [], []
    for f in _EVENT_FIELDS:
        db_type = f.db_type(connection)
        # Arrays of text, not varchar(n): a cast to varchar(n) would silently
        # truncate, the assignment to the column refuses an overlong value.
        element = "text" if db_type.startswith("varchar") else db_type
        columns.append((qn(f.column), element))
        arrays.append([f.get_db_prep_save(row[f.attname], connection) for row in rows])
    sql = (
        f"INSERT INTO {qn(Event._meta.db_table)} ({', '.join(c for c, _ in columns)}) "
        f"SELECT * FROM unnest({', '.join(f'%b::{t}[]' for _, t in columns)}) "
        f"RETURNING {qn('client_event_id')}, {qn('id')}"
    )
    connection.ensure_connection()
    # A server-side-binding cursor on Django's connection, wrapped as Django
    # wraps its own so query logging (and the tests' query counts),
    # execute_wrapper and the current transaction all apply.
    raw = psycopg.Cursor(connection.connection)
    wrapped = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with wrapped as cursor:
        cursor.execute(sql, arrays)
        return dict(cursor.fetchall())


# --- Quarantine -----------------------------------------------------------------


def quarantine_replay(*, item: QuarantinedEvent, actor=None) -> str:
    """Run a quarantined item through ingest again (after the catalog was
    fixed). Accepted or duplicate: the item is marked replayed. Still bad:
    it stays pending with the new field and reason. Returns the status."""
    if item.status != QuarantinedEvent.Status.PENDING:
        raise ValidationError({"status": [f"Only pending items can be replayed (this one is {item.status})."]})
    source = f"replay:{item.source}"[:100] if item.source else "replay"
    with transaction.atomic():
        locked = QuarantinedEvent.objects.select_for_update().get(pk=item.pk)
        if locked.status != QuarantinedEvent.Status.PENDING:
            raise ValidationError({"status": [f"Only pending items can be replayed (this one is {locked.status})."]})
        outcome = events_ingest(items=[locked.payload], source=source, actor=actor, policy="reject").results[0]
        if outcome.status in (ACCEPTED, DUPLICATE):
            locked.status = QuarantinedEvent.Status.REPLAYED
            locked.save(update_fields=["status"])
        else:
            locked.field = outcome.field or ""
            locked.reason = outcome.reason or ""
            locked.save(update_fields=["field", "reason"])
    item.status, item.field, item.reason = locked.status, locked.field, locked.reason
    log.info("quarantine_replay %s by %s: %s", item.pk, actor, outcome.status)
    return outcome.status
