"""Attribution: the models with their database writes over a synthetic data
set, and the report API over the materialized results.

Full size: 1,000,000 touchpoints over 200,000 leads and 50,000 opportunities
(12 channels). ``--quick``: a twentieth of that, well under a minute.

1. Model computation: paths are generated in memory (deterministic) and the
   opportunities inserted; then for all position-based models together
   (first, last, last non-direct, linear, time decay, U, W, full path,
   custom), then Markov (learning the removal effects exactly over every
   journey, converting and not; per path and global) and Shapley (simplified: linear in the journeys), every
   opportunity is credited with attribution.engine, in its own currency and
   in the company currency (half the deals in USD, the rest in EUR, GBP and
   JPY, converted with daily rates through attribution.money.RateTable as a
   full run does), and the rows are written
   the way a full attribution_compute writes them (computation._write:
   binary COPY on PostgreSQL, the rollup summed on the way by
   RollupAccumulator and then saved), timed together, wall clock and CPU.
2. Report API: with every model materialized, GET /api/v1/attribution/report
   per group_by (channel, campaign, month), filtered to one currency, and
   /compare, with a date range, and /forecast over the open deals,
   in-process; EXPLAIN ANALYZE of the rollup aggregates goes to the results.
3. Merge: two leads with 50 touches each merged, and the incremental
   recompute after it (bench_merge; goal under 1 s).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/attribution.py [--quick]

Prints one JSON line per figure and writes them to bench/results/attribution.json
(attribution_quick.json with --quick), with the load average and the query plans.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402
from tqdm import tqdm  # noqa: E402

from attribution import engine  # noqa: E402
from attribution.computation import (  # noqa: E402
    ALL_MODELS, RollupAccumulator, _write, path_credit_rows, rollup_refresh, secondary_indexes_suspended,
    stored_company_amount,
)
from django.db.models import Sum  # noqa: E402
from attribution.models import AttributionCredit, ExchangeRate, Opportunity, Pipeline, Touchpoint  # noqa: E402
from attribution.money import RateTable, opportunity_rate_day  # noqa: E402

CHANNELS = ["paid_search", "paid_social", "display", "email", "organic_search", "organic_social",
            "referral", "direct", "events", "other", "partner", "video"]
T0 = datetime(2025, 1, 1, tzinfo=dt_timezone.utc)
PREFIX = "bench-attribution-"
# Half the deals in the company currency (USD), the rest in three others with a rate for every day.
CURRENCIES = ["USD", "EUR", "USD", "GBP", "USD", "JPY"]
RATES = {"EUR": Decimal("1.08"), "GBP": Decimal("1.27"), "JPY": Decimal("0.0067")}
figures: list[dict] = []


def emit(metric: str, value, unit: str) -> None:
    row = {"metric": metric, "value": value, "unit": unit}
    figures.append(row)
    print(json.dumps(row), flush=True)


def peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def synthesize(*, touches: int, leads: int, opportunities: int, seed: int = 11):
    """Journeys per lead (weighted channel choice), opportunities over 1-3
    leads each (40% won, 30% lost, 30% open)."""
    rnd = random.Random(seed)
    weights = [12, 9, 6, 14, 10, 5, 6, 15, 4, 3, 2, 2]
    per_lead: list[list[engine.Touch]] = []
    remaining = touches
    for i in range(leads):
        n = max(1, round(remaining / (leads - i) + rnd.uniform(-2, 2))) if i < leads - 1 else max(1, remaining)
        n = min(n, remaining - (leads - i - 1)) if remaining > leads - i else 1
        remaining -= n
        start = T0.timestamp() + rnd.uniform(0, 300) * 86400
        at = sorted(start + rnd.uniform(0, 60) * 86400 for _ in range(n))
        chans = rnd.choices(CHANNELS, weights, k=n)
        lc = rnd.randrange(n)
        per_lead.append([engine.Touch(c, a, is_lead_creation=(k == lc)) for k, (c, a) in enumerate(zip(chans, at))])
    opps = []
    for j in range(opportunities):
        members = [(j * 4 + k) % leads for k in range(1 + j % 3)]
        path = sorted((t for m in members for t in per_lead[m]), key=lambda t: t.at)
        created = path[len(path) // 2].at
        oc = max(k for k, t in enumerate(path) if t.at <= created)
        path = [engine.Touch(t.channel, t.at, t.is_lead_creation, k == oc) for k, t in enumerate(path)]
        state = j % 10
        close = path[-1].at + 86400
        won = state < 4
        ctx = engine.PathContext(reference_at=close if state < 7 else created, won_at=close if won else None)
        amount = Decimal(1000 + (j * 7919) % 90000) / 100 * 10
        opps.append((members, path, ctx, amount, won, state < 7))
    return per_lead, opps


def journeys(per_lead, opps) -> dict:
    out: Counter = Counter()
    in_opp = set()
    for members, path, _ctx, _amount, won, _closed in opps:
        out[(tuple(t.channel for t in path), won)] += 1
        in_opp.update(members)
    for i, path in enumerate(per_lead):
        if i not in in_opp:
            out[(tuple(t.channel for t in path), False)] += 1
    return out


def create_opportunities(opps) -> list[Opportunity]:
    """The bench's opportunities as rows (the credits' foreign key needs them)."""
    pipeline = Pipeline.objects.get(is_default=True)
    stages = {s.key: s for s in pipeline.stages.all()}
    objs = []
    for j, (_m, _path, ctx, amount, won, closed) in enumerate(opps):
        created = datetime.fromtimestamp(ctx.reference_at, dt_timezone.utc) if not closed else datetime.fromtimestamp(ctx.reference_at - 20 * 86400, dt_timezone.utc)
        stage = stages["closed_won"] if won else stages["closed_lost"] if closed else stages["proposal"]
        objs.append(Opportunity(name=f"{PREFIX}{j}", amount=amount, currency=CURRENCIES[j % len(CURRENCIES)],
                                pipeline=pipeline, stage=stage, created_at=created,
                                closed_at=datetime.fromtimestamp(ctx.reference_at, dt_timezone.utc) if closed else None))
    with transaction.atomic():
        return Opportunity.objects.bulk_create(objs, batch_size=5000)


from rss import backend_cpu  # noqa: E402  (bench/rss.py)


class Timer:
    """Wall clock and this process's CPU time (the database server's CPU is not in it)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def materialize(models: dict, rows_of_opps, created, label: str) -> None:
    """What attribution_compute does after loading: every credit row of
    ``models`` (name -> weight function) built by computation.path_credit_rows
    and streamed into the database with attribution.computation's writer
    (binary COPY on PostgreSQL, the table's secondary indexes built after
    when it starts empty), replacing the old rows, and the rollup summed on
    the way and saved, in one transaction: that whole is ``{label}_s``.
    Then, untimed in it, the engine alone (weights and Decimal allocation of
    every path, no rows) for ``{label}_engine_cpu_s``."""

    # As attribution_compute: one query before the COPY (the connection is busy during it), then in memory.
    rates = RateTable.load()

    def rows():
        for opp, (_m, path, ctx, amount, won, closed) in zip(tqdm(created, desc=label, unit="opp", file=sys.stderr, mininterval=5), rows_of_opps):
            converted = rates.convert(amount, opp.currency, opportunity_rate_day(
                created_at=opp.created_at, closed_at=opp.closed_at, is_closed=closed))
            common = (opp.currency, won, closed, opp.created_at, opp.closed_at, converted.rate_date if converted else None)
            touch_cols = [(opp.pk, None, t.channel, None, datetime.fromtimestamp(t.at, dt_timezone.utc), t.is_opportunity_creation)
                          for t in path]
            yield from path_credit_rows(models, path, ctx, amount, touch_cols, common,
                                        stored_company_amount(converted, opp.currency, rates.company))

    db0 = backend_cpu()
    with Timer() as total:
        with transaction.atomic():
            AttributionCredit.objects.filter(model__in=list(models)).delete()
            rollup = RollupAccumulator()
            with secondary_indexes_suspended():
                written = _write(rollup.feed(rows()))
            with Timer() as roll:
                rollup.replace(models=list(models))
    db_cpu = backend_cpu() - db0
    with Timer() as eng:
        for _m, path, ctx, amount, _won, _closed in rows_of_opps:
            for _model, weights in engine.path_weights(models, path, ctx):
                engine.allocate(amount, weights)
    emit(f"{label}_s", round(total.wall, 2), "s")
    emit(f"{label}_cpu_s", round(total.cpu, 2), "s")
    emit(f"{label}_db_backend_cpu_s", round(db_cpu, 2), "s")
    emit(f"{label}_engine_cpu_s", round(eng.cpu, 2), "s")
    emit(f"{label}_rollup_s", round(roll.wall, 2), "s")
    emit(f"{label}_credits", written, "rows")


def bench_models(per_lead, opps, created) -> None:
    position = ["first_touch", "last_touch", "last_non_direct", "linear", "time_decay", "u_shaped", "w_shaped", "full_path", "custom"]
    custom = {"first": 25, "lead_creation": 25, "opportunity_creation": 25, "last": 15, "other": 10}
    materialize({m: engine.weigher(m, custom_weights=custom) for m in position}, opps, created, "position_models_all")
    for model in ("markov", "markov_global", "shapley"):
        with Timer() as learn:
            j = journeys(per_lead, opps)
            values = engine.channel_values(model, j)
        emit(f"{model}_learn_s", round(learn.wall, 2), "s")
        emit(f"{model}_distinct_journeys", len(j), "journeys")
        with Timer() as total:
            materialize({model: engine.weigher(model, channel_values=values)}, opps, created, f"{model}_credit")
        emit(f"{model}_total_s", round(learn.wall + total.wall, 2), "s")
    emit("models_peak_rss", peak_mib(), "MiB")


MERGE_TOUCHES = 50


def bench_merge() -> None:
    """Two leads with 50 touches each (one an hour, channels in turn), each
    on a won deal, credited; then lead_merge and the incremental recompute
    the lead_merged task runs (attribution_refresh_leads: the kept lead's
    touchpoints rebuilt over both histories, its two deals' credits under
    every model and their rollup days), timed apart: ``merge_recompute_s``
    (goal < 1 s) and ``merge_total_s`` with the merge itself. Runs with the
    credits table full from the model steps, as in production. The
    data-driven models use their stored channel values, as an incremental
    run does (stored here first if there are none)."""
    from attribution import tasks
    from attribution.computation import attribution_compute
    from attribution.models import AttributionRun, OpportunityContactRole
    from attribution.services import opportunity_set_contact
    from attribution.touchpoints import touchpoints_rebuild
    from martech.models import Event, EventType, Lead
    from martech.services.leads import lead_merge

    event_type = EventType.objects.get(name="email_clicked")
    pipeline = Pipeline.objects.get(is_default=True)
    won = pipeline.stages.get(key="closed_won")
    added_runs = [AttributionRun.objects.create(model=m, channel_values={c: 1.0 / (i + 1) for i, c in enumerate(CHANNELS)}).pk
                  for m in sorted(engine.DATA_DRIVEN) if not AttributionRun.objects.filter(model=m).exists()]
    leads = [Lead.objects.create(email=f"{PREFIX}{k}@example.org") for k in range(2)]
    start = T0.replace(year=2026)
    events = []
    for k, lead in enumerate(leads):
        for i in range(MERGE_TOUCHES):
            channel = CHANNELS[(i + k) % len(CHANNELS)]
            events.append(Event(client_event_id=f"{PREFIX}merge-{k}-{i}", event_type=event_type, lead=lead,
                                occurred_at=start + timedelta(hours=i, minutes=7 * k), channel=channel,
                                utm_source="bench"))
    Event.objects.bulk_create(events)
    touchpoints_rebuild(lead_ids=[lead.pk for lead in leads])
    deals = []
    for k, lead in enumerate(leads):
        deal = Opportunity.objects.create(name=f"{PREFIX}merge-{k}", amount=Decimal("9999.99"), pipeline=pipeline, stage=won,
                                          created_at=start + timedelta(hours=30), closed_at=start + timedelta(days=5))
        opportunity_set_contact(opportunity=deal, lead=lead, is_primary=True)
        deals.append(deal)
    try:
        attribution_compute(opportunity_ids=[d.pk for d in deals])
        emit("merge_touchpoints_before", Touchpoint.objects.filter(lead__in=leads).count(), "rows")
        with Timer() as merge:
            lead_merge(primary=leads[0], duplicate=leads[1])
        with Timer() as recompute:
            result = tasks.lead_merged(leads[0].pk)
        emit("merge_recompute_s", round(recompute.wall, 3), "s")
        emit("merge_recompute_cpu_s", round(recompute.cpu, 3), "s")
        emit("merge_total_s", round(merge.wall + recompute.wall, 3), "s")
        emit("merge_recompute_credits", result.get("credits", 0), "rows")
        assert OpportunityContactRole.objects.filter(lead=leads[0]).count() == 2
    finally:
        Lead.objects.filter(email__startswith=PREFIX).delete()
        AttributionRun.objects.filter(pk__in=added_runs).delete()


def explain(sql_params: tuple[str, list]) -> list[str]:
    if connection.vendor != "postgresql":
        return []
    sql, params = sql_params
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return [r[0] for r in cursor.fetchall()]


def bench_report(repeats: int) -> dict:
    """GET the report and comparison APIs in-process with a date range, over
    the materialized results of every model. Returns the query plans of the
    report's two rollup aggregates."""
    from attribution import selectors
    from attribution.models import AttributionRollup

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE attribution_attributioncredit")
            cursor.execute("ANALYZE attribution_attributionrollup")
    emit("rollup_rows", AttributionRollup.objects.count(), "rows")
    user, _ = get_user_model().objects.get_or_create(username="bench-attribution", defaults={"is_staff": True, "is_superuser": True})
    client = APIClient()
    client.force_authenticate(user)
    params = {"start": "2025-01-01", "end": "2025-12-31"}
    for name, path, extra in [
        ("channel", "report", {"model": "linear", "group_by": "channel"}),
        ("campaign", "report", {"model": "linear", "group_by": "campaign"}),
        ("month", "report", {"model": "linear", "group_by": "month"}),
        ("channel_eur", "report", {"model": "linear", "group_by": "channel", "currency": "EUR"}),
        ("compare_channel", "compare", {"group_by": "channel"}),
        ("forecast", "forecast", {}),
    ]:
        lat, cpu = [], []
        for _ in range(repeats):
            with Timer() as t:
                resp = client.get(f"/api/v1/attribution/{path}", {**(params if path != "forecast" else {}), **extra})
            lat.append(t.wall * 1000)
            cpu.append(t.cpu * 1000)
            assert resp.status_code == 200, resp.content[:300]
        lat.sort()
        emit(f"report_{name}_p50", round(statistics.median(lat), 1), "ms")
        emit(f"report_{name}_max", round(lat[-1], 1), "ms")
        emit(f"report_{name}_cpu_p50", round(statistics.median(cpu), 1), "ms")
    user.delete()
    start, end = datetime(2025, 1, 1).date(), datetime(2025, 12, 31).date()
    won = (AttributionRollup.objects.filter(selectors._date_range("day", start, end), model="linear", basis="won")
           .values("channel").annotate(r=Sum("credit"), c=Sum("weight")).order_by())
    created = (AttributionRollup.objects.filter(selectors._date_range("day", start, end), model="linear", basis="created")
               .values("channel").annotate(p=Sum("credit"), n=Sum("first_of_channel")).order_by())
    return {"won_by_channel": explain(won.query.sql_with_params()), "created_by_channel": explain(created.query.sql_with_params())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 20 if args.quick else 1
    size = {"touches": 1_000_000 // scale, "leads": 200_000 // scale, "opportunities": 50_000 // scale}
    emit("touchpoints", size["touches"], "rows")
    emit("leads", size["leads"], "rows")
    emit("opportunities", size["opportunities"], "rows")
    t = time.perf_counter()
    per_lead, opps = synthesize(**size)
    emit("synthesize_s", round(time.perf_counter() - t, 2), "s")
    load_before = os.getloadavg()
    Opportunity.objects.filter(name__startswith=PREFIX).delete()
    ExchangeRate.objects.filter(source=PREFIX).delete()
    day0 = T0.date() - timedelta(days=31)
    ExchangeRate.objects.bulk_create([
        ExchangeRate(currency=c, date=day0 + timedelta(days=d), rate=r * (1 + Decimal(d % 7 - 3) / 100), source=PREFIX)
        for c, r in RATES.items() for d in range(500)
    ], ignore_conflicts=True)
    plans: dict = {}
    try:
        with Timer() as t:
            created = create_opportunities(opps)
        emit("opportunities_insert_s", round(t.wall, 2), "s")
        # Credited in the order a full run reads the deals: by creation (computation._opportunities).
        order = sorted(range(len(created)), key=lambda k: (created[k].created_at, created[k].pk))
        bench_models(per_lead, [opps[k] for k in order], [created[k] for k in order])
        plans = bench_report(repeats=5 if args.quick else 10)
        bench_merge()
    finally:
        Opportunity.objects.filter(name__startswith=PREFIX).delete()
        ExchangeRate.objects.filter(source=PREFIX).delete()
        rollup_refresh(models=list(ALL_MODELS))  # the rollup again matches what credits are left
    emit("peak_rss", peak_mib(), "MiB")
    emit("process_cpu_s", round(time.process_time(), 2), "s")
    out = ROOT / "bench" / "results" / ("attribution_quick.json" if args.quick else "attribution.json")
    out.write_text(json.dumps({
        "quick": args.quick, "database": connection.vendor, "loadavg_start": load_before, "loadavg": os.getloadavg(),
        "cpu_count": os.cpu_count(), "figures": figures, "plans": plans,
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
