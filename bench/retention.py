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
2. Partition drop (PostgreSQL only): a table shaped like the events table,
   partitioned by RANGE (occurred_at) into months, is filled with
   ``--partitioned-rows`` rows (10,000,000 full) spread over 12 months by
   ``generate_series``; then the oldest month is detached and dropped. Figures:
   the detach + drop time, and the rows that took with them. The table is
   ``bench_retention_events`` and is dropped at the end: the real events
   table is not partitioned yet (docs/retention.md says why and how).

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


PARTITIONED = "bench_retention_events"


def partition_drop(out: list[dict], *, rows: int) -> None:
    months = [datetime(1990 + (m // 12), m % 12 + 1, 1, tzinfo=dt_timezone.utc) for m in range(13)]
    with connection.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {PARTITIONED}")
        # The events table's columns, with the partition key in the primary key
        # and in the dedupe key (a rule of declarative partitioning).
        c.execute(f"""
            CREATE TABLE {PARTITIONED} (
                id bigint GENERATED BY DEFAULT AS IDENTITY,
                client_event_id varchar(255) NOT NULL,
                kind varchar(10) NOT NULL,
                event_type_id bigint NOT NULL,
                lead_id bigint NULL,
                anonymous_id varchar(255) NOT NULL,
                properties jsonb NOT NULL,
                context jsonb NOT NULL,
                occurred_at timestamptz NOT NULL,
                received_at timestamptz NOT NULL,
                channel varchar(20) NOT NULL,
                PRIMARY KEY (id, occurred_at),
                UNIQUE (client_event_id, occurred_at)
            ) PARTITION BY RANGE (occurred_at)""")
        for lo, hi in zip(months, months[1:]):
            c.execute(f"CREATE TABLE {PARTITIONED}_{lo:%Y_%m} PARTITION OF {PARTITIONED} "
                      f"FOR VALUES FROM (%s) TO (%s)", [lo, hi])
        c.execute(f"CREATE INDEX ON {PARTITIONED} (lead_id, occurred_at DESC)")
        c.execute(f"CREATE INDEX ON {PARTITIONED} (occurred_at DESC, id DESC)")
        span = (months[-1] - months[0]).total_seconds()
        started = time.perf_counter()
        step = 1_000_000
        for lo in range(0, rows, step):
            c.execute(f"""
                INSERT INTO {PARTITIONED} (client_event_id, kind, event_type_id, lead_id, anonymous_id, properties,
                                           context, occurred_at, received_at, channel)
                SELECT 'e' || g, 'page', 1, NULL, 'a' || (g %% 9973), '{{"url": "https://example.com/p"}}'::jsonb,
                       '{{}}'::jsonb, %s + make_interval(secs => (g::float8 * %s / %s)),
                       %s + make_interval(secs => (g::float8 * %s / %s)), 'direct'
                FROM generate_series(%s, %s) AS g""",
                      [months[0], span, rows, months[0], span, rows, lo, min(rows, lo + step) - 1])
        c.execute(f"ANALYZE {PARTITIONED}")
        emit(out, "partitioned_fill_seconds", round(time.perf_counter() - started, 1), "s", rows=rows)
        oldest = f"{PARTITIONED}_{months[0]:%Y_%m}"
        c.execute(f"SELECT count(*) FROM {oldest}")
        in_month = c.fetchone()[0]
        started = time.perf_counter()
        # What the retention task would run for a month past the cutoff: the
        # detach takes a brief lock on the parent, the drop removes the files.
        c.execute(f"ALTER TABLE {PARTITIONED} DETACH PARTITION {oldest}")
        c.execute(f"DROP TABLE {oldest}")
        dropped = time.perf_counter() - started
        emit(out, "partition_drop_month", round(dropped * 1000, 1), "ms", rows_dropped=in_month, table_rows=rows)
        c.execute(f"DROP TABLE {PARTITIONED}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--rows", type=int, help="events deleted by the batch task (default 200,000; quick 20,000)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per delete transaction")
    parser.add_argument("--partitioned-rows", type=int,
                        help="rows of the partitioned table (default 10,000,000; quick 300,000)")
    parser.add_argument("--only", choices=["batch", "partition"], help="run one part (the other's figures are kept)")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 200_000)
    out: list[dict] = []
    if args.only != "partition":
        batch_deletion(out, rows=rows, batch=args.batch)
    if connection.vendor == "postgresql" and args.only != "batch":
        partition_drop(out, rows=args.partitioned_rows or (300_000 if args.quick else 10_000_000))
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
