"""Retention of raw events: batch deletion through the real retention task,
and (PostgreSQL) dropping a month from an events table partitioned by time.

Runs against the DATABASE_URL database (migrated with ``manage.py migrate``).

1. Batch deletion (every database): ``--rows`` events dated in 1990 (older
   than any real row) are bulk-inserted into the real events table, then
   ``martech.retention.retention_apply(only="events")`` deletes them with a
   cutoff of 1991-01-01, in its short batches (``--batch`` rows each, the
   ``RETENTION_BATCH_SIZE``). Figures: rows deleted per second, and the
   longest single batch (each is its own transaction: the longest time any
   row lock of the hot table is held by retention).
2. Partition drop (PostgreSQL only): the real events table, partitioned by
   month, gets ``--partitioned-rows`` rows (10,000,000 full) over the 12
   months of 1990 (``generate_series``, through the table's triggers), one
   in ``--touched-every`` with an attribution touchpoint; then
   ``martech.partitions.months_drop`` drops January: its touched events are
   copied aside, the month detached and dropped. Figures: the whole drop,
   the part that holds the events table's lock, the rows dropped and kept.
   The bench's months, touchpoints and lead are dropped at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/retention.py [--quick]
    DATABASE_URL=sqlite:////tmp/bench.sqlite3 python bench/retention.py [--quick]

``--only batch`` or ``--only partition`` runs one part. Prints one JSON line
per figure and writes them to bench/results/retention.json, replacing the
same figures of the same database and keeping the others.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from martech import retention  # noqa: E402
from martech.models import Event, EventType  # noqa: E402

T0 = datetime(1990, 1, 1, tzinfo=dt_timezone.utc)
CUTOFF = datetime(1991, 1, 1, tzinfo=dt_timezone.utc)
RESULTS = ROOT / "bench" / "results" / "retention.json"


def emit(out: list[dict], metric: str, value, unit: str, **extra) -> None:
    # The machine's 1-minute load average beside every figure: wall-clock time follows it.
    line = {"metric": metric, "value": value, "unit": unit, "database": connection.vendor, **extra,
            "load1": round(os.getloadavg()[0], 2)}
    print(json.dumps(line), flush=True)
    out.append(line)


def batch_deletion(out: list[dict], *, rows: int, batch: int) -> None:
    prefix = f"bench-ret-{uuid.uuid4().hex[:8]}-"
    kind = EventType.objects.get(name="page_view")
    chunk = 5000
    for start in range(0, rows, chunk):
        Event.objects.bulk_create([
            Event(client_event_id=f"{prefix}{i}", event_type=kind, anonymous_id=f"{prefix}a{i % 997}",
                  properties={"url": f"https://example.com/p{i % 50}"}, occurred_at=T0 + timedelta(seconds=i),
                  received_at=T0 + timedelta(seconds=i))
            for i in range(start, min(rows, start + chunk))
        ])
    if connection.vendor == "postgresql":
        # Statistics of the partition just filled, as autovacuum would gather
        # them in production (without them the planner takes each batch's
        # DELETE for a one-row scan and walks the whole partition per batch).
        with connection.cursor() as c:
            c.execute("ANALYZE martech_event")
    # The run's own settings: only the events kind, this batch size, no cap on batches.
    settings.MARTECH_RETENTION = {**settings.MARTECH_RETENTION, "EVENTS_DAYS": 1, "BATCH_SIZE": batch,
                                  "MAX_BATCHES": rows // batch + 2}
    durations: list[float] = []
    original = retention.run_in_transaction

    def timed(fn, **kw):
        started = time.perf_counter()
        try:
            return original(fn, **kw)
        finally:
            durations.append(time.perf_counter() - started)

    retention.run_in_transaction = timed
    try:
        started = time.perf_counter()
        deleted = retention.retention_apply(now=CUTOFF + timedelta(days=1), only="events")["events"]
        elapsed = time.perf_counter() - started
    finally:
        retention.run_in_transaction = original
    left = Event.objects.filter(client_event_id__startswith=prefix).count()
    emit(out, "batch_delete_rows_per_s", round(deleted / elapsed), "rows/s", rows=deleted, batch=batch,
         seconds=round(elapsed, 2), left=left)
    durations.sort()
    emit(out, "batch_delete_longest_batch", round(durations[-1] * 1000, 1), "ms", batch=batch,
         p50_ms=round(durations[len(durations) // 2] * 1000, 1), batches=len(durations))


def partition_drop(out: list[dict], *, rows: int, touched_every: int) -> None:
    """The real events table (partitioned by month on PostgreSQL): ``rows``
    events over the 12 months of 1990, one in ``touched_every`` with a
    touchpoint; then the events retention with a cutoff of 1990-02-01, which
    drops January whole, keeping its touchpoints' events aside."""
    from attribution.models import Touchpoint
    from martech import partitions
    from martech.models import Lead

    if not partitions.is_partitioned():
        print("the events table is not partitioned (migrate first)", file=sys.stderr)
        return
    months = [datetime(1990 + (m // 12), m % 12 + 1, 1, tzinfo=dt_timezone.utc) for m in range(13)]
    partitions.partitions_ensure(now=months[0], ahead=12)
    prefix = f"bench-part-{uuid.uuid4().hex[:8]}-"
    lead = Lead.objects.create(email=f"{prefix}lead@example.com")
    page_view = EventType.objects.get(name="page_view").pk
    span = (months[-1] - months[0]).total_seconds()
    started = time.perf_counter()
    step = 500_000
    with connection.cursor() as c:
        for lo in range(0, rows, step):
            # Through the table's triggers, as any insert (each claims its dedupe key).
            c.execute("""
                INSERT INTO martech_event (client_event_id, kind, event_type_id, lead_id, anonymous_id, properties,
                                           context, occurred_at, received_at, utm_source, utm_medium, utm_campaign,
                                           utm_term, utm_content, channel)
                SELECT %s || g, 'page', %s, CASE WHEN g %% %s = 0 THEN %s END, 'a' || (g %% 9973),
                       '{"url": "https://example.com/p"}'::jsonb, '{}'::jsonb,
                       %s + make_interval(secs => (g::float8 * %s / %s)),
                       %s + make_interval(secs => (g::float8 * %s / %s)), '', '', '', '', '', 'direct'
                FROM generate_series(%s, %s) AS g""",
                      [prefix, page_view, touched_every, lead.pk, months[0], span, rows, months[0], span, rows,
                       lo, min(rows, lo + step) - 1])
        c.execute("""INSERT INTO attribution_touchpoint (lead_id, event_id, occurred_at, channel, is_lead_creation)
                     SELECT lead_id, id, occurred_at, 'email', false FROM martech_event
                     WHERE lead_id = %s AND occurred_at < %s""", [lead.pk, months[-1]])
        c.execute("ANALYZE martech_event")
        c.execute("ANALYZE attribution_touchpoint")
        emit(out, "partitioned_fill_seconds", round(time.perf_counter() - started, 1), "s", rows=rows)
        oldest = partitions.month_name(months[0])
        c.execute(f"SELECT count(*) FROM {oldest}")
        in_month = c.fetchone()[0]
    # Each step of the drop timed: the copy aside (no lock) and the swap (the
    # events table locked).
    steps: list[tuple[str, float]] = []
    original = partitions.run_in_transaction

    def timed(fn, **kw):
        began = time.perf_counter()
        try:
            return original(fn, **kw)
        finally:
            steps.append((fn.__name__, time.perf_counter() - began))

    # And each statement (the first words of it), to see where the time goes.
    statements: list[tuple[str, float]] = []

    def each(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append((" ".join(sql.split()[:4]), time.perf_counter() - began))

    partitions.run_in_transaction = timed
    try:
        with connection.execute_wrapper(each):
            started = time.perf_counter()
            dropped = partitions.months_drop(months[1])
            elapsed = time.perf_counter() - started
    finally:
        partitions.run_in_transaction = original
    locked = sum(t for name, t in steps if name == "swap")
    slowest: dict[str, float] = {}
    for sql, t in sorted(statements, key=lambda st: -st[1]):
        if len(slowest) < 6 and sql not in slowest:
            slowest[sql] = round(t * 1000, 1)
    emit(out, "partition_drop_month", round(elapsed * 1000, 1), "ms", rows_dropped=dropped,
         rows_kept=in_month - dropped, table_rows=rows, slowest_statements_ms=slowest)
    emit(out, "partition_drop_month_locked", round(locked * 1000, 1), "ms", rows_dropped=dropped,
         rows_kept=in_month - dropped)
    # Clean up: the bench's months, touchpoints, keys and lead.
    Touchpoint.objects.filter(lead=lead).delete()
    with connection.cursor() as c:
        for month in partitions.months():
            if month.lo < months[-1] + timedelta(days=40):
                c.execute(f"DROP TABLE {month.name}")
        c.execute("DELETE FROM martech_event_key WHERE client_event_id LIKE %s", [f"{prefix}%"])
    Lead.objects.filter(pk=lead.pk).delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--rows", type=int, help="events deleted by the batch task (default 200,000; quick 20,000)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per delete transaction")
    parser.add_argument("--partitioned-rows", type=int,
                        help="rows of the partitioned table (default 10,000,000; quick 300,000)")
    parser.add_argument("--touched-every", type=int, default=50,
                        help="one event in this many has a touchpoint (kept by the drop; default 50)")
    parser.add_argument("--only", choices=["batch", "partition"], help="run one part (the other's figures are kept)")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 200_000)
    out: list[dict] = []
    if args.only != "partition":
        batch_deletion(out, rows=rows, batch=args.batch)
    if connection.vendor == "postgresql" and args.only != "batch":
        partition_drop(out, rows=args.partitioned_rows or (300_000 if args.quick else 10_000_000),
                       touched_every=args.touched_every)
    # Figures of this run replace the same figures of the same database; the rest are kept.
    mine = {(line["database"], line["metric"]) for line in out}
    kept = []
    if RESULTS.exists():
        kept = [line for line in RESULTS.read_text().splitlines()
                if line.strip() and (json.loads(line).get("database"), json.loads(line).get("metric")) not in mine]
    mode = "quick" if args.quick else "full"
    RESULTS.write_text("\n".join(kept + [json.dumps({**line, "mode": mode}) for line in out]) + "\n")


if __name__ == "__main__":
    main()
