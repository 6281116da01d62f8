"""The transactional outbox: a write queues a push in its own transaction.

Each registered object type (``martech.crm.objects``) is subscribed to the
``martech.hooks`` change hook its writes call (leads, accounts, tasks,
"opportunities" from attribution). A change is queued for every active
connection with a push mapping on one of the changed fields (or any field,
for a new record). Changes whose source is a CRM pull (``crm:<provider>``)
are not queued back to that same provider, so a pulled change is never
echoed straight back.

Lock order: a write path locks the record (lead, account ...) first, then
its outbox rows, then its push state; the drain and the pull take them in
the same order, so none of them can deadlock with another. Outbox rows
are locked in key order (connection, object, local id): ``enqueue``'s
upsert and a capture's release (``_release_rows``) alike.

A capture (a form, an event batch: martech.services.capture) writes its
lead in the request and again in its task (the score, then the owner and
the stage, then the handoff's task), each in its own transaction. Its rows
are *held* (``coalesced``): written in the transaction of the change they
describe, as every row is, but due only HOLD_SECONDS later and with no
wake-up; when the task ends, one statement makes its records' held rows
due and their drains are woken. So the CRM gets a new lead once per
connection, scored, owned and staged, instead of once per step (a drain
woken by another lead took the row between two steps). A task that dies
leaves its rows held, due a minute later: the once-a-minute drain (or any
drain woken meanwhile) pushes them; the capture sweep's second run of the
task releases them too.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection as db
from django.utils import timezone

from martech import configcache, hooks
from martech.crm import objects
from martech.crm.models import Connection, FieldMapping, OutboxItem
from martech.db import retry_on_conflict

log = logging.getLogger(__name__)


def _base(local_field: str) -> str:
    return "properties" if local_field.startswith("properties.") else local_field


# The push mappings of active connections, per process (martech.configcache):
# every lead, account or task write asks for them. Saving or deleting a
# connection or a mapping bumps the key (apps.py).
MAPPINGS_KEY = "crm.push_mappings"


def _load_push_mappings() -> dict[str, tuple[tuple[int, str, str], ...]]:
    by_object: dict[str, list[tuple[int, str, str]]] = {}
    for key, connection_id, provider, local_field in FieldMapping.objects.filter(
            connection__is_active=True, direction__in=["push", "both"]
    ).order_by("pk").values_list("object", "connection_id", "connection__provider", "local_field"):
        by_object.setdefault(key, []).append((connection_id, provider, local_field))
    return {key: tuple(rows) for key, rows in by_object.items()}


def queue_changed(obj: objects.ObjectType, *, ids: list[int], fields: frozenset[str], created: bool,
                  source: str) -> int:
    mappings = configcache.cached(MAPPINGS_KEY, _load_push_mappings).get(obj.key, ())
    wanted: dict[int, str] = {}
    for connection_id, provider, local_field in mappings:
        if source == f"crm:{provider}":
            continue
        if created or _base(local_field) in fields or fields & obj.extra_trigger_fields:
            wanted[connection_id] = provider
    if not wanted:
        return 0
    block = getattr(_local, "block", None)
    if block is not None:
        block.records.setdefault(obj.key, set()).update(ids)
    # Held: in a capture's task, and a capture's request writing its leads
    # (their task releases them; other records, a new account, go now).
    hold = block is not None or (obj.hook == "leads" and _capture_request())
    enqueue(((c, obj.key, i) for c in wanted for i in ids), hold=hold)
    return len(wanted) * len(ids)


def _capture_request() -> bool:
    from martech.services.capture import deferring

    return deferring()


_BATCH = 500
Key = tuple[int, str, int]


@dataclass
class _Block:
    """A capture task's outbox (``coalesced``)."""

    lead_ids: tuple[int, ...]
    # Records queued in the block: object key -> local ids (released at its end).
    records: dict[str, set[int]] = field(default_factory=dict)


_local = threading.local()


# How long a capture's rows are held at most (``coalesced``): longer than
# its task takes, even behind a backlog of a minute's forms; a record whose
# task never releases it (the task lost, or dead) is pushed this much late.
HOLD_SECONDS = 60


def _hold() -> timedelta:
    return timedelta(seconds=HOLD_SECONDS)


@contextmanager
def coalesced(lead_ids: Iterable[int] = ()) -> Iterator[None]:
    """Around a capture's task (``lead_ids``: its leads). The rows its
    writes queue are held (see the module's docstring); at the end (also
    when the block raises: what committed is released) one statement makes
    due every held row of the block's records and of ``lead_ids`` (the
    request's rows), and wakes their connections' drains (at the end of
    ``coalesced_wakes`` when inside one). Nested: the outer one holds."""
    if getattr(_local, "block", None) is not None:
        yield
        return
    block = _local.block = _Block(lead_ids=tuple(lead_ids))
    try:
        yield
    finally:
        _local.block = None
        try:
            _release(block)
        except Exception:  # noqa: BLE001 - never raised over the task's own outcome
            log.exception("CRM outbox rows of leads %s not released; due %ss after they were written",
                          list(block.lead_ids)[:10], HOLD_SECONDS)


def _release(block: _Block) -> int:
    records = {key: set(ids) for key, ids in block.records.items()}
    if block.lead_ids:
        for obj in objects.all_types():
            if obj.hook == "leads":
                records.setdefault(obj.key, set()).update(block.lead_ids)
    records = {key: ids for key, ids in records.items() if ids}
    mappings = configcache.cached(MAPPINGS_KEY, _load_push_mappings)
    connection_ids = sorted({c for key in records for c, _, _ in mappings.get(key, ())})
    if not connection_ids:
        return 0
    n = _release_rows(records, connection_ids)
    if n:
        _wake([(c, "", 0) for c in connection_ids])
    return n


@retry_on_conflict
def _release_rows(records: dict[str, set[int]], connection_ids: list[int]) -> int:
    """One statement: the held rows of ``records`` (object key -> local
    ids) on ``connection_ids`` made due now. Held rows only: pending, never
    claimed, due later (a row in its backoff or paused by a limit was
    claimed: it keeps its time). The rows are locked in the outbox's key
    order (connection, object, local id: ``enqueue``'s), so the release and
    a writer queueing several of them lock them in the same order; a
    deadlock or serialization failure runs it again."""
    meta = OutboxItem._meta
    table = db.ops.quote_name(meta.db_table)
    at = meta.get_field("next_attempt_at")
    now = at.get_db_prep_save(timezone.now(), db)
    which, params = [], [now, now, *connection_ids, OutboxItem.Status.PENDING, now]
    for key, ids in sorted(records.items()):
        which.append(f"(object = %s AND local_id IN ({', '.join(['%s'] * len(ids))}))")
        params += [key, *sorted(ids)]
    lock = " FOR UPDATE" if db.features.has_select_for_update else ""
    sql = (f"UPDATE {table} SET next_attempt_at = %s, updated_at = %s WHERE id IN ("
           f"SELECT id FROM {table} WHERE connection_id IN ({', '.join(['%s'] * len(connection_ids))}) "
           f"AND status = %s AND claimed_at IS NULL AND next_attempt_at > %s AND ({' OR '.join(which)}) "
           f"ORDER BY connection_id, object, local_id{lock})")
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def enqueue(keys: Iterable[Key], *, hold: bool = False) -> None:
    """Queue (connection id, object key, local id) for push: a new pending
    row, or the record's pending row with its ``version`` bumped.

    The bump is what keeps an edit made while the record is being pushed:
    the drain read the record before the edit, and finishes the row only if
    its version is still the one it claimed (``services._push_items``). One
    upsert on the partial unique index (one pending row per record), in key
    order so two writers queueing the same records lock them in the same
    order; SQLite (3.24+) takes the same statement.

    ``hold``: a capture's rows (see the module's docstring): a new row is
    due HOLD_SECONDS from now (a pending row keeps its time), with no
    wake-up."""
    rows = sorted(set(keys))
    if not rows:
        return
    now = timezone.now()
    if not hold:
        _wake(rows)
    table = db.ops.quote_name(OutboxItem._meta.db_table)
    fields = {f.name: f for f in OutboxItem._meta.concrete_fields}
    at = fields["created_at"].get_db_prep_save(now, db)
    due = fields["next_attempt_at"].get_db_prep_save(now + _hold(), db) if hold else at
    for start in range(0, len(rows), _BATCH):
        chunk = rows[start:start + _BATCH]
        values = ", ".join(["(%s, %s, %s, %s, 0, 1, %s, '', %s, %s)"] * len(chunk))
        params: list = []
        for connection_id, key, local_id in chunk:
            params += [connection_id, key, local_id, OutboxItem.Status.PENDING, due, at, at]
        with db.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (connection_id, object, local_id, status, attempts, version, "
                f"next_attempt_at, last_error, created_at, updated_at) VALUES {values} "
                f"ON CONFLICT (connection_id, object, local_id) WHERE status = 'pending' "
                f"DO UPDATE SET version = {table}.version + 1, updated_at = EXCLUDED.updated_at",
                params,
            )


# Up to this many records queued at once wake their connections' drain when
# the transaction commits (a lead's form, an edit); a bigger batch (a full
# backfill, an erasure sweep) waits for the scheduled drain, so it never
# occupies an interactive worker.
WAKE_MAX = 100


def _wake(rows: list[Key]) -> None:
    if len(rows) > WAKE_MAX:
        return
    from martech.taskqueue import wake_on_commit

    for connection_id in sorted({row[0] for row in rows}):
        wake_on_commit("martech.crm.tasks.drain_connection", connection_id, key=f"crm.drain:{connection_id}")


_subscribed: dict[str, object] = {}


def _subscribe(obj: objects.ObjectType) -> None:
    """Subscribe the queueing hook for ``obj`` (once per object key)."""
    if obj.key in _subscribed:
        return

    def queue(*, ids, fields, created, source, _key=obj.key):
        # Looked up at call time: a re-registered type replaces the old one.
        queue_changed(objects.get(_key), ids=ids, fields=fields, created=created, source=source)

    queue.__name__ = f"queue_{obj.key}_push"
    _subscribed[obj.key] = queue
    hooks.on_records_changed(obj.hook, queue)


objects.on_register(_subscribe)


def queue_full(*, connection: Connection, obj: str = "contact") -> int:
    """Queue every record of one object type for a connection (``crm_sync --full``)."""
    model = objects.get(obj).model_class
    n = 0
    ids = model.objects.values_list("pk", flat=True).order_by("pk")
    batch: list[tuple[int, str, int]] = []
    for i in ids.iterator(chunk_size=2000):
        batch.append((connection.pk, obj, i))
        if len(batch) >= 2000:
            enqueue(batch)
            n, batch = n + len(batch), []
    enqueue(batch)
    return n + len(batch)
