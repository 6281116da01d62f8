"""The push: the outbox claimed under a lease, drained in batches, settled into push state."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection as db, transaction
from django.db.models import F
from django.utils import timezone

from martech import configcache, hooks
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
from martech.crm.models import Connection, OutboxItem, PushState, SyncRun
from martech.crm.services.allowance import (
    _allowance,
    _allowance_text,
    _count_calls,
    _crashed,
    _pause_for,
    _record_error,
    allowance_refresh,
    paused_run,
)
from martech.crm.services.payloads import (
    PayloadBuilder,
    PayloadError,
    _link_raw,
    _link_resolve,
    _linked_before,
    _remote_ids,
    record_hash,
)
from martech.db import run_in_transaction, update_rows

log = logging.getLogger(__name__)


def lease() -> dt.timedelta:
    """How long a drain (or a pull's retry of failures) holds what it claimed
    (MARTECH_CRM["OUTBOX_LEASE_SECONDS"]): what a crashed run left is due
    again after it. Longer than django-q2's task timeout, so a run still
    pushing is never overtaken by a second one taking the same records."""
    return dt.timedelta(seconds=settings.MARTECH_CRM["OUTBOX_LEASE_SECONDS"])


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
    if not object_keys or limit <= 0:
        return []
    # One statement (it was a transaction of a locking SELECT and an UPDATE):
    # the due rows taken under a row lock, skipping rows another drain
    # holds (PostgreSQL; SQLite has one writer), leased, and returned.
    meta = OutboxItem._meta
    qn = db.ops.quote_name
    table = qn(meta.db_table)
    fields = [f for f in meta.concrete_fields]
    at = meta.get_field("next_attempt_at")
    params: list = [at.get_db_prep_save(now + lease(), db), at.get_db_prep_save(now, db), connection.pk,
                    OutboxItem.Status.PENDING, *object_keys, at.get_db_prep_save(now, db)]
    since = ""
    if started is not None:
        since = " AND (claimed_at IS NULL OR claimed_at < %s)"
        params.append(at.get_db_prep_save(started, db))
    params.append(limit)
    lock = " FOR UPDATE SKIP LOCKED" if db.features.has_select_for_update_skip_locked else ""
    keys = ", ".join(["%s"] * len(object_keys))
    sql = (f"UPDATE {table} SET next_attempt_at = %s, claimed_at = %s WHERE id IN ("
           f"SELECT id FROM {table} WHERE connection_id = %s AND status = %s AND object IN ({keys}) "
           f"AND next_attempt_at <= %s{since} ORDER BY next_attempt_at, id LIMIT %s{lock}) "
           f"RETURNING {', '.join(qn(f.column) for f in fields)}")
    return sorted(OutboxItem.objects.raw(sql, params), key=lambda i: (i.claimed_at, i.pk))


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
    the next one's drain).

    The configuration's tokens are read once for the run (``configcache``:
    the payloads' mappings, lifecycle values and owners, the hooks of the
    CRM ids written back)."""
    with configcache.snapshot():
        return _drain(connection, connector, max_items, progress, batch, refresh_allowance)


def _drain(connection: Connection, connector: Connector | None, max_items: int | None, progress,
           batch: int | None, refresh_allowance: bool) -> SyncRun:
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
            # Fewer than asked: nothing else was due. Claim again only when
            # this batch queued records it waits for (``_push_wait``): they
            # are pushed in this run, as they were before; a record queued by
            # a write meanwhile wakes a drain of its own (outbox._wake).
            more = len(items) >= limit
            run.queued_waits = False
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
            if slow or not (more or run.queued_waits):
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


@dataclass
class _PushBatch:
    """What one batch of outbox items is pushed with, read once: the local
    records, their push states, their associations and synced links, and the
    CRM ids of the records they point at."""

    read_at: dt.datetime
    records: dict[int, Any]
    states: dict[int, PushState]
    links: dict[int, dict[str, list[int]]]
    link_specs: list[objects.Link]
    raw_links: dict[int, dict[str, dict[int, dict[str, Any]]]]
    remote: dict[tuple[str, int], str]


def _push_read(connection: Connection, connector: Connector, obj: objects.ObjectType,
               items: list[OutboxItem]) -> _PushBatch:
    """Step 1: read the batch's records, push states and links, and the CRM
    ids of every record they point at (one query per type)."""
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
    return _PushBatch(read_at=read_at, records=records, states=states, links=links, link_specs=link_specs,
                      raw_links=raw_links, remote=remote)


def _push_dead(item: OutboxItem, obj: objects.ObjectType, run, fail_message: str, run_message: str) -> None:
    """A record that retrying cannot help: dead now, counted as failed on the run."""
    _fail([item], fail_message, dead_now=True)
    run.failed += 1
    _tally(run, obj.key, "failed")
    run.error = _run_error(run.error, run_message)


def _push_upsert_key(obj: objects.ObjectType, connector: Connector, instance) -> str:
    """The key the CRM upserts the record by; "" for a deleted record or one without it."""
    key = obj.upsert_key(instance) if instance is not None else ""
    if not key and instance is not None and getattr(connector, "upserts_by_local_id", False):
        key = str(instance.pk)  # Salesforce upserts by our id (Martech_Id__c), no natural key needed
    return key


def _push_associations(batch: _PushBatch, item: OutboxItem
                       ) -> tuple[dict[str, list[str]], dict[str, Any], list[tuple[str, int]]]:
    """The record's associations and link details as CRM ids, and the
    records it points at that have no CRM id yet (``(type, local id)``)."""
    associations: dict[str, list[str]] = {}
    waiting: list[tuple[str, int]] = []
    for other, ids in sorted(batch.links.get(item.local_id, {}).items()):
        resolved = [batch.remote[(other, i)] for i in ids if i and (other, i) in batch.remote]
        waiting += [(other, i) for i in ids if i and (other, i) not in batch.remote]
        if resolved:
            associations[other] = sorted(resolved)
    link_details, link_waiting = _link_resolve(batch.link_specs, batch.raw_links.get(item.local_id, {}), batch.remote)
    waiting += [w for w in link_waiting if w not in waiting]
    return associations, link_details, waiting


def _push_wait(connection: Connection, item: OutboxItem, waiting: list[tuple[str, int]], run) -> None:
    """The record it points at has not reached the CRM yet: queue that one
    and try this again later (counted, so it cannot wait forever)."""
    OutboxItem.objects.bulk_create([OutboxItem(connection=connection, object=other, local_id=local_id)
                                    for other, local_id in waiting], ignore_conflicts=True)
    names = ", ".join(f"{other} #{local_id}" for other, local_id in sorted(waiting))
    _fail([item], f"waiting for {names} to be pushed first")
    run.skipped += 1
    run.queued_waits = True  # the drain claims again: they go in this run


def _push_prepare(connection: Connection, connector: Connector, builder: PayloadBuilder, batch: _PushBatch,
                  items: list[OutboxItem], run) -> tuple[list[tuple[OutboxItem, PushRecord, str]], list[OutboxItem]]:
    """Step 2: each item's payload and hash. Returns what to send and what
    is unchanged since its last push; the rest failed or waits, recorded here."""
    obj = builder.obj
    to_send: list[tuple[OutboxItem, PushRecord, str]] = []
    finished: list[OutboxItem] = []
    # The batch's CRM owner ids in one ask (``crm_owner_ids``), not one per payload.
    builder.prefetch(list(batch.records.values()))
    for item in items:
        instance = batch.records.get(item.local_id)
        key = _push_upsert_key(obj, connector, instance)
        if not key:
            # A deleted or merged-away record, or one with no upsert key: retrying cannot help.
            reason = "deleted" if instance is None else f"has no {obj.key_field} (the upsert key)"
            _push_dead(item, obj, run, f"{obj.label} #{item.local_id} {reason}",
                       f"{obj.label} #{item.local_id} {reason}")
            continue
        try:
            properties = builder.payload(instance)
        except PayloadError as exc:
            # retrying cannot fix the data; a fix re-queues it
            _push_dead(item, obj, run, str(exc), f"{obj.label} #{item.local_id}: {exc}")
            continue
        associations, link_details, waiting = _push_associations(batch, item)
        if waiting:
            _push_wait(connection, item, waiting, run)
            continue
        digest = record_hash(properties, associations, link_details)
        state = batch.states.get(item.local_id)
        if state is not None and state.payload_hash == digest:
            finished.append(item)
            run.skipped += 1
            continue
        remote_id = obj.remote_id_of(instance, connection.provider) or (state.remote_id if state is not None else "")
        to_send.append((item, PushRecord(item.local_id, key, properties, associations=associations,
                                         remote_id=remote_id, linked_before=_linked_before(state, remote_id),
                                         link_details=link_details,
                                         link_synced=dict(state.links) if state is not None else {}), digest))
    return to_send, finished


def _push_send(connection: Connection, connector: Connector, obj: objects.ObjectType,
               to_send: list[tuple[OutboxItem, PushRecord, str]]) -> tuple[list, Exception | None, dt.datetime]:
    """Step 3: one batch call (or the connector's several); the calls
    counted. Returns the per-record results, the call failure if any, and
    when the CRM answered."""
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
    _count_calls(connection, connector.stats.api_calls - before, connector)
    return results, failure, answered_at


def _push_state(connection: Connection, obj: objects.ObjectType, batch: _PushBatch, item: OutboxItem,
                record: PushRecord, digest: str, remote_id: str, owner_fields: list[str],
                answered_at: dt.datetime) -> PushState:
    """The push state of a record the CRM accepted."""
    synced = {link.key: record.link_details.get(link.key, {}) for link in batch.link_specs if link.removable}
    # The first push that carries an owner stamps owner_pushed_at; a
    # record whose earlier push already carried one (before this was
    # kept) stays unknown rather than taking this later time.
    before = batch.states.get(item.local_id)
    owner_at = before.owner_pushed_at if before is not None else None
    owner_before = before is not None and any((before.pushed_properties or {}).get(f) for f in owner_fields)
    if owner_at is None and not owner_before and any(record.properties.get(f) for f in owner_fields):
        owner_at = answered_at
    return PushState(connection=connection, object=obj.key, local_id=item.local_id,
                     remote_id=remote_id, payload_hash=digest, pushed_at=batch.read_at,
                     pushed_properties=record.properties, associations=record.associations,
                     links=synced, owner_pushed_at=owner_at)


def _push_results(connection: Connection, builder: PayloadBuilder, batch: _PushBatch,
                  to_send: list[tuple[OutboxItem, PushRecord, str]], results: list, failure: Exception | None,
                  answered_at: dt.datetime, run) -> tuple[dict[str, list[OutboxItem]], list[OutboxItem]]:
    """Step 4: settle what the CRM accepted (push states, CRM ids). Returns
    the refused items by error and those whose call failed or was never made."""
    obj = builder.obj
    owner_fields = [m.remote_field for m in builder.mappings if m.local_field == "owner"]
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
        new_states.append(_push_state(connection, obj, batch, item, record, digest, result.remote_id, owner_fields,
                                      answered_at))
        remote_ids[item.local_id] = result.remote_id
    _finish(connection, obj, ok_items, states=new_states, remote_ids=remote_ids, records=batch.records)
    return refused, not_written


def _push_refused(obj: objects.ObjectType, refused: dict[str, list[OutboxItem]], run) -> None:
    """Step 5: the records the CRM refused, charged an attempt each, named in the run's error."""
    for error, failed in refused.items():
        _fail(failed, error)
        ids = ", ".join(f"#{i.local_id}" for i in failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        run.error = _run_error(run.error, f"{obj.label} {ids} refused: {error}")


def _push_call_failed(connection: Connection, obj: objects.ObjectType, failure: Exception,
                      not_written: list[OutboxItem], run) -> None:
    """Step 6: the call itself failed. A rate limit or an auth error puts
    the records not written back in the queue and stops the drain (raised);
    any other refusal charges each of them an attempt."""
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


def _push_items(connection, connector, builder: PayloadBuilder, items: list[OutboxItem], run) -> None:
    """Push one batch of claimed items of one object type, in steps: read
    (``_push_read``), payloads and hashes (``_push_prepare``), the unchanged
    settled, the call (``_push_send``), the accepted settled
    (``_push_results``), the refused (``_push_refused``), a failed call
    (``_push_call_failed``)."""
    obj = builder.obj
    batch = _push_read(connection, connector, obj, items)
    to_send, finished = _push_prepare(connection, connector, builder, batch, items, run)
    _finish(connection, obj, finished)
    if not to_send:
        return
    results, failure, answered_at = _push_send(connection, connector, obj, to_send)
    refused, not_written = _push_results(connection, builder, batch, to_send, results, failure, answered_at, run)
    _push_refused(obj, refused, run)
    if failure is None:
        return
    _push_call_failed(connection, obj, failure, not_written, run)


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
        update_rows(obj.model_class, changed, sorted(columns))
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
    def write() -> None:
        # The configuration the hooks of the ids written back read: every token in one query.
        with configcache.snapshot():
            _settle(connection, obj, items, states, remote_ids, records)

    run_in_transaction(write)


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
