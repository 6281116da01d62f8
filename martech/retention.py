"""Retention: how long each kind of data is kept, applied by a scheduled
task in small batches.

Each app lists the kinds of data it deletes in ``<app>/retention.py`` as
``RETENTION``, a list of :class:`DataKind`; the days of each come from
``MARTECH_RETENTION`` (0: kept forever). ``retention_apply`` (the
``retention`` schedule, hourly) runs every kind batch by batch: each
batch picks at most ``BATCH_SIZE`` rows past the cutoff by their primary keys
and deletes them in its own short transaction, so no hot table is locked for
long and a crash loses at most the batch in flight (the next run finds what
is left: nothing is half-written, a repeated run finds nothing more).
Aggregates survive: what the admin and reports count from deleted rows is
folded into rollups in the batch's transaction (nurture's step tallies);
attribution rollups are never retained away here.

On PostgreSQL the events table is partitioned by month (martech/partitions.py):
a month wholly past the cutoff is detached and dropped at once (the kind's
``drop_whole``), the events something points at kept aside; the batches then
delete the rest (the month the cutoff falls in). docs/retention.md has the
migration of an existing install.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from martech import partitions
from martech.apps import app_modules
from martech.db import run_in_transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataKind:
    key: str  # "events": its days are MARTECH_RETENTION["EVENTS_DAYS"]
    label: str  # what docs/retention.md and the task's log call it
    # ``delete_batch(cutoff, limit, after)`` deletes at most ``limit`` rows
    # older than the cutoff whose primary key is above ``after``, in the
    # caller's (short) transaction, and returns (rows deleted, the key to
    # continue after, or None when no more rows are past the cutoff). The
    # cursor keeps each batch off the index entries of the rows the earlier
    # batches deleted (dead until vacuum, and each visited again if every
    # batch started from the lowest key).
    delete_batch: Callable[[datetime, int, Any], tuple[int, Any]]
    # ``drop_whole(cutoff)`` removes at once what can go whole (PostgreSQL: the
    # event months past the cutoff) before the batches; returns the rows gone.
    drop_whole: Callable[[datetime], int] | None = None
    # The kind whose days apply (default: its own key).
    days_of: str | None = None


def kinds() -> list[DataKind]:
    found: list[DataKind] = []
    for module in app_modules("retention"):
        found.extend(getattr(module, "RETENTION", []))
    return found


def retention_days(key: str) -> int:
    return settings.MARTECH_RETENTION[f"{key.upper()}_DAYS"]


def retention_apply(*, now: datetime | None = None, only: str | None = None,
                    max_batches: int | None = None) -> dict[str, int]:
    """Delete what every kind (or ``only`` that one) keeps past its days;
    at most ``max_batches`` (default MAX_BATCHES) batches per kind per run,
    the rest is left to the next run. Returns {kind: rows deleted}."""
    now = now or timezone.now()
    cfg = settings.MARTECH_RETENTION
    limit, max_batches = cfg["BATCH_SIZE"], max_batches or cfg["MAX_BATCHES"]
    out: dict[str, int] = {}
    for kind in kinds():
        days = retention_days(kind.days_of or kind.key)
        if (only and kind.key != only) or not days:
            continue
        cutoff = now - timedelta(days=days)
        deleted, after = kind.drop_whole(cutoff) if kind.drop_whole else 0, 0
        for _ in range(max_batches):
            n, after = run_in_transaction(lambda: kind.delete_batch(cutoff, limit, after))
            deleted += n
            if after is None:
                break
        out[kind.key] = out.get(kind.key, 0) + deleted
        if deleted:
            log.info("retention: %s deleted %s rows older than %s", kind.label, deleted, cutoff.isoformat())
    return out


def delete_ids(model, ids: list[int], *, unreferenced=None) -> int:
    """Delete these rows in the current transaction; returns how many went.

    One DELETE statement when nothing can point at them: the model has no
    reverse relations, or ``unreferenced`` (a queryset of the model that
    excludes every row something points at) is given and re-checked in the
    statement itself, so a row that gained a reference since it was picked
    is kept, not cascaded. Otherwise Django's collector deletes them with
    their cascades, which reads every row first (several times slower)."""
    if not ids:
        return 0
    if unreferenced is not None or not model._meta.related_objects:
        qs = (unreferenced if unreferenced is not None else model._base_manager.all()).filter(pk__in=ids)
        return qs._raw_delete(qs.db)
    with transaction.atomic():
        model._base_manager.filter(pk__in=ids).delete()
    return len(ids)


def next_after(ids: list[int], limit: int) -> int | None:
    """The cursor after a batch that picked ``ids`` (in key order)."""
    return ids[-1] if len(ids) >= limit else None


def unreferenced(model):
    """The model's rows that no row of any model points at (found through
    the model graph, so the core need not know the later stages' models)."""
    qs = model._base_manager.all()
    for rel in model._meta.related_objects:
        qs = qs.filter(**{f"{rel.name}__isnull": True})
    return qs


# --- the core's kinds ---------------------------------------------------------------
def _events_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Raw events past the cutoff, except those a later stage's rows point
    at (an attribution touchpoint is built on its event and would go with
    it): found through the model graph, so the core need not know them.
    On PostgreSQL the whole months went first (``partitions.months_drop``):
    what is left is the month the cutoff falls in and what older months kept."""
    from martech.models import Event

    keep_none = unreferenced(Event)
    ids = list(keep_none.filter(occurred_at__lt=cutoff, pk__gt=after).order_by("pk")
               .values_list("pk", flat=True)[:limit])
    return delete_ids(Event, ids, unreferenced=keep_none), next_after(ids, limit)


def _quarantine_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    from martech.models import QuarantinedEvent

    ids = list(QuarantinedEvent.objects.filter(received_at__lt=cutoff, pk__gt=after).order_by("pk")
               .values_list("pk", flat=True)[:limit])
    return delete_ids(QuarantinedEvent, ids), next_after(ids, limit)


def _task_results_batch(cutoff: datetime, limit: int, after: str) -> tuple[int, str | None]:
    """django-q2's records of successful tasks that stopped before the
    cutoff. Its own pruning (``save_limit`` above 0) locked and loaded every
    kept success row in the worker cluster's monitor after each task, about
    20 ms of CPU per task at 1,000 rows: ``Q_CLUSTER["save_limit"]`` is 0
    (never pruned there) and they go here instead. Failed tasks are kept."""
    from django_q.models import Success

    ids = list(Success.objects.filter(stopped__lt=cutoff, pk__gt=after or "").order_by("pk")
               .values_list("pk", flat=True)[:limit])
    return delete_ids(Success, ids), next_after(ids, limit)


RETENTION = [
    DataKind("events", "raw events", _events_batch, drop_whole=partitions.months_drop),
    DataKind("quarantine", "quarantined events", _quarantine_batch),
    DataKind("task_results", "successful task records", _task_results_batch),
]
if connection.vendor == "postgresql":
    # The dedupe keys of the events dropped with their month (martech/partitions.py).
    RETENTION.append(DataKind("event_keys", "dedupe keys of dropped events", partitions.event_keys_batch,
                              days_of="events"))
