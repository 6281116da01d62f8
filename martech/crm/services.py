"""Sync services: build payloads, drain the outbox, pull changes, owners,
webhooks. Commands, tasks and the admin all call these."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from martech import hooks
from martech.crm import objects, outbox
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import (
    AuthError,
    Connector,
    PartialPush,
    PermanentError,
    PushRecord,
    RateLimited,
    TransientError,
)
from martech.crm.models import (
    Connection,
    CrmOwner,
    FieldMapping,
    LifecycleMapping,
    OutboxItem,
    PullFailure,
    PushState,
    SyncCursor,
    SyncRun,
    WebhookReceipt,
)
from martech.crm.transforms import TransformError, read_local, to_local, to_remote
from martech.db import run_in_transaction
from martech.models import Lead

log = logging.getLogger(__name__)


def lease() -> dt.timedelta:
    """How long a drain (or a pull's retry of failures) holds what it claimed
    (MARTECH_CRM["OUTBOX_LEASE_SECONDS"]): what a crashed run left is due
    again after it. Longer than django-q2's task timeout, so a run still
    pushing is never overtaken by a second one taking the same records."""
    return dt.timedelta(seconds=settings.MARTECH_CRM["OUTBOX_LEASE_SECONDS"])


class PayloadError(ValueError):
    """A record that cannot be sent as it is (required field empty, no picklist value)."""


# --- payloads -----------------------------------------------------------------

class PayloadBuilder:
    """Turns local records of one object type into CRM properties for one
    connection, with the mappings, lifecycle values and owners loaded once."""

    def __init__(self, connection: Connection, obj: str | objects.ObjectType = "contact"):
        self.connection = connection
        self.obj = objects.get(obj) if isinstance(obj, str) else obj
        self.mappings = [m for m in connection.mappings.filter(object=self.obj.key).order_by("pk") if m.pushes]
        self.stage_values = {
            lm.stage.key: lm.remote_value
            for lm in LifecycleMapping.objects.filter(connection=connection, push_default=True).select_related("stage")
        } if any(m.local_field == "lifecycle_stage" for m in self.mappings) else {}
        self.owner_by_email = {
            o.email.lower(): o.remote_id for o in CrmOwner.objects.filter(connection=connection, is_active=True)
            if o.email
        } if any(m.local_field == "owner" for m in self.mappings) else {}
        self.lead_owner_ids: dict[int, str | None] | None = None  # prefetched: lead id -> owner id or None

    def prefetch(self, instances: list) -> None:
        """Ask the provider for the CRM owner ids of many leads at once
        (``crm_owner_ids``) instead of one ``crm_owner_id`` per payload."""
        if self.obj.key != "contact" or not any(m.local_field == "owner" for m in self.mappings):
            return
        ids = [i.pk for i in instances]
        found = hooks.call("crm_owner_ids", lead_ids=ids, provider=self.connection.provider)
        if found is not None:
            self.lead_owner_ids = {i: found.get(i) for i in ids}

    def owner_id(self, instance) -> str:
        """The CRM owner id for the record's owner: a provider first (routing
        knows each rep's CRM owner id), else the owner's email matched
        against the pulled CRM owners; "" when neither knows."""
        provider = self.connection.provider
        if self.obj.key == "contact" and self.lead_owner_ids is not None and instance.pk in self.lead_owner_ids:
            provided = self.lead_owner_ids[instance.pk]
        elif self.obj.key == "contact":
            provided = hooks.call("crm_owner_id", lead_id=instance.pk, provider=provider)
        else:
            provided = (hooks.call("crm_user_owner_id", user_id=instance.owner_id, provider=provider)
                        if getattr(instance, "owner_id", None) else None)
        if provided:
            return str(provided)
        owner = getattr(instance, "owner", None) if getattr(instance, "owner_id", None) else None
        return self.owner_by_email.get((getattr(owner, "email", "") or "").lower(), "")

    def payload(self, instance) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.mappings:
            if m.local_field == "owner":
                value = self.owner_id(instance)
            elif m.local_field == "lifecycle_stage" and self.stage_values:
                key = read_local(instance, "lifecycle_stage")
                value = self.stage_values.get(key, "") if key else ""
            else:
                reader = self.obj.readers.get(m.local_field)
                try:
                    raw = reader(instance) if reader else read_local(instance, m.local_field)
                    value = to_remote(m.kind, raw, m.value_map)
                except (TransformError, ArithmeticError, ValueError) as exc:
                    raise PayloadError(f"{m.local_field}: {exc}") from None
            if value == "" and m.default:
                value = m.default
            if value == "":
                if m.required:
                    raise PayloadError(f"{m.local_field} is required by the mapping to {m.remote_field} but is empty")
                continue  # empty is not sent: a blank here never clears the CRM
            out[m.remote_field] = value
        return out


def payload_hash(properties: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(properties, sort_keys=True).encode()).hexdigest()


def record_hash(properties: dict[str, Any], associations: dict[str, list[str]],
                link_details: dict[str, dict[str, dict]] | None = None) -> str:
    """What the drain compares with the last push: the properties, plus the
    associations and link fields when there are any (so a record without
    them keeps the hash it always had)."""
    if link_details:
        return payload_hash({"properties": properties, "associations": associations, "links": link_details})
    return payload_hash({"properties": properties, "associations": associations} if associations else properties)


def _link_raw(links: list[objects.Link], instance) -> dict[str, dict[int, dict[str, Any]]]:
    return {link.key: link.details(instance) for link in links}


def _link_resolve(links: list[objects.Link], raw: dict[str, dict[int, dict[str, Any]]],
                  remote: dict[tuple[str, int], str]) -> tuple[dict[str, dict[str, dict]], list[tuple[str, int]]]:
    """Link fields by the associated records' remote ids; the local ids with
    no remote id yet are returned apart (the record waits for them)."""
    out: dict[str, dict[str, dict]] = {}
    missing: list[tuple[str, int]] = []
    for link in links:
        resolved = {}
        for local_id, fields in (raw.get(link.key) or {}).items():
            remote_id = remote.get((link.other, local_id))
            if remote_id:
                resolved[remote_id] = fields
            else:
                missing.append((link.other, local_id))
        if resolved:
            out[link.key] = dict(sorted(resolved.items()))
    return out, missing


def _remote_ids(connection: Connection, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
    """(object key, local id) -> remote id, from what was pushed or pulled,
    else the local model's remote id column."""
    out: dict[tuple[str, int], str] = {}
    for key, ids in wanted.items():
        if not ids:
            continue
        for local_id, remote_id in PushState.objects.filter(
                connection=connection, object=key, local_id__in=ids).exclude(remote_id="").values_list(
                "local_id", "remote_id"):
            out[(key, local_id)] = remote_id
        other = objects.get(key)
        # Every id column, in remote_id_of's order (a Salesforce Contact id before a Lead id).
        for column in dict.fromkeys([*other.id_prefixes.get(connection.provider, {}).values(),
                                     other.id_field(connection.provider)]):
            missing = [i for i in ids if (key, i) not in out]
            if not missing:
                break
            for local_id, remote_id in other.model_class.objects.filter(pk__in=missing).exclude(
                    **{f"{column}__isnull": True}).exclude(**{column: ""}).values_list("pk", column):
                out[(key, local_id)] = remote_id
    return out


def payload_preview(*, connection: Connection, obj: str, instance, connector: Connector | None = None
                    ) -> dict[str, Any]:
    """The exact request body the drain would send for one record (admin
    action): the connector's own batch body for a batch of one, with
    associations resolved as the drain resolves them."""
    object_type = objects.get(obj)
    if object_type.push is not None:
        # Not a record upsert (a segment mirror): its admin page shows the changes not sent yet.
        return {"error": f"{object_type.label} is not sent as a record; its own admin page shows what is not "
                         "sent yet"}
    connector = connector or connector_for(connection)
    try:
        properties = PayloadBuilder(connection, object_type).payload(instance)
    except PayloadError as exc:
        return {"error": str(exc)}
    key = object_type.upsert_key(instance) or (str(instance.pk) if getattr(connector, "upserts_by_local_id", False)
                                                else "")
    if not key:
        return {"error": f"{object_type.key_field} is empty: it is the upsert key of {object_type.label}"}
    links = object_type.associations(instance) if object_type.associations else {}
    link_specs = objects.links_synced_by(connector, object_type)
    raw = _link_raw(link_specs, instance)
    wanted = {k: set(v) for k, v in links.items()}
    for link in link_specs:
        wanted.setdefault(link.other, set()).update(raw[link.key])
    remote = _remote_ids(connection, wanted | {object_type.key: {instance.pk}})
    state = PushState.objects.filter(connection=connection, object=object_type.key, local_id=instance.pk).first()
    remote_id = (object_type.remote_id_of(instance, connection.provider)
                 or remote.get((object_type.key, instance.pk), ""))
    record = PushRecord(instance.pk, key, properties,
                        associations={k: [remote[(k, i)] for i in v if (k, i) in remote] for k, v in links.items()},
                        remote_id=remote_id, linked_before=_linked_before(state, remote_id),
                        link_details=_link_resolve(link_specs, raw, remote)[0])
    try:
        return connector.request_body(object_type.key, [record])
    except (TransientError, PermanentError) as exc:
        return {"error": str(exc)}  # e.g. the portal lacks the id property (its steps are in the message)


def _linked_before(state: PushState | None, remote_id: str) -> dict[str, list[str]] | None:
    """The associations the last push linked: none for a record never sent,
    None (not known) for one the CRM has but whose links were not kept."""
    if state is not None and state.associations is not None:
        return state.associations
    return None if remote_id or state is not None else {}


def lead_payload_preview(*, connection: Connection, lead: Lead) -> dict[str, Any]:
    """The exact payload the drain would send for ``lead`` (admin action)."""
    return payload_preview(connection=connection, obj="contact", instance=lead)


# --- API allowance ------------------------------------------------------------

def _count_calls(connection: Connection, n: int, connector: Connector | None = None) -> None:
    """Count ``n`` calls against today's allowance, and take the CRM's own
    figure when the last answer carried it (``connector.allowance_seen()``):
    kept as ``crm_calls_*``; for a connector whose figure is the org's
    allowance itself (``allowance_from_crm``: Salesforce's Sforce-Limit-Info)
    it also replaces our count and limit, so other integrations' calls count."""
    now = timezone.now()
    today = now.date()
    if connection.api_calls_day != today:
        connection.api_calls_day, connection.api_calls_used = today, 0
    connection.api_calls_used += n
    fields = {"api_calls_day": today}
    seen = getattr(connector, "allowance_seen", None)
    figure = seen() if seen is not None else None
    if figure is not None and figure[1] > 0:
        used, limit = figure
        connection.crm_calls_used, connection.crm_calls_limit, connection.crm_calls_at = used, limit, now
        fields.update(crm_calls_used=used, crm_calls_limit=limit, crm_calls_at=now)
        if getattr(connector, "allowance_from_crm", False):
            connection.api_calls_used, connection.daily_api_limit = used, limit
            fields["daily_api_limit"] = limit
    fields["api_calls_used"] = connection.api_calls_used
    Connection.objects.filter(pk=connection.pk).update(**fields)


def _allowance(connection: Connection) -> tuple[int, int]:
    """(calls left today, the allowance they are left of): our count against
    ``daily_api_limit``, or the CRM's own figure when one read today leaves
    fewer (HubSpot's daily headers)."""
    now = timezone.now()
    left, limit = connection.daily_api_limit, connection.daily_api_limit
    if connection.api_calls_day == now.date():
        left = max(connection.daily_api_limit - connection.api_calls_used, 0)
    if connection.crm_calls_limit and connection.crm_calls_at and connection.crm_calls_at.date() == now.date():
        crm_left = max(connection.crm_calls_limit - (connection.crm_calls_used or 0), 0)
        if crm_left < left:
            left, limit = crm_left, connection.crm_calls_limit
    return left, limit


def budget_left(connection: Connection) -> int:
    """Calls left today (``_allowance``)."""
    return _allowance(connection)[0]


def _allowance_text(connection: Connection) -> str:
    """Today's use against the allowance, ours and the CRM's when read today ("250 of 250 calls")."""
    text = f"{connection.api_calls_used} of {connection.daily_api_limit} calls"
    if connection.crm_calls_limit and connection.crm_calls_at and \
            connection.crm_calls_at.date() == timezone.now().date() and \
            (connection.crm_calls_used, connection.crm_calls_limit) != (connection.api_calls_used,
                                                                        connection.daily_api_limit):
        text += f"; the CRM counts {connection.crm_calls_used} of {connection.crm_calls_limit}"
    return text


# --- pauses: rate, daily and org limits ---------------------------------------

# Salesforce's allowance is a rolling 24 h one with no reset time to read:
# a paused connection looks again (``allowance_refresh`` reads /limits at the
# start of the next scheduled drain) this long after.
SALESFORCE_RECHECK = dt.timedelta(hours=1)
# A limit answer that says nothing about its window: HubSpot's documented ten seconds.
DEFAULT_LIMIT_WAIT = 10.0


def pause_end(connection: Connection, exc: RateLimited, now: dt.datetime | None = None) -> dt.datetime:
    """When a limit answer's window resets. A daily limit: HubSpot resets at
    midnight in the portal's time zone, which the private-app API does not
    say, so midnight UTC (a pause of at most the zone's offset too long or
    too short; a call refused early pauses again); Salesforce's org
    allowance rolls over 24 h: look again after SALESFORCE_RECHECK. Any
    other: Retry-After, else the window the headers gave
    (X-HubSpot-RateLimit-Interval-Milliseconds), else ten seconds."""
    now = now or timezone.now()
    if exc.daily:
        if connection.provider == "salesforce":
            return now + SALESFORCE_RECHECK
        utc = now.astimezone(dt.timezone.utc)
        return dt.datetime.combine(utc.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    seconds = exc.retry_after if exc.retry_after is not None else exc.wait
    return now + dt.timedelta(seconds=seconds if seconds is not None else DEFAULT_LIMIT_WAIT)


def connection_pause(*, connection: Connection, until: dt.datetime, reason: str) -> dt.datetime:
    """Pause ``connection`` until ``until`` (a later pause already set is
    kept): drains and pulls record a "paused" run and do nothing until then.
    The reason is the connection's last error too. Returns the pause end."""
    if connection.paused_until and connection.paused_until > until:
        until = connection.paused_until
    now = timezone.now()
    connection.paused_until, connection.pause_reason = until, reason[:2000]
    connection.last_error, connection.last_error_at = f"Paused until {until.isoformat()}: {reason}"[:2000], now
    Connection.objects.filter(pk=connection.pk).update(
        paused_until=until, pause_reason=connection.pause_reason, last_error=connection.last_error,
        last_error_at=now)
    log.warning("CRM connection %s paused until %s: %s", connection.pk, until.isoformat(), reason)
    return until


def _pause_for(connection: Connection, exc: RateLimited) -> dt.datetime:
    """Pause for a limit answer (once per exception: the drain and the push
    of a batch both see it) and return the pause end."""
    until = getattr(exc, "pause_until", None)
    if until is None:
        until = connection_pause(connection=connection, until=pause_end(connection, exc), reason=str(exc))
        exc.pause_until = until
    return until


def paused_run(connection: Connection, kind: str, obj: str = "") -> SyncRun | None:
    """A paused connection's run: recorded as "paused until ..." and nothing
    else done. None when the connection is not paused (an expired pause is
    cleared here)."""
    now = timezone.now()
    if connection.paused_until is None:
        return None
    if connection.paused_until <= now:
        connection.paused_until, connection.pause_reason = None, ""
        Connection.objects.filter(pk=connection.pk, paused_until__lte=now).update(paused_until=None,
                                                                                  pause_reason="")
        return None
    return SyncRun.objects.create(
        connection=connection, kind=kind, object=obj, started_at=now, finished_at=now,
        paused_until=connection.paused_until,
        error=f"Paused until {connection.paused_until.isoformat()}: {connection.pause_reason}"[:4000])


def _crashed(connection: Connection, exc: Exception) -> str:
    """An unexpected exception in a run (a bug, an OSError): logged, and its
    text recorded on the connection and returned for the run's error, so the
    run shows as failed and the next connection's work goes on. A database
    conflict goes up instead, to the transaction boundary that retries it."""
    from martech.db import is_conflict

    if is_conflict(exc):
        raise exc
    log.error("CRM connection %s: run crashed", connection.pk, exc_info=exc)
    message = f"Crashed: {type(exc).__name__}: {exc}"[:2000]
    _record_error(connection, message)
    return message


def crash_record(*, connection: Connection, kind: str, exc: Exception, obj: str = "") -> SyncRun:
    """A run for a crash outside any run (the schedule's loop over
    connections): failed, with the error, also the connection's last error."""
    message = f"Crashed: {type(exc).__name__}: {exc}"[:2000]
    _record_error(connection, message)
    now = timezone.now()
    return SyncRun.objects.create(connection=connection, kind=kind, object=obj, error=message, started_at=now,
                                  finished_at=now)


def _record_call_error(connection: Connection, exc: Exception, prefix: str = "") -> None:
    """A call's failure on the connection: a limit pauses it, an AuthError
    stops it, anything else is its last error."""
    if isinstance(exc, RateLimited):
        _pause_for(connection, exc)
    else:
        _record_error(connection, f"{prefix}{exc}"[:2000], stop=isinstance(exc, AuthError))


def allowance_refresh(*, connection: Connection, connector: Connector) -> bool:
    """Take the daily allowance from the CRM's own count when the connector
    can read it (Salesforce ``/limits``: DailyApiRequests Max/Remaining):
    the connection's ``daily_api_limit`` becomes Max and today's use
    Max - Remaining, which also covers calls other integrations made
    against the same org. Returns False (stored figures kept, error
    recorded) when the CRM cannot say, whatever the failure (an OSError
    reading a certificate included: the drain goes on with the stored
    figures); an expired session raises AuthError like any call, and a
    limit answer (the org's allowance spent) raises RateLimited, which
    pauses the connection."""
    read = getattr(connector, "limits", None)
    if read is None:
        return False
    try:
        limits = read()
    except (AuthError, RateLimited):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the connection; the drain goes on
        if not isinstance(exc, (TransientError, PermanentError)):
            log.exception("reading the API allowance of CRM connection %s", connection.pk)
            exc = f"{type(exc).__name__}: {exc}"
        _record_error(connection, f"reading the API allowance: {exc}")
        return False
    if limits.get("max", 0) <= 0:
        return False
    now = timezone.now()
    connection.daily_api_limit = limits["max"]
    connection.api_calls_day = now.date()
    connection.api_calls_used = max(limits["max"] - limits.get("remaining", 0), 0)
    connection.crm_calls_used, connection.crm_calls_limit, connection.crm_calls_at = (
        connection.api_calls_used, connection.daily_api_limit, now)
    Connection.objects.filter(pk=connection.pk).update(
        daily_api_limit=connection.daily_api_limit, api_calls_day=connection.api_calls_day,
        api_calls_used=connection.api_calls_used, crm_calls_used=connection.crm_calls_used,
        crm_calls_limit=connection.crm_calls_limit, crm_calls_at=now)
    return True


def _record_error(connection: Connection, message: str, *, stop: bool = False) -> None:
    connection.last_error, connection.last_error_at = message[:2000], timezone.now()
    fields = {"last_error": connection.last_error, "last_error_at": connection.last_error_at}
    if stop:
        connection.stopped_reason = message[:2000]
        fields["stopped_reason"] = connection.stopped_reason
    Connection.objects.filter(pk=connection.pk).update(**fields)


# --- push ---------------------------------------------------------------------

def _claim(connection: Connection, limit: int, object_keys: list[str], started: dt.datetime | None = None
           ) -> list[OutboxItem]:
    """Take due pending items under a lease, so two drains never send the
    same record at once; an item whose drain died is due again after the
    lease. Each item keeps the ``version`` it was claimed at (``_finish``).

    ``started`` (the run's start): an item this run already claimed (tried
    and failed, or changed again while it was pushed) is left for a later
    run even when it is due again, so one run sends a record at most once: a
    short backoff cannot add calls to the run, and a record edited without
    pause cannot keep one run busy."""
    now = timezone.now()
    due = Q(next_attempt_at__lte=now)
    if started is not None:
        due &= Q(claimed_at__isnull=True) | Q(claimed_at__lt=started)
    with transaction.atomic():
        items = list(
            OutboxItem.objects.select_for_update(skip_locked=True)
            .filter(due, connection=connection, status=OutboxItem.Status.PENDING, object__in=object_keys)
            .order_by("next_attempt_at", "pk")[:limit]
        )
        if items:
            OutboxItem.objects.filter(pk__in=[i.pk for i in items]).update(next_attempt_at=now + lease(),
                                                                           claimed_at=now)
    for item in items:
        item.claimed_at = now
    return items


def _backoff(attempts: int) -> dt.timedelta:
    """The wait after failed attempt number ``attempts`` of a push (outbox
    item) or of a pulled record (PullFailure): BACKOFF_BASE minutes, doubled
    each time; MAX_ATTEMPTS makes either a dead letter."""
    return dt.timedelta(seconds=settings.MARTECH_CRM["BACKOFF_BASE"] * 60 * (2 ** (attempts - 1)))


def _fail(items: Iterable[OutboxItem], error: str, *, dead_now: bool = False) -> int:
    """Count a failed attempt of each item: due again after its backoff, or
    a dead letter after MAX_ATTEMPTS (``dead_now``: at once). An item changed
    since it was claimed (its version moved) is never made dead: the change
    may be the fix, so it is due again now."""
    max_attempts = settings.MARTECH_CRM["MAX_ATTEMPTS"]
    items = sorted(items, key=lambda i: i.pk)
    now = timezone.now()
    dead = 0

    def write() -> None:
        nonlocal dead
        dead = 0
        # The rows only (no record, no push state): nothing to order against.
        current = dict(OutboxItem.objects.select_for_update().filter(pk__in=[i.pk for i in items])
                       .order_by("pk").values_list("pk", "version"))
        # One UPDATE per outcome (a failed batch is one or two of them, not one per row).
        outcomes: dict[tuple, list[int]] = {}
        for item in items:
            attempts = item.attempts + 1
            status, next_at = OutboxItem.Status.PENDING, now + _backoff(attempts)
            if current.get(item.pk, item.version) != item.version:
                next_at = now
            elif dead_now or attempts >= max_attempts:
                status, next_at = OutboxItem.Status.DEAD, now
                dead += 1
            outcomes.setdefault((attempts, status, next_at), []).append(item.pk)
        for (attempts, status, next_at), pks in outcomes.items():
            OutboxItem.objects.filter(pk__in=pks).update(attempts=attempts, last_error=error[:4000], status=status,
                                                         next_attempt_at=next_at, updated_at=now)
        for item in items:
            item.attempts += 1

    run_in_transaction(write)
    return dead


def outbox_drain(*, connection: Connection, connector: Connector | None = None, max_items: int | None = None,
                 progress=None, batch: int | None = None, refresh_allowance: bool = False) -> SyncRun:
    """Push what is due for ``connection`` (every object type its connector
    declares); returns the recorded SyncRun.

    Unchanged payloads (same hash as the last push) are skipped without a
    call. A record the CRM refuses is failed alone; after MAX_ATTEMPTS it is
    a dead letter. Near the daily allowance (SLOWDOWN_AT) one batch per run
    is sent; at the allowance the connection pauses (HubSpot until midnight
    UTC, Salesforce for SALESFORCE_RECHECK). ``batch`` overrides DRAIN_BATCH
    (a Salesforce backfill claims more, so it goes through Bulk API 2.0).
    ``refresh_allowance`` first reads the allowance from the CRM
    (``allowance_refresh``; the scheduled task and ``crm_sync`` do, once per
    run).

    Limits pause, never kill: a rate, daily or org limit answer
    (RateLimited) pauses the connection until its window resets
    (``pause_end``), keeps what earlier calls of the batch wrote, and puts
    the claimed records not written back in the queue due at the pause end
    with no attempt charged. A paused connection's drain records a "paused
    until" run and does nothing else. Any other failure is the run's
    ``error`` and the connection's last error; an unexpected exception is
    logged and recorded, never raised (one connection's crash does not stop
    the next one's drain)."""
    conf = settings.MARTECH_CRM
    if connection.stopped_reason or not connection.is_active:
        return SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PUSH, object="",
                                      error=connection.stopped_reason or "connection inactive",
                                      finished_at=timezone.now())
    paused = paused_run(connection, SyncRun.Kind.PUSH)
    if paused is not None:
        return paused
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PUSH, object="")
    calls_before = connector.stats.api_calls if connector is not None else 0
    builders: dict[str, PayloadBuilder] = {}
    done = 0
    unsent: list[OutboxItem] = []  # claimed, in groups not pushed yet
    try:
        connector = connector or connector_for(connection)
        types = {o.key: o for o in objects.synced_by(connector)}
        if refresh_allowance:
            # The CRM's own count (other integrations spend the same allowance).
            allowance_refresh(connection=connection, connector=connector)
        while max_items is None or done < max_items:
            left, allowance = _allowance(connection)
            if left <= 0:
                raise RateLimited(f"Daily API allowance used ({_allowance_text(connection)})", policy="ALLOWANCE",
                                  daily=True)
            slow = left <= allowance * (1 - conf["SLOWDOWN_AT"])
            limit = 100 if slow else (batch or conf["DRAIN_BATCH"])
            if max_items is not None:
                limit = min(limit, max_items - done)
            items = _claim(connection, limit, list(types), started=run.started_at)
            if not items:
                break
            done += len(items)
            groups: dict[str, list[OutboxItem]] = {}
            for item in items:
                groups.setdefault(item.object, []).append(item)
            unsent = list(items)
            # Associated types first (companies and contacts before the deals that point at them).
            for key in sorted(groups, key=lambda k: (types[k].order, k)):
                if key not in builders:
                    builders[key] = PayloadBuilder(connection, types[key])
                group = {i.pk for i in groups[key]}
                unsent = [i for i in unsent if i.pk not in group]  # this group settles its own
                (types[key].push or _push_items)(connection, connector, builders[key], groups[key], run)
            unsent = []
            if progress is not None:
                progress.update(len(items))
            if slow:
                break
    except RateLimited as exc:
        until = _pause_for(connection, exc)
        _release(unsent, at=until)
        run.error = _run_error(run.error, f"{exc}; paused until {until.isoformat()}")
    except AuthError as exc:
        _release(unsent)
        run.error = _run_error(run.error, f"Stopped: {exc}")
        _record_error(connection, f"Stopped: {exc}", stop=True)
    except Exception as exc:  # noqa: BLE001 - recorded on the run and the connection, see the docstring
        run.error = _run_error(run.error, _crashed(connection, exc))
        # The claimed rows stay under their lease and are due again after it (no attempt charged).
    finally:
        run.api_calls = (connector.stats.api_calls - calls_before) if connector is not None else 0
        _count_calls(connection, 0, connector)
        run.finished_at = timezone.now()
        run.save()
    return run


def _tally(run: SyncRun, key: str, outcome: str, n: int = 1) -> None:
    """Count pushed or failed records of one object type on a push run (``SyncRun.by_object``)."""
    if n:
        row = run.by_object.setdefault(key, {"pushed": 0, "failed": 0})
        row[outcome] = row.get(outcome, 0) + n


def _run_error(current: str, message: str) -> str:
    """A run's error with one more failure (several calls can fail in one run)."""
    if len(current) >= 4000:
        return current
    return (f"{current}; {message}" if current else message)[:4000]


def _push_items(connection, connector, builder: PayloadBuilder, items: list[OutboxItem], run) -> None:
    obj = builder.obj
    # The local state sent is the one read now: PushState.pushed_at says so,
    # and an edit after it is newer than what the CRM gets.
    read_at = timezone.now()
    records = obj.model_class.objects.select_related(*obj.select_related).in_bulk([i.local_id for i in items])
    states = {s.local_id: s for s in PushState.objects.filter(connection=connection, object=obj.key,
                                                                 local_id__in=[i.local_id for i in items])}
    links = {i.local_id: obj.associations(records[i.local_id])
             for i in items if obj.associations and i.local_id in records}
    link_specs = objects.links_synced_by(connector, obj)
    raw_links = {i.local_id: _link_raw(link_specs, records[i.local_id])
                 for i in items if link_specs and i.local_id in records}
    wanted: dict[str, set[int]] = {}
    for per_record in links.values():
        for key, ids in per_record.items():
            wanted.setdefault(key, set()).update(i for i in ids if i)
    for per_record in raw_links.values():
        for link in link_specs:
            wanted.setdefault(link.other, set()).update(per_record[link.key])
    remote = _remote_ids(connection, wanted)
    to_send: list[tuple[OutboxItem, PushRecord, str]] = []
    finished: list[OutboxItem] = []
    for item in items:
        instance = records.get(item.local_id)
        key = obj.upsert_key(instance) if instance is not None else ""
        if not key and instance is not None and getattr(connector, "upserts_by_local_id", False):
            key = str(instance.pk)  # Salesforce upserts by our id (Martech_Id__c), no natural key needed
        if not key:
            # A deleted or merged-away record, or one with no upsert key: retrying cannot help.
            reason = "deleted" if instance is None else f"has no {obj.key_field} (the upsert key)"
            _fail([item], f"{obj.label} #{item.local_id} {reason}", dead_now=True)
            run.failed += 1
            _tally(run, obj.key, "failed")
            run.error = _run_error(run.error, f"{obj.label} #{item.local_id} {reason}")
            continue
        try:
            properties = builder.payload(instance)
        except PayloadError as exc:
            _fail([item], str(exc), dead_now=True)  # retrying cannot fix the data; a fix re-queues it
            run.failed += 1
            _tally(run, obj.key, "failed")
            run.error = _run_error(run.error, f"{obj.label} #{item.local_id}: {exc}")
            continue
        associations: dict[str, list[str]] = {}
        waiting: list[tuple[str, int]] = []
        for other, ids in sorted(links.get(item.local_id, {}).items()):
            resolved = [remote[(other, i)] for i in ids if i and (other, i) in remote]
            waiting += [(other, i) for i in ids if i and (other, i) not in remote]
            if resolved:
                associations[other] = sorted(resolved)
        link_details, link_waiting = _link_resolve(link_specs, raw_links.get(item.local_id, {}), remote)
        waiting += [w for w in link_waiting if w not in waiting]
        if waiting:
            # The record it points at has not reached the CRM yet: queue that
            # one and try this again later (counted, so it cannot wait forever).
            OutboxItem.objects.bulk_create([OutboxItem(connection=connection, object=other, local_id=local_id)
                                            for other, local_id in waiting], ignore_conflicts=True)
            names = ", ".join(f"{other} #{local_id}" for other, local_id in sorted(waiting))
            _fail([item], f"waiting for {names} to be pushed first")
            run.skipped += 1
            continue
        digest = record_hash(properties, associations, link_details)
        state = states.get(item.local_id)
        if state is not None and state.payload_hash == digest:
            finished.append(item)
            run.skipped += 1
            continue
        remote_id = obj.remote_id_of(instance, connection.provider) or (state.remote_id if state is not None else "")
        to_send.append((item, PushRecord(item.local_id, key, properties, associations=associations,
                                         remote_id=remote_id, linked_before=_linked_before(state, remote_id),
                                         link_details=link_details,
                                         link_synced=dict(state.links) if state is not None else {}), digest))
    _finish(connection, obj, finished)
    if not to_send:
        return
    before = connector.stats.api_calls
    if hasattr(connector, "on_remote_ids"):
        # Records the CRM creates are remembered at once, before a later call of the batch can fail.
        connector.on_remote_ids = lambda ids: _remember_remote_ids(connection, obj, ids)
    failure: Exception | None = None
    try:
        results = connector.push_batch(obj.key, [r for _, r, _ in to_send])
    except PartialPush as exc:
        # Earlier calls of the batch went through: what they wrote is recorded below.
        results, failure = exc.results, exc.error
    except (TransientError, PermanentError) as exc:
        results, failure = [], exc
    answered_at = timezone.now()  # the CRM has what it accepted from here on
    owner_fields = [m.remote_field for m in builder.mappings if m.local_field == "owner"]
    _count_calls(connection, connector.stats.api_calls - before, connector)
    by_id = {r.local_id: r for r in results}
    ok_items, new_states, remote_ids = [], [], {}
    refused: dict[str, list[OutboxItem]] = {}
    not_written: list[OutboxItem] = []
    for item, record, digest in to_send:
        result = by_id.get(item.local_id)
        if result is None and failure is not None:
            not_written.append(item)  # its call failed or was never made
            continue
        if result is None or result.error:
            refused.setdefault(result.error if result else "missing from the CRM's answer", []).append(item)
            run.failed += 1
            _tally(run, obj.key, "failed")
            continue
        ok_items.append(item)
        run.pushed += 1
        _tally(run, obj.key, "pushed")
        synced = {link.key: record.link_details.get(link.key, {}) for link in link_specs if link.removable}
        # The first push that carries an owner stamps owner_pushed_at; a
        # record whose earlier push already carried one (before this was
        # kept) stays unknown rather than taking this later time.
        before = states.get(item.local_id)
        owner_at = before.owner_pushed_at if before is not None else None
        owner_before = before is not None and any((before.pushed_properties or {}).get(f) for f in owner_fields)
        if owner_at is None and not owner_before and any(record.properties.get(f) for f in owner_fields):
            owner_at = answered_at
        new_states.append(PushState(connection=connection, object=obj.key, local_id=item.local_id,
                                    remote_id=result.remote_id, payload_hash=digest, pushed_at=read_at,
                                    pushed_properties=record.properties, associations=record.associations,
                                    links=synced, owner_pushed_at=owner_at))
        remote_ids[item.local_id] = result.remote_id
    _finish(connection, obj, ok_items, states=new_states, remote_ids=remote_ids, records=records)
    for error, failed in refused.items():
        _fail(failed, error)
        ids = ", ".join(f"#{i.local_id}" for i in failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        run.error = _run_error(run.error, f"{obj.label} {ids} refused: {error}")
    if failure is None:
        return
    if isinstance(failure, RateLimited):
        # A limit says nothing about the records: back in the queue at the pause end, no attempt charged.
        _release(not_written, at=_pause_for(connection, failure))
        raise failure
    if isinstance(failure, AuthError):
        _release(not_written)
        raise failure
    # The CRM refused the call itself (a 5xx after the retries, a 4xx): each record not written is charged.
    run.failed += len(not_written)
    _tally(run, obj.key, "failed", len(not_written))
    run.error = _run_error(run.error, f"{obj.label}: {failure}")
    _record_error(connection, str(failure))
    _fail(not_written, str(failure))


def _remember_remote_ids(connection: Connection, obj: objects.ObjectType, remote_ids: dict[int, str]) -> None:
    """The CRM just created these records (a type matched without a unique
    key, connectors/hubspot.py): their ids go into PushState now, in their
    own transaction, so whatever fails after (an association call, the
    drain itself) the next attempt updates them by id instead of creating
    them again. Only the id: the hash and properties stay those of the last
    settled push, so the record is still sent again. Push states are the
    last lock of the order and nothing else is held here."""
    if not remote_ids:
        return

    def write() -> None:
        # One upsert, in local id order (the one order of push-state locks).
        PushState.objects.bulk_create(
            [PushState(connection=connection, object=obj.key, local_id=local_id, remote_id=remote_id)
             for local_id, remote_id in sorted(remote_ids.items())],
            update_conflicts=True, unique_fields=["connection", "object", "local_id"], update_fields=["remote_id"])

    run_in_transaction(write)


def _store_remote_ids(connection: Connection, obj: objects.ObjectType, remote_ids: dict[int, str],
                      records: dict[int, Any]) -> None:
    changed, columns = [], set()
    for local_id, remote_id in remote_ids.items():
        instance = records[local_id]
        column = obj.id_field(connection.provider, remote_id)
        if remote_id and getattr(instance, column, None) != remote_id:
            setattr(instance, column, remote_id)
            changed.append(instance)
            columns.add(column)
    if changed:
        obj.model_class.objects.bulk_update(changed, sorted(columns), batch_size=500)
        # Announced like any write (source crm:<provider>, so not queued back).
        hooks.records_changed(obj.hook, ids=[i.pk for i in changed], fields=sorted(columns),
                              source=f"crm:{connection.provider}")


def _finish(connection: Connection, obj: objects.ObjectType, items: list[OutboxItem], *,
            states: list[PushState] = (), remote_ids: dict[int, str] | None = None,
            records: dict[int, Any] | None = None) -> None:
    """Settle what was sent (or skipped as unchanged), in one transaction
    taking the locks in the one order of every write path: the records,
    then their outbox rows, then their push states.

    A row is done only if it is still the version this drain claimed, under
    the claim this drain made, within its lease. Otherwise a change landed
    after the drain read the record (the CRM has the older values) or
    another drain took the row after the lease ran out: the row stays
    pending and due, or a new one is queued, and the next drain sends the
    current values. The push state records what was sent either way."""
    if not items:
        return
    run_in_transaction(lambda: _settle(connection, obj, items, states, remote_ids, records))


def _settle(connection: Connection, obj: objects.ObjectType, items: list[OutboxItem], states: list[PushState],
            remote_ids: dict[int, str] | None, records: dict[int, Any] | None) -> None:
    now = timezone.now()
    expired = now - lease()
    list(obj.model_class.objects.select_for_update().filter(pk__in={i.local_id for i in items})
         .order_by("pk").values_list("pk", flat=True))
    if remote_ids:
        _store_remote_ids(connection, obj, remote_ids, records or {})
    rows = {pk: (status, version, claimed_at) for pk, status, version, claimed_at in
            OutboxItem.objects.select_for_update().filter(pk__in=[i.pk for i in items]).order_by("pk")
            .values_list("pk", "status", "version", "claimed_at")}
    done, due, overtaken, again = [], [], [], []
    for item in items:
        status, version, claimed_at = rows.get(item.pk, (None, None, None))
        if status != OutboxItem.Status.PENDING:
            # Another drain took it after our lease ran out and finished it:
            # what it sent may be older than what we sent, so send again.
            again.append((connection.pk, obj.key, item.local_id))
        elif claimed_at != item.claimed_at:
            overtaken.append(item.pk)  # another drain holds it now: it must not finish it either
        elif version == item.version and (item.claimed_at is None or item.claimed_at > expired):
            done.append(item.pk)
        else:
            due.append(item.pk)  # changed since we read it (or our lease ran out): the next drain sends it
    if done:
        OutboxItem.objects.filter(pk__in=done).update(status=OutboxItem.Status.DONE, last_error="", updated_at=now)
    if due:
        OutboxItem.objects.filter(pk__in=due).update(next_attempt_at=now, updated_at=now)
    if overtaken:
        OutboxItem.objects.filter(pk__in=overtaken).update(version=F("version") + 1, updated_at=now)
    outbox.enqueue(again)
    if states:
        PushState.objects.bulk_create(
            sorted(states, key=lambda s: s.local_id), update_conflicts=True,
            unique_fields=["connection", "object", "local_id"],
            update_fields=["remote_id", "payload_hash", "pushed_at", "pushed_properties", "associations", "links",
                           "owner_pushed_at"],
            batch_size=500,
        )


def _release(items: list[OutboxItem], at: dt.datetime | None = None) -> None:
    """Put claimed rows back in the queue, due ``at`` (now), with no attempt
    charged: nothing was wrong with them (a limit, an auth stop)."""
    if items:
        OutboxItem.objects.filter(pk__in=[i.pk for i in items]).update(next_attempt_at=at or timezone.now())


@transaction.atomic
def dead_letter_retry(*, items: Iterable[OutboxItem], actor=None) -> int:
    """Put dead letters back in the queue (admin action). A record that
    already has a pending row keeps that one."""
    n = 0
    for item in items:
        if item.status != OutboxItem.Status.DEAD:
            continue
        pending = OutboxItem.objects.filter(connection_id=item.connection_id, object=item.object,
                                            local_id=item.local_id, status=OutboxItem.Status.PENDING).exists()
        if not pending:
            item.status, item.attempts = OutboxItem.Status.PENDING, 0
            item.next_attempt_at = timezone.now()
            try:
                # An edit can queue a pending row between the check and this
                # save: the unique index refuses the second one.
                with transaction.atomic():
                    item.save(update_fields=["status", "attempts", "next_attempt_at", "last_error", "updated_at"])
            except IntegrityError:
                pending = True
        if pending:
            item.status = OutboxItem.Status.DONE
            item.last_error = f"superseded by a pending push (retried by {actor or 'system'})"
            item.save(update_fields=["status", "last_error", "updated_at"])
        n += 1
    log.info("dead letters retried: %s by %s", n, actor)
    return n


# --- pull ---------------------------------------------------------------------

def _local_changed_since_sync(instance, obj: objects.ObjectType, state: PushState | None, pending: bool) -> bool:
    """Whether the record holds something the CRM does not have: a pending
    push (queued, or in flight: a change during a push keeps its row
    pending), no sync yet, or a change after the record was read for the
    last push (``pushed_at``)."""
    if pending or state is None:
        return True
    modified = getattr(instance, obj.modified_field, None)
    return state.pushed_at is not None and modified is not None and modified > state.pushed_at


def _same_as_sent(mapping: FieldMapping, pulled: Any, sent: dict[str, Any]) -> bool:
    """The CRM's value of this field is the one we last sent (or agreed on):
    our own push read back, not a change made there. Compared as local
    values, so the CRM's formatting of a number or a date does not count as
    a change."""
    if mapping.remote_field not in sent:
        return False
    ours = sent[mapping.remote_field]
    try:
        return to_local(mapping.kind, pulled, mapping.value_map) == to_local(mapping.kind, ours, mapping.value_map)
    except (TransformError, ArithmeticError, ValueError):
        return str(pulled) == str(ours)


def _parse_time(value: str) -> dt.datetime | None:
    try:
        return to_local("datetime", value)
    except TransformError:
        return None


def _locals_by_remote_ids(connection: Connection, obj: objects.ObjectType, remote_ids: Iterable[str]
                          ) -> dict[str, Any]:
    """The local records of these remote ids: by what we pushed or pulled
    before (PushState), else the remote id column. One query for the states,
    one for their records, one per id column for the rest, whatever the
    number of ids (a links pull asks for a batch of 200)."""
    wanted = {r for r in remote_ids if r}
    if not wanted:
        return {}
    model = obj.model_class.objects.select_related(*obj.select_related)
    by_state: dict[str, int] = {}
    for remote_id, local_id in (PushState.objects.filter(connection=connection, object=obj.key, remote_id__in=wanted)
                                .order_by("pk").values_list("remote_id", "local_id")):
        by_state.setdefault(remote_id, local_id)
    rows = model.in_bulk(set(by_state.values())) if by_state else {}
    found = {r: rows[local_id] for r, local_id in by_state.items() if local_id in rows}
    by_column: dict[str, set[str]] = {}
    for remote_id in wanted - found.keys():
        by_column.setdefault(obj.id_field(connection.provider, remote_id), set()).add(remote_id)
    for column, ids in by_column.items():
        for instance in model.filter(**{f"{column}__in": ids}).order_by("pk"):
            found.setdefault(getattr(instance, column), instance)
    return found


def _page_locals(connection: Connection, obj: objects.ObjectType, page: list, mappings: list[FieldMapping]
                 ) -> dict[str, Any]:
    """The local record each pulled one is (remote id -> record): by what we
    pushed or pulled before, else the remote id column, else the natural key
    (email, domain). One query per way whatever the page's size."""
    found = _locals_by_remote_ids(connection, obj, [p.remote_id for p in page])
    if obj.key_field:
        remote = next((m.remote_field for m in mappings if m.local_field == obj.key_field), obj.key_field)
        wanted: dict[str, list[str]] = {}
        for pulled in page:
            value = (pulled.properties.get(remote) or "").strip().lower()
            if value and pulled.remote_id not in found:
                wanted.setdefault(value, []).append(pulled.remote_id)
        if wanted:
            # The key columns hold normalized, lower-case values (emails,
            # domains): an exact IN on the lowered values is the case-blind
            # match and uses their unique index.
            model = obj.model_class.objects.select_related(*obj.select_related)
            for instance in model.filter(**{f"{obj.key_field}__in": wanted}).order_by("pk"):
                for remote_id in wanted.get(getattr(instance, obj.key_field), ()):
                    found.setdefault(remote_id, instance)
    return found


class _OwnerUsers(dict):
    """Pulled owner id -> local user, asked once per id (a page's records share a few owners)."""

    def __init__(self, connection: Connection):
        super().__init__()
        self.connection = connection

    def __missing__(self, remote_owner_id: str):
        self[remote_owner_id] = user = _owner_user(self.connection, remote_owner_id)
        return user


def _owner_user(connection: Connection, remote_owner_id: str):
    """A pulled owner id -> the local user: the provider first (routing's
    reps carry CRM owner ids), else the pulled CRM owner's email."""
    from django.contrib.auth import get_user_model

    if not remote_owner_id:
        return None
    user_id = hooks.call("crm_owner_user_id", remote_owner_id=remote_owner_id, provider=connection.provider)
    User = get_user_model()
    if user_id:
        return User.objects.filter(pk=user_id).first()
    owner = CrmOwner.objects.filter(connection=connection, remote_id=remote_owner_id).exclude(email="").first()
    return User.objects.filter(email__iexact=owner.email).order_by("pk").first() if owner else None


@dataclass
class _PageState:
    """What deciding a pulled page needs about the records it touches, read
    in a fixed number of queries: their push states, which have a pending
    push, the records their associations name, the owners' users."""

    states: dict[int, PushState]
    pending: set[int]
    linked: dict[str, dict[str, Any]]  # associated object key -> remote id -> local record
    owners: _OwnerUsers
    stage_by_value: dict[str, str]


def _page_state(connection: Connection, object_type: objects.ObjectType, page: list, found: dict[str, Any],
                stage_by_value: dict[str, str]) -> _PageState:
    local_ids = {i.pk for i in found.values()}
    states = {s.local_id: s for s in PushState.objects.filter(connection=connection, object=object_type.key,
                                                              local_id__in=local_ids)} if local_ids else {}
    pending = set(OutboxItem.objects.filter(connection=connection, object=object_type.key, local_id__in=local_ids,
                                            status=OutboxItem.Status.PENDING)
                  .values_list("local_id", flat=True)) if local_ids else set()
    linked = {}
    for other in object_type.association_fields:
        first = {(p.associations.get(other) or [None])[0] for p in page} - {None}
        linked[other] = _locals_by_remote_ids(connection, objects.get(other), first)
    return _PageState(states, pending, linked, _OwnerUsers(connection), stage_by_value)


def pulled_apply(*, connection: Connection, pulled, obj: str = "contact",
                 mappings: list[FieldMapping] | None = None, dry_run: bool = False,
                 connector: Connector | None = None) -> str:
    """Write one pulled record (``pulled_apply_page`` with a page of one);
    returns 'pulled', 'skipped' or raises ValidationError naming the field."""
    (outcome,) = pulled_apply_page(connection=connection, page=[pulled], obj=obj, mappings=mappings,
                                   dry_run=dry_run, connector=connector)
    if isinstance(outcome, ValidationError):
        raise outcome
    return outcome


def pulled_apply_page(*, connection: Connection, page: list, obj: str = "contact",
                      mappings: list[FieldMapping] | None = None, dry_run: bool = False,
                      connector: Connector | None = None) -> list[str | ValidationError]:
    """Write a page of pulled records through their object type's service,
    in one transaction; returns per record 'pulled', 'skipped' or the
    ValidationError naming the field that refused it (that record wrote
    nothing; the others are written).

    A fixed number of queries per page, not per record: the local records
    found in one look-up per way (``_page_locals``) and locked in primary key
    order, their push states and pending pushes read together
    (``_page_state``), the writes in bulk where the type has ``write_many``
    (leads: ``lead_upsert_many``, the capture dedupe path in bulk, whose
    lead hooks, stage transitions and signals are per page), else one
    ``write`` per record, then every push state stored in one upsert.
    The pull commits the page's position right after (``_pull_commit``):
    killed in between, the page is applied again, which changes nothing.

    Conflicts (both sides changed since the last sync): under "system of
    record" each mapping whose system of record is the CRM takes the remote
    value and the others keep ours; under "most recent" the side modified
    last wins every field."""
    object_type = objects.get(obj)
    if mappings is None:
        mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
    stage_by_value = {lm.remote_value: lm.stage.key for lm in
                      LifecycleMapping.objects.filter(connection=connection).select_related("stage")} \
        if any(m.local_field == "lifecycle_stage" for m in mappings) else {}
    if not page:
        return []
    if dry_run:
        found = _page_locals(connection, object_type, page, mappings)
        state = _page_state(connection, object_type, page, found, stage_by_value)
        outcomes: list[str | ValidationError] = []
        for pulled in page:
            try:
                data = _pulled_data(connection, object_type, pulled, mappings, found.get(pulled.remote_id), state)[0]
            except ValidationError as exc:
                outcomes.append(exc)
            else:
                outcomes.append("pulled" if data else "skipped")
        return outcomes

    def write() -> list[str | ValidationError]:
        model = object_type.model_class
        found = _page_locals(connection, object_type, page, mappings)
        if found:
            # The records first, then their outbox rows and push states (the
            # one lock order), in primary key order: an edit cannot land
            # between the decisions below and the writes, and a drain settles
            # these records before or after.
            ids = sorted({i.pk for i in found.values()})
            list(model.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
            fresh = model.objects.select_related(*object_type.select_related).in_bulk(ids)
            found = {r: fresh[i.pk] for r, i in found.items() if i.pk in fresh}
        state = _page_state(connection, object_type, page, found, stage_by_value)
        outcomes: list[str | ValidationError] = [""] * len(page)
        todo: list[tuple[int, Any, dict, bool, bool, bool]] = []
        for n, pulled in enumerate(page):
            instance = found.get(pulled.remote_id)
            try:
                data, take_all, local_changed, pending = _pulled_data(connection, object_type, pulled, mappings,
                                                                      instance, state)
            except ValidationError as exc:
                outcomes[n] = exc
                continue
            if data is None:
                outcomes[n] = "skipped"
            else:
                todo.append((n, instance, data, take_all, local_changed, pending))
        written = _page_write(object_type, todo, source=f"crm:{connection.provider}")
        synced: list[tuple[Any, str, bool]] = []
        bump: set[int] = set()
        for (n, _instance, _data, take_all, local_changed, pending), record in zip(todo, written):
            pulled = page[n]
            if isinstance(record, ValidationError):
                outcomes[n] = record
                continue
            if record is None:
                outcomes[n] = "skipped"
                continue
            if pending:
                bump.add(record.pk)
            if take_all and object_type.apply_associations and pulled.associations:
                linked = {}
                for other, remote_ids in pulled.associations.items():
                    if other in object_type.association_fields:
                        continue
                    # Ones we do not have yet come with their pull.
                    others = _locals_by_remote_ids(connection, objects.get(other), remote_ids)
                    linked[other] = [others[r] for r in remote_ids if r in others]
                object_type.apply_associations(instance=record, linked=linked, source=f"crm:{connection.provider}")
            _associations_removed_apply(connection, object_type, record, pulled)
            synced.append((record, pulled.remote_id, local_changed))
            outcomes[n] = "pulled"
        if bump:
            # A push of these records is queued or in flight with values read
            # before this write: it must not settle as the latest one.
            OutboxItem.objects.filter(connection=connection, object=object_type.key, local_id__in=sorted(bump),
                                      status=OutboxItem.Status.PENDING).update(version=F("version") + 1)
        _mark_synced_many(connection, object_type, synced, connector)
        return outcomes

    return run_in_transaction(write)


def _page_write(object_type: objects.ObjectType, todo: list, *, source: str) -> list:
    """The writes of a page: per entry of ``todo`` the written record, None
    (the service wrote nothing) or the ValidationError that refused it.
    In bulk through ``write_many`` where the type has it; when the bulk write
    meets a unique-key conflict (a record created meanwhile, two records
    claiming one key) it is rolled back and the page is written record by
    record, so each gets its own answer. A page of one (a webhook, a
    retried failure) goes through ``write``, the single service."""
    if object_type.write_many is not None and len(todo) > 1:
        try:
            with transaction.atomic():
                return object_type.write_many(items=[(t[1], t[2]) for t in todo], source=source)
        except IntegrityError:
            log.info("%s pull: a unique-key conflict in a page of %d; written one by one", object_type.key, len(todo))
    written: list = []
    for _n, instance, data, *_rest in todo:
        try:
            with transaction.atomic():
                written.append(object_type.write(instance=instance, data=data, source=source))
        except ValidationError as exc:
            written.append(exc)
    return written


def _pulled_data(connection: Connection, object_type: objects.ObjectType, pulled, mappings: list[FieldMapping],
                 instance, page: _PageState) -> tuple[dict[str, Any] | None, bool, bool, bool]:
    """What a pulled record writes here: (data or None to skip, whether it
    takes every field, whether the record has changes the CRM lacks, whether
    it has a pending push row).

    A field whose CRM value is the one we last sent (``PushState.pushed_properties``)
    was not changed there: over a record changed here since, it never
    replaces ours, whatever the conflict rule, so an edit made while its
    push was in flight is not overwritten by the older value coming back."""
    props = pulled.properties
    take_all, local_changed, pending, sent = True, False, False, {}
    if instance is not None:
        state = page.states.get(instance.pk)
        pending = instance.pk in page.pending
        local_changed = _local_changed_since_sync(instance, object_type, state, pending)
        sent = (state.pushed_properties or {}) if state is not None else {}
    if local_changed:
        if connection.conflict_rule == Connection.ConflictRule.MOST_RECENT:
            if all(_same_as_sent(m, props[m.remote_field], sent) for m in mappings if m.remote_field in props):
                return None, False, local_changed, pending  # nothing changed there that we did not send
            remote_at = _parse_time(pulled.modified_at)
            take_all = remote_at is not None and remote_at > getattr(instance, object_type.modified_field)
            if not take_all:
                return None, False, local_changed, pending
        else:
            take_all = False
    data: dict[str, Any] = {object_type.id_field(connection.provider, pulled.remote_id): pulled.remote_id}
    properties: dict[str, Any] = {}
    for m in mappings:
        if m.remote_field not in props:
            continue
        if m.local_field == "owner" and object_type.key == "contact":
            continue  # a lead's owner changes through routing / lead_set_owner, not a pull
        if m.local_field == object_type.key_field:
            value = (props.get(m.remote_field) or "").strip().lower()
            if value:
                data[m.local_field] = value
            continue
        if not take_all and m.system_of_record != FieldMapping.Owner.REMOTE:
            continue  # both sides changed: the local side is this field's system of record
        if local_changed and _same_as_sent(m, props.get(m.remote_field), sent):
            continue  # not changed in the CRM since our push: ours is newer
        raw = props.get(m.remote_field)
        if m.default and raw == m.default and (instance is None or read_local(instance, m.local_field) in (None, "")):
            continue  # the default we sent for an empty field ("[not provided]") is not pulled back into it
        if m.local_field == "lifecycle_stage" and page.stage_by_value:
            value = page.stage_by_value.get(raw)
        elif m.local_field == "owner":
            value = page.owners[raw or ""]
        else:
            try:
                value = to_local(m.kind, raw, m.value_map)
            except TransformError as exc:
                raise ValidationError({m.local_field: f"{m.remote_field}: {exc}"}) from None
        if value is None:
            continue
        if isinstance(value, list):
            value = ";".join(value) if not m.local_field.startswith("properties.") else value
        if m.local_field.startswith("properties."):
            properties[m.local_field.removeprefix("properties.")] = (
                str(value) if hasattr(value, "as_tuple") or isinstance(value, (dt.date,)) else value)
        else:
            data[m.local_field] = value
    if properties:
        data["properties"] = properties
    if take_all:
        for other, local_field in object_type.association_fields.items():
            remote_ids = pulled.associations.get(other) or []
            linked = page.linked.get(other, {}).get(remote_ids[0]) if remote_ids else None
            if linked is not None:  # one we do not have yet stays as it is until it is pulled
                data[local_field] = linked
    return data, take_all, local_changed, pending


def _mark_synced(connection: Connection, obj: objects.ObjectType, instance, remote_id: str,
                 connector: Connector | None = None, *, local_unsent: bool = False) -> None:
    _mark_synced_many(connection, obj, [(instance, remote_id, local_unsent)], connector)


def _mark_synced_many(connection: Connection, obj: objects.ObjectType, synced: list[tuple[Any, str, bool]],
                      connector: Connector | None = None) -> None:
    """After a pull both sides agree: store the payload we would now push
    (``synced``: (record, remote id, local_unsent)), so the record is not
    seen as changed here on the next pull and an identical push is skipped.
    The records read again in one query and every push state stored in one
    upsert, in local id order (the one order of push-state locks).

    ``local_unsent``: the record had changes the CRM does not have yet,
    and the fields the pull did not take kept them. Only the remote id is
    stored then; the last pushed hash stays, so the pending push still
    sends them (storing the hash would skip it)."""
    if not synced:
        return
    last = {instance.pk: (remote_id, unsent) for instance, remote_id, unsent in synced}  # a record pulled twice: the last
    unsent = {pk: remote_id for pk, (remote_id, flag) in last.items() if flag}
    if unsent:
        PushState.objects.bulk_create(
            [PushState(connection=connection, object=obj.key, local_id=pk, remote_id=remote_id)
             for pk, remote_id in sorted(unsent.items())],
            update_conflicts=True, unique_fields=["connection", "object", "local_id"], update_fields=["remote_id"])
    agreed = sorted(pk for pk in last if pk not in unsent)
    if not agreed:
        return
    builder = PayloadBuilder(connection, obj)
    link_specs = objects.links_synced_by(connector or connector_for(connection), obj) if obj.links else []
    now = timezone.now()
    states = []
    instances = list(obj.model_class.objects.select_related(*obj.select_related).filter(pk__in=agreed).order_by("pk"))
    builder.prefetch(instances)
    for instance in instances:
        try:
            properties = builder.payload(instance)
            links = obj.associations(instance) if obj.associations else {}
            raw = _link_raw(link_specs, instance)
            wanted = {k: set(v) for k, v in links.items()}
            for link in link_specs:
                wanted.setdefault(link.other, set()).update(raw[link.key])
            remote = _remote_ids(connection, wanted) if wanted else {}
            associations = {k: sorted(remote[(k, i)] for i in v if (k, i) in remote) for k, v in sorted(links.items())}
            associations = {k: v for k, v in associations.items() if v}
            digest = record_hash(properties, associations, _link_resolve(link_specs, raw, remote)[0])
        except PayloadError:
            digest, associations, properties = "", None, None
        states.append(PushState(connection=connection, object=obj.key, local_id=instance.pk,
                                remote_id=last[instance.pk][0], payload_hash=digest, pushed_at=now,
                                pushed_properties=properties, associations=associations))
    PushState.objects.bulk_create(
        states, update_conflicts=True, unique_fields=["connection", "object", "local_id"],
        update_fields=["remote_id", "payload_hash", "pushed_at", "pushed_properties", "associations"],
        batch_size=500)


# --- pull position: the cursor's time and the records applied at it -----------
# A pull reads from its cursor's time inclusive: Salesforce's SystemModstamp has
# whole seconds and a mass update gives hundreds of records one; HubSpot's
# search restarts its windows at a time shared by several. The records already
# applied at exactly that time are kept beside it (``SyncCursor.seen``: remote
# id -> a digest of what was applied) and skipped unless they changed since,
# so a tie is neither lost nor applied twice. The position is committed every
# PULL_COMMIT_EVERY records (one page), with the failures noted so far, so a
# pull killed mid-way resumes from its last page instead of from the start.

PULL_COMMIT_EVERY = 200
# Records a connector that reads without the database (``read_ahead``) may
# have read beyond the page being written: the next page's call is on the
# wire while this one is applied. Nothing is committed ahead: the cursor
# moves with the written pages only.
READ_AHEAD = 2 * PULL_COMMIT_EVERY
# A full import through a list endpoint (HubSpot) reads records in id order,
# not by time: afterwards the incremental pull takes over from the time the
# import started, less this margin (clocks, the search index's lag).
FULL_IMPORT_OVERLAP = dt.timedelta(minutes=5)


def pulled_digest(pulled) -> str:
    """A short digest of what a pulled record or link carries: a tie at the
    cursor's time read again is skipped only while it is unchanged."""
    if hasattr(pulled, "properties"):
        # Properties only: a connector tells a tie before reading its associations.
        data = [pulled.properties]
    else:
        data = [pulled.parent_id, pulled.other_id, pulled.fields]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PullPosition:
    """How far a pull got: the newest modification time handled and the
    records handled at exactly that time (remote id -> digest)."""

    value: str = ""
    seen: dict[str, str] = field(default_factory=dict)

    def already(self, pulled) -> bool:
        """Applied at this very time before, unchanged: nothing to do."""
        return bool(self.value) and pulled.modified_at == self.value \
            and self.seen.get(pulled.remote_id) == pulled_digest(pulled)

    def note(self, pulled) -> None:
        at = pulled.modified_at
        if at > self.value:
            self.value, self.seen = at, {}
        if at == self.value:
            self.seen[pulled.remote_id] = pulled_digest(pulled)

    def as_json(self) -> dict:
        return {"value": self.value, "seen": self.seen}


def _position_save(cursor: SyncCursor, position: PullPosition, *, mode: str, final: bool) -> None:
    """Store a pull's progress. ``incremental``: the cursor itself.
    ``rescan`` (a full pull reading from the beginning by time): kept in
    ``resume`` so a rerun goes on from there, and folded into the cursor when
    done (the cursor never goes back). ``list`` (a full import through a list
    endpoint): ``resume`` holds the list's ``after``; done, the cursor moves
    up to when the import started."""
    cursor.refresh_from_db(fields=["value", "seen", "resume"])
    resume = dict(cursor.resume or {})
    if mode == "incremental":
        cursor.value, cursor.seen = position.value, position.seen
    elif mode == "rescan":
        if not final:
            resume["rescan"] = position.as_json()
        else:
            resume.pop("rescan", None)
            if position.value > cursor.value:
                cursor.value, cursor.seen = position.value, position.seen
            elif position.value == cursor.value:
                cursor.seen = {**(cursor.seen or {}), **position.seen}
    cursor.resume = resume
    cursor.save(update_fields=["value", "seen", "resume", "updated_at"])


class _ReadAhead:
    """Iterate ``records`` in a thread of its own, at most ``depth`` records
    ahead of the consumer, in their order; an exception of the reader is
    raised to the consumer where it happened (after the records read before
    it). ``close`` stops the reader after its call under way (its calls are
    counted before the run closes) and waits for it. The reader must not
    touch the database (connectors say so with ``read_ahead``)."""

    _DONE = object()

    def __init__(self, records: Iterable, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(records,), name="crm-pull-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, records: Iterable) -> None:
        try:
            for record in records:
                if not self._put((record, None)):
                    return
            self._put((self._DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((self._DONE, exc))

    def __iter__(self) -> Iterator:
        while True:
            record, exc = self._queue.get()
            if exc is not None:
                raise exc
            if record is self._DONE:
                return
            yield record

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _pull_commit(connection: Connection, cursor: SyncCursor, key: str, outcomes: PullOutcomes,
                 save: Any) -> int:
    """One page done: its failures noted and the position stored in one
    transaction; returns the retried records that went through."""
    def write() -> int:
        recovered = _pull_failures_settle(connection, key, outcomes)
        save()
        return recovered

    recovered = run_in_transaction(write)
    outcomes.result.clear()
    outcomes.gone.clear()
    outcomes.retried.clear()
    return recovered


def pull_changes(*, connection: Connection, obj: str = "contact", full: bool = False, dry_run: bool = False,
                 connector: Connector | None = None, progress=None) -> SyncRun:
    """Incremental pull of one object type from its stored cursor (HubSpot:
    search on the last-modified date in windows under the 10,000 cap;
    Salesforce: SOQL on SystemModstamp), the cursor's time included and the
    records applied at it skipped (``PullPosition``). Each record goes
    through the object type's write service. The cursor is committed every
    page (``PULL_COMMIT_EVERY``), so a pull killed mid-way resumes there.

    ``full``: every record. Through the connector's list endpoint where it
    has one (``list_pages``, HubSpot: no cap), resumable at its last page
    (``SyncCursor.resume``); else from the beginning by time, resumable too.

    First the due failures of earlier pulls are fetched again and applied
    (``_pull_retry``; ``run.retried``/``run.recovered``). A record refused
    now (ValidationError) is recorded as a PullFailure and the rest go on;
    the run's error lists every failure. A dry run neither retries nor records."""
    object_type = objects.get(obj)
    paused = paused_run(connection, SyncRun.Kind.PULL, obj)
    if paused is not None:
        return paused
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=obj)
    connector = connector or connector_for(connection)
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=obj)
    mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
    before = connector.stats.api_calls
    outcomes = PullOutcomes()
    errors: list[str] = []
    mode = "incremental" if not full else "list" if hasattr(connector, "list_pages") else "rescan"
    if mode == "incremental":
        position = PullPosition(cursor.value, dict(cursor.seen or {}))
    else:
        position = PullPosition(**(cursor.resume or {}).get("rescan", {}))

    def apply(page: list) -> None:
        results = pulled_apply_page(connection=connection, page=page, obj=obj, mappings=mappings,
                                    dry_run=dry_run, connector=connector)
        _tally_page(run, outcomes, errors, page, results)
        if progress is not None:
            progress.update(len(page))

    def commit(final: bool) -> None:
        if not dry_run:
            run.recovered += _pull_commit(connection, cursor, obj, outcomes,
                                          lambda: _position_save(cursor, position, mode=mode, final=final))

    page: list = []
    reader: _ReadAhead | None = None

    def apply_and_commit(final: bool) -> None:
        """One page applied (one transaction), then its position committed."""
        if page:
            apply(page)
            for pulled in page:
                position.note(pulled)
            page.clear()
        commit(final=final)

    try:
        remote_fields = sorted({m.remote_field for m in mappings})
        if not dry_run:
            _pull_retry(connection, connector, object_type, mappings, run, outcomes, errors, progress)
        if mode != "list" and not dry_run and _bulk_wanted(connector, cursor, obj, remote_fields, position,
                                                           full=full):
            mode = "bulk"
            _pull_bulk(connection, connector, cursor, obj, remote_fields, apply, outcomes, run, full=full)
        elif mode == "list":
            _pull_list(connection, connector, cursor, object_type.key, remote_fields, apply, outcomes, run,
                       dry_run=dry_run)
        else:
            records = connector.pull_since(object_type.key, position.value, remote_fields, skip=position.already)
            if getattr(connector, "read_ahead", False):
                # (``skip`` then runs in the reader: it only ever skips a record noted
                # at that time with that digest, applied already whenever it reads.)
                reader = records = _ReadAhead(records, READ_AHEAD)
            for pulled in records:
                if position.already(pulled):
                    continue  # applied at the cursor's time before, unchanged since
                page.append(pulled)
                if len(page) >= PULL_COMMIT_EVERY:
                    apply_and_commit(final=False)
            apply_and_commit(final=True)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
        if mode not in ("list", "bulk"):  # (an import or a backfill keeps its last committed page)
            # The records read before the error are applied and their position kept.
            apply_and_commit(final=False)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        if reader is not None:
            reader.close()
        run.error = _errors_summary(errors)
        _run_close(connection, connector, run, calls_before=before)
    return run


def pull_prefetch(*, connection: Connection, connector: Connector, keys: list[str]) -> int:
    """Before the scheduled pull of ``keys`` (and their links): let a
    connector that can (``prefetch``, Salesforce Composite) read every
    first page in one call, which the pulls then use. Its calls are
    counted against the allowance here; returns how many it made."""
    if not hasattr(connector, "prefetch"):
        return 0
    cursors = {c.object: c.value for c in SyncCursor.objects.filter(connection=connection)}
    queries: list[str] = []
    for key in keys:
        fields = sorted({m.remote_field for m in connection.mappings.filter(object=key) if m.pulls})
        queries += connector.pull_queries(key, cursors.get(key, ""), fields)
        for link in pulled_link_keys(connection=connection, obj=key, connector=connector):
            queries += connector.link_queries(link, cursors.get(link, ""))
    before = connector.stats.api_calls
    try:
        connector.prefetch(queries)
    except (TransientError, PermanentError) as exc:
        # Nothing lost: each pull then asks for its own first page.
        log.warning("%s: reading the first pages ahead failed: %s", connection.provider, exc)
    calls = connector.stats.api_calls - before
    _count_calls(connection, calls)
    return calls


def _hubspot_time(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _pull_list(connection: Connection, connector: Connector, cursor: SyncCursor, key: str, fields: list[str],
               apply, outcomes: PullOutcomes, run: SyncRun, *, dry_run: bool) -> None:
    """A full import through the connector's list endpoint, one committed
    page at a time: ``SyncCursor.resume["list"]`` keeps the next page's
    ``after`` and when the import started, so an interrupted import (a
    ``crm_sync --full`` killed, a 5xx) goes on from its last page when run
    again. Done, the incremental cursor moves up to the start of the import
    (less FULL_IMPORT_OVERLAP): every change before it was read by the list."""
    state = dict((cursor.resume or {}).get("list") or {})
    if not state:
        state = {"after": "", "since": _hubspot_time(timezone.now() - FULL_IMPORT_OVERLAP)}
    for page, after in connector.list_pages(key, fields, state["after"]):
        apply(list(page))
        if dry_run:
            continue
        state = {**state, "after": after}

        def save(final: bool = not after, state: dict = state) -> None:
            cursor.refresh_from_db(fields=["value", "seen", "resume"])
            resume = dict(cursor.resume or {})
            if final:
                resume.pop("list", None)
                if state["since"] > cursor.value:
                    cursor.value, cursor.seen = state["since"], {}
            else:
                resume["list"] = state
            cursor.resume = resume
            cursor.save(update_fields=["value", "seen", "resume", "updated_at"])

        run.recovered += _pull_commit(connection, cursor, key, outcomes, save)


def _bulk_wanted(connector: Connector, cursor: SyncCursor, key: str, fields: list[str], position: PullPosition,
                 *, full: bool) -> bool:
    """Whether this pull reads through the connector's bulk query
    (``bulk_pages``, Salesforce Bulk API 2.0): a backfill under way (one
    killed mid-way goes on), or a backlog over the connector's
    ``bulk_threshold`` (MARTECH_CRM["SF_BULK_THRESHOLD"]), which the first
    REST query page's ``totalSize`` tells (``backlog``: no call of its own,
    the REST pull starts from that page). A full pull asks the same from
    where it reads (``position``: the beginning, or where an interrupted one
    got to), so a small org's full pull costs what an incremental one does
    (a Bulk job is a create, a poll and a results read per sObject)."""
    if not hasattr(connector, "bulk_pages"):
        return False
    if (cursor.resume or {}).get("bulk"):
        return True
    # The records applied at the start's very time are read again (>=) and skipped: not backlog.
    start, seen = (position.value, position.seen) if full else (cursor.value, cursor.seen or {})
    return connector.backlog(key, start, fields) - len(seen) > connector.bulk_threshold


def _pull_bulk(connection: Connection, connector: Connector, cursor: SyncCursor, key: str, fields: list[str],
               apply, outcomes: PullOutcomes, run: SyncRun, *, full: bool) -> None:
    """A backfill through a bulk query job, one committed page at a time.

    Its rows come in no time order, so the cursor cannot move page by page:
    ``SyncCursor.resume["bulk"]`` keeps where the job was left (its token:
    job, result set, rows read), where it started from (``from``: the cursor
    and its ties, or nothing for a full pull) and how far it got
    (``position``: the newest time applied and the records applied at it).
    Killed, the next pull goes on from the token. Done, the position
    becomes the cursor (never moving it back; at an equal time the ties
    are merged), so the next incremental pull reads from the newest time
    the job held, inclusively: a record changed in that second after the
    job read it is not lost, and one the job read is not applied again."""
    state = dict((cursor.resume or {}).get("bulk") or {})
    if not state:
        start = {"value": "", "seen": {}} if full else {"value": cursor.value, "seen": dict(cursor.seen or {})}
        state = {"from": start, "token": "", "position": start}
    start = PullPosition(**state["from"])
    position = PullPosition(**state["position"])

    def save(state: dict) -> None:
        cursor.refresh_from_db(fields=["value", "seen", "resume"])
        resume = dict(cursor.resume or {})
        if state["token"]:
            resume["bulk"] = state
        else:
            resume.pop("bulk", None)
            done = PullPosition(**state["position"])
            if done.value > cursor.value:
                cursor.value, cursor.seen = done.value, done.seen
            elif done.value == cursor.value:
                cursor.seen = {**(cursor.seen or {}), **done.seen}
        cursor.resume = resume
        cursor.save(update_fields=["value", "seen", "resume", "updated_at"])

    for page, token in connector.bulk_pages(key, start.value, fields, state["token"], chunk=PULL_COMMIT_EVERY):
        fresh = [p for p in page if not start.already(p)]  # applied at the cursor's time before, unchanged
        if fresh:
            apply(fresh)
        for pulled in fresh:
            position.note(pulled)
        state = {**state, "token": token, "position": position.as_json()}
        run.recovered += _pull_commit(connection, cursor, key, outcomes, lambda state=state: save(state))
    # Every page read (or none left): the backfill is over, its position is the cursor.
    final = {**state, "token": "", "position": position.as_json()}
    run.recovered += _pull_commit(connection, cursor, key, outcomes, lambda: save(final))


def _cursor_advance(cursor: SyncCursor, value: str) -> None:
    if value != cursor.value:
        cursor.value = value
        cursor.save(update_fields=["value", "updated_at"])


def _run_close(connection: Connection, connector: Connector, run: SyncRun, *, calls_before: int) -> None:
    """Finish a pull run: the calls it made, counted against the allowance."""
    run.api_calls = connector.stats.api_calls - calls_before
    _count_calls(connection, run.api_calls, connector)
    run.finished_at = timezone.now()
    run.save()


def _link_of(key: str) -> tuple[objects.ObjectType, objects.Link]:
    for obj in objects.all_types():
        for link in obj.links:
            if link.key == key:
                return obj, link
    raise LookupError(f"No CRM link {key!r} is registered.")


def _link_others(connection: Connection, connector: Connector, other: objects.ObjectType, remote_ids: set[str],
                 errors: list[str]) -> dict[str, Any]:
    """The local records pulled links name, by remote id. Ones not here yet
    are read in one query (``fetch_many``) and written like any pulled
    record (for leads ``lead_upsert``, the capture dedupe path)."""
    found = _locals_by_remote_ids(connection, other, remote_ids)
    missing = sorted(set(remote_ids) - found.keys())
    if missing and hasattr(connector, "fetch_many"):
        mappings = [m for m in connection.mappings.filter(object=other.key) if m.pulls]
        outcomes = PullOutcomes()  # recorded against the record's own type
        written: list[str] = []
        fetched = list(connector.fetch_many(other.key, missing, sorted({m.remote_field for m in mappings})))
        for start in range(0, len(fetched), PULL_COMMIT_EVERY):
            page = fetched[start:start + PULL_COMMIT_EVERY]
            results = pulled_apply_page(connection=connection, page=page, obj=other.key, mappings=mappings,
                                        connector=connector)
            for pulled, outcome in zip(page, results):
                if isinstance(outcome, ValidationError):
                    errors.append(f"{pulled.remote_id}: {outcomes.failed(pulled.remote_id, outcome)}")
                    continue
                outcomes.applied(pulled.remote_id)
                written.append(pulled.remote_id)
        found.update(_locals_by_remote_ids(connection, other, written))
        _pull_failures_settle(connection, other.key, outcomes)
    return found


LINK_BATCH = 200


def _link_removed_here(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent, other,
                       other_remote_id: str) -> bool:
    """Both sides had this link at the last sync and it is gone here: it was
    removed here and the deletion is not pushed yet, so a pull must not bring
    it back."""
    state = PushState.objects.filter(connection=connection, object=parent_type.key, local_id=parent.pk).first()
    synced = (state.links or {}).get(link.key, {}) if state is not None else {}
    return other_remote_id in synced and other.pk not in link.details(parent)


def _link_synced_set(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent,
                     other, other_remote_id: str) -> None:
    """After a link pull both sides agree on it: record its fields as synced."""
    state = PushState.objects.select_for_update().filter(connection=connection, object=parent_type.key,
                                                         local_id=parent.pk).first()
    if state is None:
        return  # never pushed nor pulled: the first push records what both sides have
    fields = link.details(parent).get(other.pk)
    synced = dict((state.links or {}).get(link.key, {}))
    if fields is not None and synced.get(other_remote_id) != fields:
        synced[other_remote_id] = fields
        state.links = {**(state.links or {}), link.key: dict(sorted(synced.items()))}
        state.save(update_fields=["links"])


def links_pull(*, connection: Connection, link: str, full: bool = False, connector: Connector | None = None
               ) -> SyncRun:
    """Incremental pull of one link type (a Salesforce CampaignMember or
    OpportunityContactRole, ``objects.Link``) since its own stored cursor
    (``SyncCursor.object`` is the link key). Each changed link is written by
    ``Link.apply`` through the parent's service, which is idempotent, so a
    re-run (or a full pull) adds nothing. Per batch of LINK_BATCH links the
    records they name that are not here yet are read in one query and
    written through their own object type first.

    A link that cannot be applied (its parent not pulled yet, the person
    unknown to the CRM, a refused value) is counted as failed with its
    reason in the run's error and kept as a PullFailure (object: the link
    key), and the cursor moves past it like the other pulls; the next runs
    fetch the due ones again by id (``fetch_links``) ahead of the changed
    links. Links deleted in the CRM are not seen by a modification-time pull
    and stay here."""
    parent_type, spec = _link_of(link)
    other_type = objects.get(spec.other)
    paused = paused_run(connection, SyncRun.Kind.PULL, link)
    if paused is not None:
        return paused
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=link)
    connector = connector or connector_for(connection)
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=link)
    mode = "rescan" if full else "incremental"
    position = (PullPosition(cursor.value, dict(cursor.seen or {})) if not full
                else PullPosition(**(cursor.resume or {}).get("rescan", {})))

    def commit(final: bool) -> None:
        run.recovered += _pull_commit(connection, cursor, link, outcomes,
                                      lambda: _position_save(cursor, position, mode=mode, final=final))
    before = connector.stats.api_calls
    source = f"crm:{connection.provider}"
    errors: list[str] = []
    outcomes = PullOutcomes()
    try:
        # Earlier failures that are due first, through the same steps as the changed links.
        retry = _link_retry(connection, connector, link, run, outcomes, errors)
        # Links applied at the cursor's time before and unchanged are skipped (PullPosition).
        changed = (p for p in connector.pull_links(link, position.value) if not position.already(p))
        stream = itertools.chain(((p, False) for p in retry), ((p, True) for p in changed))
        while True:
            tagged = list(itertools.islice(stream, LINK_BATCH))
            if not tagged:
                break
            chunk = [p for p, _ in tagged]
            others = _link_others(connection, connector, other_type, {p.other_id for p in chunk if p.other_id},
                                  errors)
            parents = _locals_by_remote_ids(connection, parent_type, {p.parent_id for p in chunk})
            for pulled in chunk:
                try:
                    parent = parents.get(pulled.parent_id)
                    if parent is None:
                        raise ValidationError({parent_type.key: [
                            f"{parent_type.label} {pulled.parent_id} is not here yet (pull {parent_type.key} first)."]})
                    other = others.get(pulled.other_id) if pulled.other_id else None
                    if other is None:
                        raise ValidationError({spec.other: [
                            f"{other_type.label} {pulled.other_id or '(none)'} could not be found or pulled."]})
                    with transaction.atomic():
                        if spec.removable and _link_removed_here(connection, parent_type, spec, parent, other,
                                                                 pulled.other_id):
                            run.skipped += 1  # removed here; the parent's next push deletes it there
                        else:
                            spec.apply(parent=parent, other=other, fields=pulled.fields,
                                       remote_id=pulled.remote_id, modified_at=pulled.modified_at, source=source)
                            if spec.removable:
                                _link_synced_set(connection, parent_type, spec, parent, other, pulled.other_id)
                            run.pulled += 1
                    outcomes.applied(pulled.remote_id)
                except ValidationError as exc:
                    run.failed += 1
                    errors.append(f"{spec.label} {pulled.remote_id}: {outcomes.failed(pulled.remote_id, exc)}")
            for pulled, streamed in tagged:
                if streamed:
                    position.note(pulled)
            commit(final=False)
        commit(final=True)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
        commit(final=False)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        run.error = _errors_summary(errors)
        _run_close(connection, connector, run, calls_before=before)
    return run


# --- deletions made in the CRM -------------------------------------------------

def _deleted_cursor_key(key: str) -> str:
    """SyncCursor / SyncRun ``object`` for the deletions of ``key`` ("del:contact_role")."""
    return f"del:{key}"


def deleted_keys(*, connection: Connection, keys: list[str], connector: Connector | None = None) -> list[str]:
    """What ``deletions_pull`` reads after pulling ``keys``, in order: the
    links first (their parents and people are still found by their CRM ids),
    then the object types. Empty for a connector that cannot list deletions."""
    connector = connector or connector_for(connection)
    if not hasattr(connector, "deleted_since"):
        return []
    links = [link for key in keys for link in pulled_link_keys(connection=connection, obj=key, connector=connector)]
    # A connector may list the deletions of some types only (HubSpot: archived deals).
    listed = getattr(connector, "deletions_listed", None)
    return [*links, *(key for key in keys if listed is None or key in listed)]


def deletions_pull(*, connection: Connection, key: str, connector: Connector | None = None) -> SyncRun:
    """Records of object type or link ``key`` deleted in the CRM since the
    stored cursor (``SyncCursor.object`` = "del:<key>"): a modification-time
    pull cannot see them. One ask per CRM object (Salesforce Get Deleted);
    the run is recorded with ``object`` "del:<key>", ``pulled`` counting the
    deletions applied here and ``skipped`` those of records we never had.

    - A link (a CampaignMember, an OpportunityContactRole): taken off here
      through ``Link.remove`` (the parent's service); for a removable link
      also dropped from ``PushState.links``, so the parent's next push does
      not create it again.
    - A record (Lead, Contact, Account, Opportunity, Campaign, Task): ours is
      kept (the marketing record outlives the CRM's) and only its CRM id is
      cleared, with the sync state for it (hash, links), and the deletion is
      logged. Nothing sends it back by itself; its next change here (or a
      record that needs it, a deal its account) creates it there again.
      A type with ``remote_deleted`` (a deal) is deleted here instead,
      through its service.

    Idempotent: applying a deletion twice changes nothing, and the cursor
    (the CRM's last date covered) moves only after the whole window is read."""
    paused = paused_run(connection, SyncRun.Kind.PULL, _deleted_cursor_key(key))
    if paused is not None:
        return paused
    connector = connector or connector_for(connection)
    if not hasattr(connector, "deleted_since"):
        raise NotImplementedError(f"The {connection.provider} connector cannot list deleted records.")
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=_deleted_cursor_key(key))
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=_deleted_cursor_key(key))
    before = connector.stats.api_calls
    errors: list[str] = []
    try:
        page = connector.deleted_since(key, cursor.value)
        if page is not None:
            if page.gap:
                errors.append(f"deletions after {page.gap} and before the oldest date the CRM still lists were "
                              "not read (a full pull brings the records back; removed ones stay here)")
            if key in objects.get_link_keys():
                _deleted_links_apply(connection, connector, key, page.records, run, errors)
            else:
                _deleted_records_apply(connection, objects.get(key), page.records, run)
            _cursor_advance(cursor, page.cursor)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        run.error = "; ".join(errors)[:2000]
        _run_close(connection, connector, run, calls_before=before)
    return run


def _deleted_links_apply(connection: Connection, connector: Connector, key: str, deleted: list[tuple[str, str]],
                         run: SyncRun, errors: list[str]) -> None:
    parent_type, spec = _link_of(key)
    other_type = objects.get(spec.other)
    source = f"crm:{connection.provider}"
    # The deleted ids name neither parent nor person: read them back in one query per 200.
    where = connector.deleted_links(key, [remote_id for remote_id, _ in deleted]) if deleted and spec.remove else {}
    parents = _locals_by_remote_ids(connection, parent_type, {p for p, _ in where.values()})
    others = _locals_by_remote_ids(connection, other_type, {o for _, o in where.values()})
    for remote_id, deleted_at in deleted:
        if spec.remove is None:
            run.skipped += 1
            continue
        parent_id, other_id = where.get(remote_id, ("", ""))
        parent, other = parents.get(parent_id), others.get(other_id)
        try:
            with transaction.atomic():
                changed = spec.remove(parent=parent, other=other, remote_id=remote_id,
                                      deleted_at=_parse_time(deleted_at), source=source)
                if spec.removable and parent is not None and other_id:
                    _link_synced_drop(connection, parent_type, spec, parent, other_id)
        except ValidationError as exc:
            run.failed += 1
            errors.append(f"{spec.label} {remote_id}: {exc.message_dict if hasattr(exc, 'message_dict') else exc}")
            continue
        if changed:
            run.pulled += 1
        else:
            run.skipped += 1  # not here (never pulled, removed already, or its parent unknown)


def _link_synced_drop(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent,
                      other_remote_id: str) -> None:
    """A link deleted in the CRM is no longer one both sides have."""
    state = PushState.objects.select_for_update().filter(connection=connection, object=parent_type.key,
                                                         local_id=parent.pk).first()
    synced = dict((state.links or {}).get(link.key, {})) if state is not None else {}
    if other_remote_id in synced:
        del synced[other_remote_id]
        state.links = {**state.links, link.key: synced}
        state.save(update_fields=["links"])


def _deleted_records_apply(connection: Connection, obj: objects.ObjectType, deleted: list[tuple[str, str]],
                           run: SyncRun) -> None:
    source = f"crm:{connection.provider}"
    model = obj.model_class
    found = _locals_by_remote_ids(connection, obj, [remote_id for remote_id, _ in deleted])
    for remote_id, deleted_at in deleted:
        instance = found.get(remote_id)
        if instance is None:
            run.skipped += 1
            continue
        if obj.remote_deleted is not None:
            with transaction.atomic():
                removed = obj.remote_deleted(instance=instance, remote_id=remote_id,
                                             deleted_at=_parse_time(deleted_at), source=source)
            run.pulled += 1 if removed else 0
            run.skipped += 0 if removed else 1
            continue
        column = obj.id_field(connection.provider, remote_id)
        with transaction.atomic():
            if getattr(instance, column, None) == remote_id:
                model.objects.filter(pk=instance.pk).update(
                    **{column: None if model._meta.get_field(column).null else ""})
                # Announced like any write (source crm:<provider>, so not queued back).
                hooks.records_changed(obj.hook, ids=[instance.pk], fields=[column], source=source)
            # What was synced with that record is gone with it: the next push starts afresh.
            PushState.objects.filter(connection=connection, object=obj.key, local_id=instance.pk,
                                     remote_id=remote_id).update(remote_id="", payload_hash="", associations={},
                                                                 links={})
        log.warning("%s deleted %s %s at %s: %s #%s is kept here, its %s cleared", connection.provider,
                    obj.label, remote_id, deleted_at, obj.label, instance.pk, column)
        run.pulled += 1


def deletions_pull_recorded(*, connection: Connection, keys: list[str], connector: Connector | None = None,
                            if_due: bool = False) -> list[SyncRun]:
    """``deletions_pull`` for every key ``deleted_keys`` gives (the schedule
    and the command). ``if_due`` (the schedule): only when ``slow_ask_due``
    for the connection's deletions, else none (Get Deleted is one call per
    sObject: eight a run for an idle org)."""
    connector = connector or connector_for(connection)
    wanted = deleted_keys(connection=connection, keys=keys, connector=connector)
    if wanted and if_due and not slow_ask_due(connection=connection, key="del:*"):
        return []
    return [deletions_pull(connection=connection, key=key, connector=connector) for key in wanted]


def _associations_removed_apply(connection: Connection, obj: objects.ObjectType, instance, pulled) -> None:
    """Links both sides had at the last sync (``PushState.associations``)
    that the pulled record no longer has were removed in the CRM: removed
    here through ``ObjectType.remove_associations``. Only association types
    the connector read (a key in ``pulled.associations``) are compared, and a
    link added here and not pushed yet is not in the state, so it stays."""
    if obj.remove_associations is None:
        return
    state = PushState.objects.select_for_update().filter(connection=connection, object=obj.key,
                                                         local_id=instance.pk).first()
    if state is None or not state.associations:
        return  # never synced, or not known which links both sides had
    removed: dict[str, list] = {}
    kept = dict(state.associations)
    for other, synced in state.associations.items():
        if other not in pulled.associations:
            continue
        gone = sorted(set(synced) - set(pulled.associations[other]))
        if gone:
            removed[other] = list(_locals_by_remote_ids(connection, objects.get(other), gone).values())
            kept[other] = [r for r in synced if r not in gone]
    if not removed:
        return
    obj.remove_associations(instance=instance, removed=removed, source=f"crm:{connection.provider}")
    state.associations = {k: v for k, v in kept.items() if v}
    state.save(update_fields=["associations"])


def pulled_link_keys(*, connection: Connection, obj: str, connector: Connector | None = None) -> list[str]:
    """The links of object type ``obj`` the connection's connector syncs
    (pulled after ``obj`` itself, so their parents are here)."""
    return [link.key for link in objects.links_synced_by(connector or connector_for(connection), objects.get(obj))]


def pulled_object_keys(*, connection: Connection, connector: Connector | None = None) -> list[str]:
    """Object types to pull for a connection: declared by its connector,
    registered, and with at least one pull mapping."""
    connector = connector or connector_for(connection)
    mapped = set(connection.mappings.filter(direction__in=["pull", "both"]).values_list("object", flat=True))
    return [o.key for o in objects.synced_by(connector) if o.key in mapped]


# --- pull failures ------------------------------------------------------------
# A pulled record (or link) that cannot be applied is kept as a PullFailure
# with its error, and each later pull of its type first fetches the due ones
# again (in batch) and applies them; after MAX_ATTEMPTS it is a dead letter
# (admin: pull failures, "retry now"). The cursor still moves past it, so one
# bad record never holds the others back.

# Due failures one pull run takes again (the rest wait for the next run).
PULL_RETRY_BATCH = 500


@dataclass
class PullOutcomes:
    """What one pull run did to each record, settled into PullFailure at its end."""

    result: dict[str, str | None] = field(default_factory=dict)  # remote id -> its error, None once applied
    retried: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # retried and no longer in the CRM

    def failed(self, remote_id: str, exc: ValidationError) -> str:
        self.result[remote_id] = _rejection(exc)
        return self.result[remote_id]

    def applied(self, remote_id: str) -> None:
        self.result[remote_id] = None


def _rejection(exc: ValidationError) -> str:
    """The field and the reason, as the run's error has always shown them."""
    return str(exc.message_dict if hasattr(exc, "message_dict") else exc)


def _errors_summary(errors: list[str], limit: int = 2000) -> str:
    """A run's error: every failure, not only the last, cut to the column
    with the count of those left out (each is kept as a PullFailure)."""
    text = "; ".join(errors)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    for error in errors:
        tail = f"; ... and {len(errors) - len(shown)} more (see pull failures)"
        if len("; ".join([*shown, error])) + len(tail) > limit:
            break
        shown.append(error)
    if not shown:  # one error longer than the column
        return errors[0][:limit]
    return "; ".join(shown) + f"; ... and {len(errors) - len(shown)} more (see pull failures)"


def _pull_failures_due(connection: Connection, key: str) -> list[str]:
    """Take the due pending failures of one object or link type under a
    lease (like the outbox's ``_claim``), so two overlapping pulls do not
    both retry them; a run that dies leaves them due again after the lease."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(PullFailure.objects.select_for_update(skip_locked=True)
                    .filter(connection=connection, object=key, status=PullFailure.Status.PENDING,
                            next_attempt_at__lte=now)
                    .order_by("next_attempt_at", "pk").values_list("pk", "remote_id")[:PULL_RETRY_BATCH])
        if rows:
            PullFailure.objects.filter(pk__in=[pk for pk, _ in rows]).update(next_attempt_at=now + lease())
    return [remote_id for _, remote_id in rows]


def _pull_retry(connection: Connection, connector: Connector, object_type: objects.ObjectType,
                mappings: list[FieldMapping], run: SyncRun, outcomes: PullOutcomes, errors: list[str],
                progress=None) -> None:
    """Fetch the due failures of ``object_type`` again and apply them: one
    batch read per page (``fetch_many``), else one read per record where
    the connector has only ``fetch_one``."""
    remote_ids = _pull_failures_due(connection, object_type.key)
    if not remote_ids:
        return
    run.retried += len(remote_ids)
    outcomes.retried.update(remote_ids)
    fields = sorted({m.remote_field for m in mappings})
    try:
        if hasattr(connector, "fetch_many"):
            fetched = connector.fetch_many(object_type.key, remote_ids, fields)
        else:
            fetched = [p for p in (connector.fetch_one(object_type.key, r, fields) for r in remote_ids)
                       if p is not None]
    except PermanentError as exc:
        _refetch_refused(exc, remote_ids, run, outcomes, errors)
        return
    by_id = {p.remote_id: p for p in fetched}
    outcomes.gone.update(r for r in remote_ids if r not in by_id)
    again = [by_id[r] for r in remote_ids if r in by_id]
    for start in range(0, len(again), PULL_COMMIT_EVERY):
        page = again[start:start + PULL_COMMIT_EVERY]
        results = pulled_apply_page(connection=connection, page=page, obj=object_type.key, mappings=mappings,
                                    connector=connector)
        _tally_page(run, outcomes, errors, page, results)
        if progress is not None:
            progress.update(len(page))


def _tally_page(run: SyncRun, outcomes: PullOutcomes, errors: list[str], page: list,
                results: list[str | ValidationError]) -> None:
    """Count a pulled page's outcomes into its run and note each record's
    (a refused one with its field and reason, in the run's error too)."""
    for pulled, outcome in zip(page, results):
        if isinstance(outcome, ValidationError):
            run.failed += 1
            errors.append(f"{pulled.remote_id}: {outcomes.failed(pulled.remote_id, outcome)}")
            continue
        if outcome == "pulled":
            run.pulled += 1
        else:
            run.skipped += 1
        outcomes.applied(pulled.remote_id)


def _refetch_refused(exc: PermanentError, remote_ids: list[str], run: SyncRun, outcomes: PullOutcomes,
                    errors: list[str]) -> None:
    """The CRM refused the fetch itself (not a 429/5xx, which stop the run
    and leave the failures due after the lease): an attempt of each, so a
    bad row goes dead instead of holding the type's pulls back."""
    if isinstance(exc, AuthError):
        raise exc
    for remote_id in remote_ids:
        outcomes.result[remote_id] = f"fetching it again: {exc}"
    run.failed += len(remote_ids)
    errors.append(f"fetching {len(remote_ids)} earlier failure(s) again: {exc}")


def _link_retry(connection: Connection, connector: Connector, link: str, run: SyncRun,
                outcomes: PullOutcomes, errors: list[str]) -> list:
    """The due failed links of type ``link``, fetched again (one query per
    page, ``fetch_links``), for ``links_pull`` to apply ahead of the changed ones."""
    fetch = getattr(connector, "fetch_links", None)
    remote_ids = _pull_failures_due(connection, link) if fetch is not None else []
    if not remote_ids:
        return []
    run.retried += len(remote_ids)
    outcomes.retried.update(remote_ids)
    try:
        fetched = fetch(link, remote_ids)
    except PermanentError as exc:
        _refetch_refused(exc, remote_ids, run, outcomes, errors)
        return []
    found = {p.remote_id for p in fetched}
    outcomes.gone.update(r for r in remote_ids if r not in found)
    return fetched


def _pull_failure_note(connection: Connection, key: str, remote_id: str, error: str, now: dt.datetime) -> None:
    """Record one failure: a new row, or the same row again (a retry, or a
    new version from the CRM that fails too), so there is never a second
    one. A resolved row opens again from its first attempt; a dead one stays
    dead (the admin's "retry now" brings it back) with the newest error."""
    max_attempts = settings.MARTECH_CRM["MAX_ATTEMPTS"]
    with transaction.atomic():
        row, created = PullFailure.objects.select_for_update().get_or_create(
            connection=connection, object=key, remote_id=remote_id,
            defaults={"error": error[:4000], "attempts": 1, "first_failed_at": now, "last_failed_at": now,
                      "next_attempt_at": now + _backoff(1),
                      "status": PullFailure.Status.DEAD if max_attempts <= 1 else PullFailure.Status.PENDING})
        if created:
            return
        if row.status == PullFailure.Status.RESOLVED:
            row.status, row.attempts, row.first_failed_at, row.resolved_at = PullFailure.Status.PENDING, 0, now, None
        row.attempts += 1
        row.error, row.last_failed_at = error[:4000], now
        if row.attempts >= max_attempts:
            row.status = PullFailure.Status.DEAD
        else:
            row.next_attempt_at = now + _backoff(row.attempts)
        row.save()


def _pull_failures_settle(connection: Connection, key: str, outcomes: PullOutcomes) -> int:
    """At the end of a pull: record each record that failed, resolve the
    failures of records now applied (or gone from the CRM); returns how
    many retried records went through."""
    now = timezone.now()
    for remote_id, error in outcomes.result.items():
        if error is not None:
            _pull_failure_note(connection, key, remote_id, error, now)
    applied = {r for r, error in outcomes.result.items() if error is None}
    # The open failures of this type are few; the records a pull applied can be many.
    open_ids = set(PullFailure.objects.filter(
        connection=connection, object=key, status__in=[PullFailure.Status.PENDING, PullFailure.Status.DEAD])
        .values_list("remote_id", flat=True)) if applied or outcomes.gone else set()
    done = sorted(open_ids & applied)
    if done:
        PullFailure.objects.filter(connection=connection, object=key, remote_id__in=done).update(
            status=PullFailure.Status.RESOLVED, resolved_at=now, next_attempt_at=now)
    gone = sorted((open_ids & outcomes.gone) - set(outcomes.result))
    for remote_id in gone:
        # Nothing left to apply: kept as resolved, with why.
        PullFailure.objects.filter(connection=connection, object=key, remote_id=remote_id).update(
            status=PullFailure.Status.RESOLVED, resolved_at=now, next_attempt_at=now,
            error=Concat(Value("No longer in the CRM. Last error: "), "error"))
    return len(outcomes.retried & applied)


@transaction.atomic
def pull_failure_retry(*, items: Iterable[PullFailure], actor=None) -> int:
    """Make pending or dead pull failures due now with fresh attempts (the
    admin's "retry now"), then wake one pull per connection and type after
    the commit; the pull fetches and applies them. Resolved ones are left."""
    keys: set[tuple[int, str]] = set()
    ids = []
    for failure in items:
        if failure.status == PullFailure.Status.RESOLVED:
            continue
        ids.append(failure.pk)
        keys.add((failure.connection_id, failure.object))
    PullFailure.objects.filter(pk__in=ids).update(status=PullFailure.Status.PENDING, attempts=0,
                                                  next_attempt_at=timezone.now())
    for connection_id, key in sorted(keys):
        transaction.on_commit(lambda c=connection_id, k=key: _enqueue_pull(c, k))
    log.info("pull failures retried: %s by %s", len(ids), actor)
    return len(ids)


def _enqueue_pull(connection_id: int, key: str) -> None:
    from django_q.tasks import async_task

    async_task("martech.crm.tasks.pull_one", connection_id, key)


def pull_one(*, connection: Connection, key: str, connector: Connector | None = None) -> SyncRun:
    """One pull of an object type (``pull_changes``) or a link type
    (``links_pull``) by its key: its due failures first, then its changes."""
    if any(link.key == key for obj in objects.all_types() for link in obj.links):
        return links_pull(connection=connection, link=key, connector=connector)
    return pull_changes(connection=connection, obj=key, connector=connector)


def owners_pull(*, connection: Connection, connector: Connector | None = None) -> int:
    """Pull the CRM's owners into CrmOwner, then offer them to whoever
    provides ``crm_owners_pulled`` (routing links its reps by email)."""
    connector = connector or connector_for(connection)
    before = connector.stats.api_calls
    rows = connector.owners()
    for row in rows:
        CrmOwner.objects.update_or_create(connection=connection, remote_id=row["remote_id"],
                                          defaults={k: v for k, v in row.items() if k != "remote_id"})
    _count_calls(connection, connector.stats.api_calls - before, connector)
    hooks.call("crm_owners_pulled", provider=connection.provider, owners=rows)
    return len(rows)


def slow_ask_due(*, connection: Connection, key: str, now: dt.datetime | None = None) -> bool:
    """Whether the scheduled pull asks ``key`` ("owners", or "del:<key>" for
    deletions) this run: at most once in MARTECH_CRM_SLOW_PULL_MINUTES per
    connection, so an idle connection does not pay for them every five
    minutes. Taking it records the time (``SyncCursor.resume["asked_at"]``)."""
    now = now or timezone.now()
    every = dt.timedelta(minutes=settings.MARTECH_CRM["SLOW_PULL_MINUTES"])

    def take() -> bool:
        cursor, _ = SyncCursor.objects.select_for_update().get_or_create(connection=connection, object=key)
        asked = _parse_time((cursor.resume or {}).get("asked_at", ""))
        if asked is not None and now - asked < every:
            return False
        cursor.resume = {**(cursor.resume or {}), "asked_at": now.isoformat()}
        cursor.save(update_fields=["resume", "updated_at"])
        return True

    return run_in_transaction(take)


def owners_pull_recorded(*, connection: Connection, connector: Connector | None = None,
                         if_due: bool = False) -> int:
    """``owners_pull`` for the schedule and the command: a CRM error is
    recorded on the connection (last error; a 401 stops it) and -1 returned,
    so the object pulls that follow still run. ``if_due`` (the schedule):
    only when ``slow_ask_due``; else -2 and no call."""
    if connection.paused_until and connection.paused_until > timezone.now():
        return -1  # paused by a limit: the object pulls record the "paused until" runs
    if if_due and not slow_ask_due(connection=connection, key="owners"):
        return -2
    try:
        return owners_pull(connection=connection, connector=connector)
    except (TransientError, PermanentError) as exc:
        _record_call_error(connection, exc, prefix="owners pull: ")
        return -1
    except Exception as exc:  # noqa: BLE001 - recorded (``_crashed``); the object pulls still run
        _record_error(connection, f"owners pull: {_crashed(connection, exc)}")
        return -1


# --- webhooks -----------------------------------------------------------------

def webhook_receive(*, provider: str, events: list[dict]) -> list[int]:
    """Store accepted notifications, one per event id; returns the new
    receipts' ids (a redelivered event adds nothing)."""
    receipts = []
    for event in events:
        event_id = str(event.get("eventId") or "")
        if not event_id:
            continue
        receipt, created = WebhookReceipt.objects.get_or_create(
            provider=provider, event_id=event_id, defaults={"payload": event})
        if created:
            receipts.append(receipt.pk)
    return receipts


def webhook_process(*, receipt_ids: list[int], connector: Connector | None = None) -> int:
    """Fetch the records a batch of notifications names and apply each like
    a pulled one: one batch read per object type (``fetch_many``, 100 ids a
    call), not one GET per record, and a record named by several receipts
    is read once. A receipt whose record cannot be applied keeps the error."""
    receipts = list(WebhookReceipt.objects.filter(pk__in=receipt_ids, processed_at__isnull=True).order_by("pk"))
    connections: dict[str, Connection | None] = {}
    connectors: dict[str, Connector] = {}
    wanted: dict[tuple[str, str], list[WebhookReceipt]] = {}  # (provider, object) -> receipts
    for receipt in receipts:
        if receipt.provider not in connections:
            connections[receipt.provider] = Connection.objects.filter(provider=receipt.provider,
                                                                      is_active=True).first()
        connection = connections[receipt.provider]
        if connection is None:
            receipt.error = "no active connection"
            continue
        if connection.paused_until and connection.paused_until > timezone.now():
            # Not fetched during a limit's pause: the incremental pull after it brings the change.
            receipt.error = f"Paused until {connection.paused_until.isoformat()}: {connection.pause_reason}"[:2000]
            continue
        conn = connectors.setdefault(receipt.provider, connector or connector_for(connection))
        kind = str(receipt.payload.get("subscriptionType") or "")
        obj = _webhook_object(conn, kind)
        if obj is None or not _webhook_object_id(receipt.payload):
            receipt.error = f"subscription type {kind!r} not handled"
            continue
        if kind.endswith(".deletion") and objects.get(obj).remote_deleted is not None:
            # Deleted there (a deal): nothing to fetch; removed here as the deletions pull would.
            _webhook_deletion(connection, objects.get(obj), receipt)
            continue
        wanted.setdefault((receipt.provider, obj), []).append(receipt)
    for (provider, obj), group in wanted.items():
        connection, conn = connections[provider], connectors[provider]
        mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
        fields = sorted({m.remote_field for m in mappings})
        ids = sorted({_webhook_object_id(r.payload) for r in group})
        try:
            if hasattr(conn, "fetch_many"):
                fetched = {p.remote_id: p for p in conn.fetch_many(obj, ids, fields)}
            else:
                fetched = {i: p for i in ids if (p := conn.fetch_one(obj, i, fields)) is not None}
        except (TransientError, PermanentError) as exc:
            for receipt in group:
                receipt.error = str(exc)[:2000]
            if isinstance(exc, RateLimited):
                _pause_for(connection, exc)
            continue
        applied: dict[str, str] = {}  # remote id -> error ("" once applied)
        for receipt in group:
            remote_id = _webhook_object_id(receipt.payload)
            pulled = fetched.get(remote_id)
            if pulled is not None and remote_id not in applied:
                try:
                    pulled_apply(connection=connection, pulled=pulled, obj=obj, mappings=mappings, connector=conn)
                    applied[remote_id] = ""
                except ValidationError as exc:
                    applied[remote_id] = str(exc)[:2000]
            receipt.error = applied.get(remote_id, "")
    now = timezone.now()
    for receipt in receipts:
        receipt.processed_at = now
        receipt.save(update_fields=["processed_at", "error"])
    return len(receipts)


def _webhook_deletion(connection: Connection, obj: objects.ObjectType, receipt: WebhookReceipt) -> None:
    """An ``<object>.deletion`` notification for a type removed here when
    deleted in the CRM (``ObjectType.remote_deleted``): applied like a
    deletion the pull lists (``_deleted_records_apply``; one we never had,
    or removed already, changes nothing, as there)."""
    remote_id = _webhook_object_id(receipt.payload)
    at = receipt.payload.get("occurredAt")
    when = dt.datetime.fromtimestamp(int(at) / 1000, tz=dt.timezone.utc).isoformat() if at else ""
    tally = SyncRun(connection=connection, kind=SyncRun.Kind.PULL, object=_deleted_cursor_key(obj.key))
    _deleted_records_apply(connection, obj, [(remote_id, when)], tally)
    receipt.error = ""


def _webhook_object_id(payload: dict) -> str:
    """The record a notification names. An ``<object>.associationChange``
    (a contact added to or removed from a deal) has no objectId: it names
    ``fromObjectId`` -> ``toObjectId`` with an ``associationType`` such as
    "DEAL_TO_CONTACT" (HubSpot sends both directions); the subscribed
    object's side is the record to fetch, whose pull applies the change."""
    if payload.get("objectId"):
        return str(payload["objectId"])
    kind = str(payload.get("subscriptionType") or "")
    if kind.endswith(".associationChange"):
        prefix = kind.split(".", 1)[0].upper() + "_TO_"
        side = "fromObjectId" if str(payload.get("associationType") or "").startswith(prefix) else "toObjectId"
        return str(payload.get(side) or "")
    return ""


def _webhook_object(connector: Connector, subscription_type: str) -> str | None:
    """"company.propertyChange" -> "company" when the connector syncs it."""
    prefix = subscription_type.split(".", 1)[0]
    declared = getattr(connector, "objects", {}) or {}
    if prefix in declared:
        return prefix
    # The connector may name the object differently (e.g. its plural).
    for key, remote in declared.items():
        if remote == prefix:
            return key
    return None
