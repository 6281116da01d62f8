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
the same order, so none of them can deadlock with another.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.db import connection as db
from django.utils import timezone

from martech import configcache, hooks
from martech.crm import objects
from martech.crm.models import Connection, FieldMapping, OutboxItem


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
    enqueue((c, obj.key, i) for c in wanted for i in ids)
    return len(wanted) * len(ids)


_BATCH = 500


def enqueue(keys: Iterable[tuple[int, str, int]]) -> None:
    """Queue (connection id, object key, local id) for push: a new pending
    row, or the record's pending row with its ``version`` bumped.

    The bump is what keeps an edit made while the record is being pushed:
    the drain read the record before the edit, and finishes the row only if
    its version is still the one it claimed (``services._push_items``). One
    upsert on the partial unique index (one pending row per record), in key
    order so two writers queueing the same records lock them in the same
    order; SQLite (3.24+) takes the same statement."""
    rows = sorted(set(keys))
    if not rows:
        return
    _wake(rows)
    now = timezone.now()
    table = db.ops.quote_name(OutboxItem._meta.db_table)
    fields = {f.name: f for f in OutboxItem._meta.concrete_fields}
    at = fields["created_at"].get_db_prep_save(now, db)
    for start in range(0, len(rows), _BATCH):
        chunk = rows[start:start + _BATCH]
        values = ", ".join(["(%s, %s, %s, %s, 0, 1, %s, '', %s, %s)"] * len(chunk))
        params: list = []
        for connection_id, key, local_id in chunk:
            params += [connection_id, key, local_id, OutboxItem.Status.PENDING, at, at, at]
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


def _wake(rows: list[tuple[int, str, int]]) -> None:
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
