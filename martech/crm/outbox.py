"""The transactional outbox: a write queues a push in its own transaction.

Each registered object type (``martech.crm.objects``) is subscribed to the
``martech.hooks`` change hook its writes call (leads, accounts, tasks,
"opportunities" from attribution). A change is queued for every active
connection with a push mapping on one of the changed fields (or any field,
for a new record). Changes whose source is a CRM pull (``crm:<provider>``)
are not queued back to that same provider, so a pulled change is never
echoed straight back.
"""
from __future__ import annotations

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
    now = timezone.now()
    # One pending row per record (partial unique index): a record already
    # waiting keeps its row, and the drain reads the latest values anyway.
    OutboxItem.objects.bulk_create(
        [OutboxItem(connection_id=c, object=obj.key, local_id=i, next_attempt_at=now, created_at=now)
         for c in wanted for i in ids],
        ignore_conflicts=True,
        batch_size=1000,
    )
    return len(wanted) * len(ids)


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
    now = timezone.now()
    n = 0
    ids = model.objects.values_list("pk", flat=True).order_by("pk")
    batch: list[OutboxItem] = []
    for i in ids.iterator(chunk_size=2000):
        batch.append(OutboxItem(connection=connection, object=obj, local_id=i, next_attempt_at=now, created_at=now))
        if len(batch) >= 2000:
            OutboxItem.objects.bulk_create(batch, ignore_conflicts=True)
            n, batch = n + len(batch), []
    OutboxItem.objects.bulk_create(batch, ignore_conflicts=True)
    return n + len(batch)
