"""PostgreSQL: the events table is partitioned by month of ``occurred_at``
(migration 0014): ``martech_event_yYYYYmMM`` per month, ``martech_event_default``
for any other time, keys ``(id, occurred_at)``, the ``client_event_id`` dedupe
in ``martech_event_key`` (kept by the table's triggers).

- :func:`partitions_ensure` creates the months ahead (the ``event_partitions``
  schedule, daily); rows the default partition holds for a new month move
  into it.
- :func:`months_drop` is the events' retention of whole months: a month
  wholly before the cutoff is detached and dropped at once, after the events
  something points at (a touchpoint is built on its event) were copied aside
  into ``martech_event_yYYYYmMM_kept``, which takes the month's place. So
  attribution reads what it read before, as with batch deletion, which keeps
  those events too. The keys of the dropped events are left behind (a new
  event with such an id takes its key over) and pruned in batches
  (``event_keys_batch``).

Elsewhere (SQLite) nothing here applies: ``is_partitioned()`` is False and
retention deletes events in batches.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.db import DatabaseError, connection
from django.utils import timezone

from martech.db import is_conflict, run_in_transaction

log = logging.getLogger(__name__)

TABLE = "martech_event"
KEYS = "martech_event_key"
DEFAULT = f"{TABLE}_default"
AHEAD = 3  # months created ahead of the current one
_NAME = re.compile(rf"^{TABLE}_y(\d{{4}})m(\d{{2}})(_kept)?$")
# How long the drop waits for its lock on the events table before giving up
# (and retrying: lock_not_available is a conflict run_in_transaction reruns):
# while it waits, the other writers queue behind it.
LOCK_TIMEOUT = "3s"
# How long the drop waits for the transactions open when it began to end
# (else it leaves the month to the next run).
SETTLE_SECONDS = 60


@dataclass(frozen=True)
class Month:
    name: str
    lo: datetime
    hi: datetime
    kept: bool  # the kept rows of a month retention dropped


def month_start(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=dt_timezone.utc)


def month_name(lo: datetime) -> str:
    return f"{TABLE}_y{lo:%Y}m{lo:%m}"


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as c:
        c.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [TABLE])
        return c.fetchone() is not None


def months() -> list[Month]:
    """The month partitions, oldest first (not the default one)."""
    with connection.cursor() as c:
        c.execute("SELECT child.relname FROM pg_inherits i JOIN pg_class child ON child.oid = i.inhrelid "
                  "WHERE i.inhparent = to_regclass(%s)", [TABLE])
        names = [r[0] for r in c.fetchall()]
    out = []
    for name in names:
        m = _NAME.match(name)
        if m:
            lo = month_start(int(m[1]), int(m[2]))
            out.append(Month(name, lo, month_start(lo.year, lo.month + 1), bool(m[3])))
    return sorted(out, key=lambda m: m.lo)


def _foreign_keys(c) -> list[str]:
    c.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f'",
              [TABLE])
    return [r[0] for r in c.fetchall()]


def _new_table(c, name: str, lo: datetime, hi: datetime) -> None:
    """A table ready to attach as the month [lo, hi): the events' columns,
    indexes and foreign keys, and a check of the range (so attaching it does
    not scan it)."""
    c.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING STORAGE)")
    c.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (occurred_at >= %s AND occurred_at < %s)",
              [lo, hi])
    for definition in _foreign_keys(c):
        c.execute(f"ALTER TABLE {name} ADD {definition}")


def partitions_ensure(*, now: datetime | None = None, ahead: int = AHEAD) -> list[str]:
    """Create the partitions of this month and the ``ahead`` next ones that
    are missing; returns their names. Idempotent."""
    if not is_partitioned():
        return []
    now = (now or timezone.now()).astimezone(dt_timezone.utc)
    have = {m.lo for m in months()}
    created = []
    for k in range(ahead + 1):
        lo = month_start(now.year, now.month + k)
        if lo not in have:
            run_in_transaction(lambda lo=lo: _create_month(lo))
            created.append(month_name(lo))
    return created


def _create_month(lo: datetime) -> None:
    hi, name = month_start(lo.year, lo.month + 1), month_name(lo)
    with connection.cursor() as c:
        c.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        _new_table(c, name, lo, hi)
        # Rows the default partition holds for this month move into it (the
        # table cannot be attached while they are there), their keys with them:
        # deleting them released their keys, which no one else can claim before
        # this transaction ends (the key rows stay locked by it).
        c.execute(f"WITH moved AS (DELETE FROM {DEFAULT} WHERE occurred_at >= %s AND occurred_at < %s RETURNING *) "
                  f"INSERT INTO {name} SELECT * FROM moved", [lo, hi])
        if c.rowcount:
            c.execute(f"INSERT INTO {KEYS} (client_event_id, event_id, occurred_at) "
                      f"SELECT client_event_id, id, occurred_at FROM {name} ON CONFLICT DO NOTHING")
        # The foreign keys' deferred checks of the rows copied, now: a table
        # with pending checks cannot be altered.
        c.execute("SET CONSTRAINTS ALL IMMEDIATE")
        c.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [lo, hi])
        c.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
    log.info("events: partition %s created", name)


# --- retention: whole months ----------------------------------------------------------
def _references() -> list[tuple[str, str, str]]:
    """(table, its primary key column, its column pointing at an event) of
    every model pointing at events (found through the model graph)."""
    from martech.models import Event

    return [(rel.related_model._meta.db_table, rel.related_model._meta.pk.column, rel.field.column)
            for rel in Event._meta.related_objects]


def _referenced(alias: str, refs) -> str:
    """SQL: the event ``alias`` is pointed at."""
    qn = connection.ops.quote_name
    parts = [f"EXISTS (SELECT 1 FROM {qn(table)} r WHERE r.{qn(column)} = {alias}.id)" for table, _, column in refs]
    return "(" + " OR ".join(parts) + ")" if parts else "false"


def _referenced_since(alias: str, refs, watermarks: dict[str, int]) -> str:
    """SQL: the event ``alias`` is pointed at by a row above the watermark
    (read from those rows, by their primary key: a few, where the month has
    hundreds of thousands)."""
    qn = connection.ops.quote_name
    since = " UNION ".join(f"SELECT r.{qn(column)} FROM {qn(table)} r WHERE r.{qn(pk)} > {int(watermarks[table])}"
                           for table, pk, column in refs)
    return f"{alias}.id IN ({since})" if refs else "false"


def _settle(c) -> dict[str, int] | None:
    """The highest key of every table pointing at events, once every
    transaction of this database open just after it was read has ended: a
    row with a key up to it (its key was drawn before the read, so its
    transaction was open then) is visible to any later statement, a later
    row has a higher key. None when that takes over SETTLE_SECONDS."""
    qn = connection.ops.quote_name
    refs = _references()
    c.execute("SELECT " + ", ".join(f"(SELECT coalesce(max({qn(pk)}), 0) FROM {qn(t)})" for t, pk, _ in refs)
              if refs else "SELECT 1")
    row = c.fetchone()
    marks = {t: v for (t, _, _), v in zip(refs, row)}
    # Others than ours (a caller's open transaction, as in the tests).
    opened = ("SELECT pid, xact_start FROM pg_stat_activity WHERE datname = current_database() "
              "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")
    c.execute(opened)
    waiting = set(c.fetchall())
    deadline = time.monotonic() + SETTLE_SECONDS
    while waiting:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
        c.execute(opened)
        waiting &= set(c.fetchall())
    return marks


def months_drop(cutoff: datetime) -> int:
    """Drop every month partition wholly before ``cutoff`` (its end at or
    before it), keeping aside the events something points at; returns the
    rows dropped."""
    if not is_partitioned():
        return 0
    dropped = 0
    for month in months():
        if month.kept or month.hi > cutoff:
            continue
        dropped += month_drop(month)
    return dropped


def month_drop(month: Month) -> int:
    """Detach and drop one month, its referenced events kept in
    ``<name>_kept``, which takes its place; returns the rows dropped.

    1. Outside any lock: the referenced events are copied into the new table
       (with the events' indexes and foreign keys, and a check of the range).
    2. One short transaction, the events table locked (ACCESS EXCLUSIVE, so no
       transaction reading events, as a touchpoint rebuild does, runs meanwhile):
       the events referenced since step 1 are copied too, the month is
       detached, the new table attached in its place (the check spares the
       scan), the month dropped.
    A run that fails between them leaves the month as it was; the next run
    starts over."""
    kept = f"{month.name}_kept"
    refs = _references()
    with connection.cursor() as c:
        c.execute(f"SELECT count(*) FROM {month.name}")
        total = c.fetchone()[0]
        marks = _settle(c)
        if marks is None:
            log.warning("events retention: %s not dropped this run: transactions open for over %s s",
                        month.name, SETTLE_SECONDS)
            return 0

        def copy_aside() -> None:
            with connection.cursor() as c:
                c.execute(f"DROP TABLE IF EXISTS {kept}")
                _new_table(c, kept, month.lo, month.hi)
                c.execute(f"INSERT INTO {kept} SELECT * FROM {month.name} e WHERE {_referenced('e', refs)}")
                c.execute("SET CONSTRAINTS ALL IMMEDIATE")

        run_in_transaction(copy_aside)

    def swap() -> int:
        with connection.cursor() as c:
            c.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            c.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            c.execute(f"INSERT INTO {kept} SELECT * FROM {month.name} e WHERE {_referenced_since('e', refs, marks)} "
                      f"AND NOT EXISTS (SELECT 1 FROM {kept} k WHERE k.id = e.id)")
            c.execute("SET CONSTRAINTS ALL IMMEDIATE")  # as in _create_month
            c.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {month.name}")
            c.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {kept} FOR VALUES FROM (%s) TO (%s)",
                      [month.lo, month.hi])
            c.execute(f"DROP TABLE {month.name}")
            c.execute(f"SELECT count(*) FROM {kept}")
            return c.fetchone()[0]

    try:
        left = run_in_transaction(swap)
    except DatabaseError as exc:
        if not is_conflict(exc) or connection.in_atomic_block:
            raise
        # The lock was not had in LOCK_TIMEOUT, several times: the month waits
        # for the next run, the other kinds go on (the copy aside is redone).
        log.warning("events retention: %s not dropped this run: %s", month.name, exc)
        return 0
    log.info("events retention: %s dropped (%s rows), %s referenced rows kept", month.name, total - left, left)
    return total - left


def event_keys_batch(cutoff: datetime, limit: int, after) -> tuple[int, object]:
    """Dedupe keys of events that are gone (their month dropped), older than
    the cutoff: at most ``limit`` per call, in (occurred_at, id) order after
    ``after`` (0 to start). A retention batch (martech/retention.py)."""
    if not is_partitioned():
        return 0, None
    start = after if after else (datetime.min.replace(tzinfo=dt_timezone.utc), "")
    with connection.cursor() as c:
        c.execute(
            f"SELECT occurred_at, client_event_id, event_id FROM {KEYS} "
            f"WHERE occurred_at < %s AND (occurred_at, client_event_id) > (%s, %s) "
            f"ORDER BY occurred_at, client_event_id LIMIT %s", [cutoff, start[0], start[1], limit])
        rows = c.fetchall()
        if not rows:
            return 0, None
        # Deleted only while their event is still gone (re-checked in the statement).
        c.execute(
            f"DELETE FROM {KEYS} k WHERE k.client_event_id = ANY(%s) AND k.occurred_at < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {TABLE} e WHERE e.id = k.event_id AND e.occurred_at = k.occurred_at)",
            [[r[1] for r in rows], cutoff])
        deleted = c.rowcount
    return deleted, ((rows[-1][0], rows[-1][1]) if len(rows) >= limit else None)
