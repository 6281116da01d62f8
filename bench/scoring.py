"""Scoring at scale: bulk recompute, incremental rescoring after one event,
and a 5-clause segment count.

Loads N leads (default 1,000,000; ``--quick`` 50,000) with bench/lead_list.py's
loader (COPY on PostgreSQL), adds one page_view event per 10 leads, creates a
scoring model (5 fit rules, 2 engagement rules with cap, distinct counting and
a 30-day half-life), then measures:

- ``bulk_recompute_seconds``: ``scores_recompute_all`` over every lead (the
  ``recompute_scores`` command; set-based on PostgreSQL) from zero scores and
  no history, with this process's and the database backend's CPU seconds and
  the load average, and ``bulk_update_floor_estimate_seconds`` (the bare
  UPDATE of the same rows, estimated from the first 100,000 ids);
- ``incremental_rescore_p50_ms`` / ``_p99_ms``: one ``scores_recompute`` for
  one lead after one new event (the work inside the task: its hooks, with a
  HubSpot connection pushing the score and a score-threshold workflow
  active; the configuration from the per-process caches), over 200 leads,
  with CPU time and query count; ``event_task_*``: the same for the whole
  event task (``tasks.events_arrived``: rescoring, then two lifecycle rules);
- ``segment_5_clause_count_seconds``: COUNT of a 5-clause segment, and its
  EXPLAIN ANALYZE plan (stderr and the results file).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench_scoring python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench_scoring python bench/scoring.py [--quick]

Prints one JSON line per figure and writes them to bench/results/scoring.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time

import lead_list  # noqa: F401  (sets up Django; its loader fills the lead table)
from lead_list import ROOT, emit, figures, load

from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
import os  # noqa: E402
from django.utils import timezone  # noqa: E402
from decimal import Decimal  # noqa: E402

from martech.conditions import matching_leads  # noqa: E402
from martech.models import Account, Event, EventType, Lead, LifecycleStage  # noqa: E402
from martech.scoring import services  # noqa: E402
from martech.scoring import tasks as scoring_tasks  # noqa: E402
from martech.scoring.models import EngagementRule, FitRule, LifecycleRule, ScoreHistory, ScoringModel  # noqa: E402
from martech.crm.models import Connection, FieldMapping, OutboxItem  # noqa: E402
from nurture.models import Workflow  # noqa: E402

SEGMENT = ('country in ("US", "DE", "GB") and total_score >= 10 and first_name contains "a" '
           'and account.industry = "Software" and created_at > 2023-01-01')


from rss import backend_cpu, backend_cpu_of, backend_pid  # noqa: E402  (bench/rss.py)


def update_floor(share: float, sample: int = 100_000) -> tuple[float, int]:
    """What the bare UPDATE of the score columns alone costs (no computing,
    no history) for the same share of leads the bulk run changes, timed on
    the first ``sample`` ids before the run and rolled back: the floor under
    any bulk recompute that writes the Lead columns. With no indexed score
    column and free space in the pages (fillfactor) these are HOT updates
    that touch no index; before, each maintained all ~20 of the lead table's
    indexes. Returns (seconds for ``sample`` ids, rows updated)."""
    lo = Lead.objects.order_by("pk").values_list("pk", flat=True).first()
    table = Lead._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        t0 = time.perf_counter()
        cursor.execute(
            f'UPDATE "{table}" SET fit_score = fit_score + 1, engagement_score = engagement_score + 1, '
            f'total_score = total_score + 1, updated_at = now() WHERE id BETWEEN %s AND %s AND (id %% 1000) < %s',
            [lo, lo + sample - 1, round(share * 1000)])
        took, rows = time.perf_counter() - t0, cursor.rowcount
        transaction.set_rollback(True)
    return took, rows


def lead_updates() -> tuple[int, int]:
    """(row updates, of which HOT) on the lead table since the statistics
    were reset, from pg_stat_user_tables; this backend's pending counts are
    flushed first."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT 1")  # the flush happens when the backend goes idle
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = %s::regclass",
                       [Lead._meta.db_table])
        return cursor.fetchone()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def setup_model() -> ScoringModel:
    ScoringModel.objects.filter(name="bench").delete()
    ScoringModel.objects.filter(is_active=True).update(is_active=False)
    model = ScoringModel.objects.create(name="bench", is_active=True, half_life_days=Decimal("30"))
    for name, cond, pts in [
        ("Core markets", 'country in ("US", "DE", "GB")', 10),
        ("Software", 'account.industry = "Software"', 10),
        ("Title", 'job_title contains "manager"', 15),
        ("Source", 'original_source = "paid_search"', 5),
        ("Free mail", 'email_domain = "gmail.com"', -10),
    ]:
        FitRule.objects.create(model=model, name=name, condition=cond, points=pts)
    pv = EventType.objects.get(name="page_view")
    EngagementRule.objects.create(model=model, name="Pages", event_type=pv, points=3, cap_points=15,
                                  cap_period="day", distinct_property="url")
    EngagementRule.objects.create(model=model, name="Pricing", event_type=pv, points=10,
                                  condition='properties.url contains "/pricing"')
    return model


def setup_hooks() -> Connection:
    """What a deployment has around a score change: a HubSpot connection
    pushing the score (so the CRM outbox's hook queues the lead) and an
    active score-threshold nurture workflow (so its receiver checks the
    crossing). Made after the bulk recompute, which they would otherwise
    turn into an outbox fill."""
    from martech.crm.types import CONTACT_MAPPINGS
    from nurture.services import workflow_publish

    remove_hooks()
    conn = Connection.objects.create(provider="hubspot", name="bench scoring")
    for local, remote, kind, extra in CONTACT_MAPPINGS:
        FieldMapping.objects.create(connection=conn, object="contact", local_field=local, remote_field=remote,
                                    kind=kind, **extra)
    # The lifecycle rules a deployment has (the demo's shape): a score rule
    # and an event rule, checked by the event task after each rescoring.
    LifecycleRule.objects.create(name="bench scoring MQL", order=1, condition="score >= 500 and fit_score >= 30",
                                 to_stage=LifecycleStage.objects.get(key="mql"))
    LifecycleRule.objects.create(name="bench scoring SQL", order=2, to_stage=LifecycleStage.objects.get(key="sql"),
                                 event_type=EventType.objects.get(name="demo_requested"))
    wf = Workflow.objects.create(name="bench scoring", trigger="score", trigger_config={"threshold": 10_000},
                                 definition={"start": "end", "steps": {"end": {"type": "end"}}})
    workflow_publish(workflow=wf)
    return conn


def remove_hooks() -> None:
    """Undo setup_hooks (also what a run that stopped half-way left)."""
    Connection.objects.filter(name="bench scoring").delete()  # with its outbox items
    LifecycleRule.objects.filter(name__startswith="bench scoring").delete()
    Workflow.objects.filter(name="bench scoring").delete()


def load_events(every: int) -> int:
    pv = EventType.objects.get(name="page_view")
    if Event.objects.filter(client_event_id__startswith="bench-score-").exists():
        return 0
    now = timezone.now()
    ids = list(Lead.objects.order_by("pk").values_list("pk", flat=True)[::every])
    batch = []
    for i, lead_id in enumerate(ids):
        batch.append(Event(client_event_id=f"bench-score-{lead_id}", event_type=pv, lead_id=lead_id,
                           occurred_at=now - dt.timedelta(days=i % 60),
                           properties={"url": "/pricing" if i % 3 == 0 else f"/blog/{i % 7}"}))
        if len(batch) == 5000:
            Event.objects.bulk_create(batch)
            batch = []
    Event.objects.bulk_create(batch)
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 leads")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.leads
    load(n)
    emit("leads_in_table", Lead.objects.count(), "rows")
    emit("bench_events_loaded", load_events(10), "rows")
    setup_model()
    remove_hooks()
    # The events earlier runs added for the incremental part: without them
    # every run scores the same events (and a lead's daily cap is not
    # already reached by a rerun the same day).
    Event.objects.filter(client_event_id__startswith="bench-inc-").delete()
    Event.objects.filter(client_event_id__startswith="bench-task-").delete()
    # From zero scores and no history, so that runs are repeatable (each run
    # would otherwise add half a million history rows).
    ScoreHistory.objects.all().delete()
    Lead.objects.exclude(fit_score=0, engagement_score=0, total_score=0).update(
        fit_score=0, engagement_score=0, total_score=0)
    if connection.vendor == "postgresql":
        # The bench's model changes 53% of the leads (measured: 533,4xx of
        # 1,000,000); the floor is timed on that share of the first 100,000.
        floor = update_floor(0.533)
        with connection.cursor() as cursor:
            cursor.execute(f'VACUUM ANALYZE "{Lead._meta.db_table}"')
            cursor.execute(f'VACUUM ANALYZE "{Event._meta.db_table}"')
            cursor.execute(f'VACUUM ANALYZE "{ScoreHistory._meta.db_table}"')
            # The loader's accounts too: in a fresh database their statistics
            # are from migrate time (no rows), the planner then takes
            # UPPER(industry) = 'SOFTWARE' for one account and nested-loops
            # the segment count (1.3 s instead of 0.5 s).
            cursor.execute(f'VACUUM ANALYZE "{Account._meta.db_table}"')

    load_before = os.getloadavg()[0]
    if connection.vendor == "postgresql":
        upd0 = lead_updates()
    start, cpu0, db0 = time.perf_counter(), time.process_time(), backend_cpu()
    changed = services.scores_recompute_all(reason="bench")
    took = time.perf_counter() - start
    emit("bulk_recompute_seconds", round(took, 2), "s")
    emit("bulk_recompute_app_cpu_seconds", round(time.process_time() - cpu0, 2), "s")
    emit("bulk_recompute_db_backend_cpu_seconds", round(backend_cpu() - db0, 2), "s")
    emit("bulk_recompute_load_average_before", round(load_before, 2), "1-min load")
    emit("bulk_recompute_load_average_after", round(os.getloadavg()[0], 2), "1-min load")
    emit("bulk_recompute_leads_per_second", round(Lead.objects.count() / took), "leads/s")
    emit("bulk_recompute_changed", changed, "leads")
    if connection.vendor == "postgresql":
        emit("bulk_update_floor_estimate_seconds", round(floor[0] * changed / max(floor[1], 1), 1), "s")
        # Score writes should be heap-only (HOT) updates: no index touched
        # (no indexed score column, free space in the pages: docs/scoring.md).
        upd1 = lead_updates()
        emit("bulk_recompute_lead_updates", upd1[0] - upd0[0], "rows")
        emit("bulk_recompute_lead_hot_updates", upd1[1] - upd0[1], "rows")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
                           [Lead._meta.db_table] * 2)
            heap, total = cursor.fetchone()
        emit("lead_table_heap_mb", round(heap / 2**20), "MB")
        emit("lead_table_total_mb", round(total / 2**20), "MB")

    pv = EventType.objects.get(name="page_view")
    hooked = setup_hooks()
    ids = list(Lead.objects.values_list("pk", flat=True)[:100_000])
    rng = random.Random(1)
    picked = rng.sample(ids, 1 + 200 + 20 + 1 + 200 + 20)
    run = time.time_ns()  # pages never seen before, also on a rerun over the same database

    pid = backend_pid()

    def new_event(kind: str, k: int, lead_id: int) -> Event:
        return Event.objects.create(client_event_id=f"bench-{kind}-{run}-{k}", event_type=pv, lead_id=lead_id,
                                    occurred_at=timezone.now(), properties={"url": f"/docs/{run}/{kind}{k}"})

    def measure(name: str, kind: str, leads: list[int], count_on: list[int], call) -> int:
        """One new event per lead, then ``call(lead_id, event)`` timed (wall
        and this process's CPU) with nothing wrapped around it; the queries
        are counted on other leads (recording them costs CPU of its own)."""
        times, cpu, changed, db = [], [], 0, 0.0
        for k, lead_id in enumerate(leads):
            event = new_event(kind, k, lead_id)
            t0, c0, d0 = time.perf_counter(), time.process_time(), backend_cpu_of(pid)
            changed += call(lead_id, event) or 0
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            db += backend_cpu_of(pid) - d0
        nqueries = []
        for k, lead_id in enumerate(count_on):
            event = new_event(kind, len(leads) + k, lead_id)
            with CaptureQueriesContext(connection) as queries:
                call(lead_id, event)
            nqueries.append(len(queries))
        emit(f"{name}_p50_ms", round(percentile(times, 0.50), 2), "ms")
        emit(f"{name}_p99_ms", round(percentile(times, 0.99), 2), "ms")
        # This process's CPU only: less distorted by a loaded machine than wall time.
        emit(f"{name}_cpu_p50_ms", round(percentile(cpu, 0.50), 2), "ms")
        emit(f"{name}_cpu_p99_ms", round(percentile(cpu, 0.99), 2), "ms")
        emit(f"{name}_queries_max", max(nqueries), "queries")
        if pid:
            # The database's share of the work: its backend's CPU over the
            # timed calls (clock-tick accounting: a mean, not percentiles).
            emit(f"{name}_db_backend_cpu_mean_ms", round(db * 1000 / len(leads), 2), "ms")
        return changed

    # Warm the configuration caches (rules, push mappings, workflows,
    # lifecycle rules), as a running worker has them: a score change on a
    # lead outside the samples, through the task.
    warm = picked.pop()
    scoring_tasks.events_arrived([new_event("inc", -1, warm).pk])
    # As the task calls it: the rules, the CRM outbox's mappings and nurture's
    # score workflows come from the per-process caches after one
    # configuration-token query (martech.configcache).
    rescored = measure("incremental_rescore", "inc", picked[:200], picked[200:220],
                       lambda lead_id, event: services.scores_recompute(lead_ids=[lead_id], reason="event"))
    # Every sampled lead gained points: each measurement wrote a new score.
    emit("incremental_rescore_leads_changed", rescored, "leads")
    emit("incremental_rescore_outbox_items_queued", OutboxItem.objects.filter(connection=hooked).count(), "items")
    OutboxItem.objects.filter(connection=hooked).delete()
    # The whole event task as the worker runs it (tasks.events_arrived: the
    # event's lead read, the rescoring, then the lifecycle rules), on other leads.
    measure("event_task", "task", picked[220:420], picked[420:440],
            lambda lead_id, event: scoring_tasks.events_arrived([event.pk]))
    remove_hooks()

    counts, db_cpu = [], []
    for _ in range(3):
        t0, d0 = time.perf_counter(), backend_cpu()
        count = matching_leads(SEGMENT).count()
        counts.append(time.perf_counter() - t0)
        db_cpu.append(backend_cpu() - d0)
    emit("segment_5_clause_members", count, "leads")
    emit("segment_5_clause_count_seconds", round(min(counts), 3), "s")
    emit("segment_5_clause_count_seconds_max", round(max(counts), 3), "s")
    emit("segment_5_clause_db_backend_cpu_seconds", round(min(db_cpu), 3), "s")
    if connection.vendor == "postgresql":
        qs = matching_leads(SEGMENT).order_by()
        sql, params = qs.values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, TIMING OFF) SELECT COUNT(*) FROM ({sql}) s", params)
            plan = [row[0] for row in cursor.fetchall()]
        print("\n".join(plan), file=sys.stderr)

    out = ROOT / "bench" / "results" / "scoring.json"
    meta = {"database": connection.vendor, "leads": n, "quick": args.quick, "at": timezone.now().isoformat(),
            "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    result = {"meta": meta, "figures": figures}
    if connection.vendor == "postgresql":
        result["segment_plan"] = plan
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
