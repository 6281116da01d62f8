"""Lead routing: decision latency with 200 rules and 500 reps, and bulk
routing throughput with 4 worker processes.

Runs against the DATABASE_URL database (migrated). Everything it makes is
named with a unique run prefix and deleted at the end; it publishes its own
rule set (the live one during the run) and deletes it after.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_routing_bench python bench/routing.py [--quick]

1. Decision: 500 reps in 5 weighted teams (each with working hours, time
   zones, a current out-of-office for some), 200 territory rules of which
   the last ones match the test leads (so every rule is checked). One
   ``lead_route`` call per lead (its own transaction: lead lock, rule match,
   team lock, availability, insert, commit) and one ``lead_preview``.
2. Throughput: 100,000 leads (--quick: 10,000) routed by 4 processes that
   take batches of 500 ids from a shared queue and call
   ``leads_route_batch``; 10% of the batches are sent twice (a redelivered
   task). Leads spread over 8 weighted teams (10 reps each, weights 1-5).
   Checks: no lead has more than one assignment, every lead has one, and
   each rep's share of their team is within 1% of their weight share.
3. Freshness: ``lead_route`` p99 with the configuration freshness check on
   (the ``routing.config`` token read with the lead, what runs in
   production) and off (the rules kept per process without a check, as
   before), alternating lead by lead on the decision set-up (goal: on
   within 10% of off).
4. Rollbacks: routing throughput of 4 processes calling ``lead_route`` one
   lead at a time, quiet and then while another process rolls the live rule
   set back to one of two versions every second (--quick: 2,000 leads
   each, else 10,000; in four alternating parts each, so the shared
   machine's changing load weighs on both alike). Goal: 0 errors, every lead assigned once, and at
   least 80% of the quiet throughput; conflicts run again by
   ``martech.db`` are counted too.

Prints one JSON line per figure and writes them to bench/results/routing.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.utils import timezone  # noqa: E402

from martech.models import Lead, LifecycleStage  # noqa: E402
from routing import services  # noqa: E402
from routing.models import Assignment, OutOfOffice, Rep, Rule, RuleSet, Team, Territory  # noqa: E402

figures: list[dict] = []
COUNTRIES = ["US", "CA", "GB", "DE", "FR", "ES", "IT", "NL"]


def emit(metric: str, value, unit: str) -> None:
    row = {"metric": metric, "value": value, "unit": unit}
    figures.append(row)
    print(json.dumps(row), flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_leads(prefix: str, n: int, *, countries: list[str], postal: str = "") -> list[int]:
    stage = LifecycleStage.objects.get(key="lead")
    made = []
    for start in range(0, n, 5000):
        rows = [Lead(email=f"{prefix}{i}@routing.example", country=countries[i % len(countries)], postal_code=postal,
                     lifecycle_stage=stage) for i in range(start, min(n, start + 5000))]
        made.extend(l.pk for l in Lead.objects.bulk_create(rows))
        if start and start % 20000 == 0:
            print(f"  {start} leads", file=sys.stderr, flush=True)
    return made


def cleanup(prefix: str) -> None:
    Assignment.objects.filter(lead__email__startswith=prefix).delete()
    Lead.objects.filter(email__startswith=prefix).delete()
    rule_sets = RuleSet.objects.filter(name__startswith=prefix)
    Assignment.objects.filter(rule_set__in=rule_sets).delete()
    Rule.objects.filter(rule_set__in=rule_sets).delete()
    rule_sets.delete()
    Territory.objects.filter(name__startswith=prefix).delete()
    Rep.objects.filter(email__startswith=prefix).delete()
    Team.objects.filter(name__startswith=prefix).delete()
    services._clear_cache()


def setup_decision(prefix: str) -> None:
    now = timezone.now()
    zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "Australia/Sydney"]
    teams = [Team.objects.create(name=f"{prefix}team{t}", method=Team.Method.WEIGHTED) for t in range(5)]
    reps = Rep.objects.bulk_create([
        Rep(name=f"{prefix}rep{i}", email=f"{prefix}rep{i}@sales.example", team=teams[i % 5], weight=1 + i % 5,
            time_zone=zones[i % 5], working_hours={} if i % 2 else {d: [["00:00", "23:59"]] for d in
                                                                    ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
            max_open_leads=None if i % 3 else 10_000)
        for i in range(500)
    ])
    OutOfOffice.objects.bulk_create([OutOfOffice(rep=r, starts_at=now - timezone.timedelta(hours=1),
                                                 ends_at=now + timezone.timedelta(hours=8)) for r in reps[::10]])
    rs = RuleSet.objects.create(name=f"{prefix}decision", fallback_team=teams[0])
    rules = []
    for k in range(200):
        # 199 rules that do not match the test leads (postal prefix "9..."),
        # then one that does: every lead is checked against all 200.
        terr = Territory.objects.create(name=f"{prefix}t{k}", countries=[COUNTRIES[k % 8]],
                                        postal_prefixes=[f"{k:03d}"] if k < 199 else [])
        rules.append(Rule(rule_set=rs, order=k, name=f"{prefix}r{k}", territory=terr, action=Rule.Action.TEAM,
                          team=teams[k % 5], condition=""))
    Rule.objects.bulk_create(rules)
    services.rule_set_publish(rule_set=rs)


def measure_decision(prefix: str, n: int) -> None:
    country = COUNTRIES[199 % 8]
    lead_ids = make_leads(f"{prefix}d", n + 20, countries=[country], postal="99999")
    for lead_id in lead_ids[:20]:  # warm-up: caches, plans
        services.lead_route(lead_id=lead_id, trigger="api")
    route_ms, preview_ms, queries, route_cpu, preview_cpu = [], [], [], [], []
    load_before = os.getloadavg()[0]

    def count(execute, sql, params, many, context):
        queries[-1] += 1
        return execute(sql, params, many, context)

    for lead_id in lead_ids[20:]:
        c, t = time.process_time(), time.perf_counter()
        services.lead_preview(lead_id=lead_id)
        preview_ms.append((time.perf_counter() - t) * 1000)
        preview_cpu.append((time.process_time() - c) * 1000)
        queries.append(0)
        with connection.execute_wrapper(count):
            c, t = time.process_time(), time.perf_counter()
            a, _ = services.lead_route(lead_id=lead_id, trigger="api")
            route_ms.append((time.perf_counter() - t) * 1000)
            route_cpu.append((time.process_time() - c) * 1000)
    assert a.rule_name == f"{prefix}r199", a.rule_name
    emit("decision_rules", 200, "rules")
    emit("decision_reps", Rep.objects.filter(email__startswith=prefix).count(), "reps")
    emit("decision_samples", len(route_ms), "leads")
    emit("route_p50", round(percentile(route_ms, 0.5), 2), "ms")
    emit("route_p99", round(percentile(route_ms, 0.99), 2), "ms")
    emit("preview_p50", round(percentile(preview_ms, 0.5), 2), "ms")
    emit("preview_p99", round(percentile(preview_ms, 0.99), 2), "ms")
    emit("route_queries", statistics.mean(queries), "queries")
    # This process's CPU per call (the Python side; the database's own work
    # is not in it): on a shared, loaded machine wall-clock time includes
    # waiting for a core, so read these beside the wall-clock figures.
    emit("route_cpu_p50", round(percentile(route_cpu, 0.5), 2), "ms")
    emit("route_cpu_p99", round(percentile(route_cpu, 0.99), 2), "ms")
    emit("preview_cpu_p50", round(percentile(preview_cpu, 0.5), 2), "ms")
    emit("preview_cpu_p99", round(percentile(preview_cpu, 0.99), 2), "ms")
    emit("decision_loadavg_1m", round((load_before + os.getloadavg()[0]) / 2, 2), "load (mean of start and end)")


def setup_throughput(prefix: str) -> dict[int, dict[int, int]]:
    teams = [Team.objects.create(name=f"{prefix}bulk{t}", method=Team.Method.WEIGHTED) for t in range(8)]
    weights: dict[int, dict[int, int]] = {}
    for t, team in enumerate(teams):
        reps = Rep.objects.bulk_create([Rep(name=f"{prefix}b{t}-{i}", email=f"{prefix}b{t}-{i}@sales.example", team=team,
                                            weight=1 + i % 5, working_hours={}) for i in range(10)])
        weights[team.pk] = {r.pk: r.weight for r in reps}
    rs = RuleSet.objects.create(name=f"{prefix}bulk", fallback_team=teams[0])
    for k, country in enumerate(COUNTRIES):
        terr = Territory.objects.create(name=f"{prefix}bt{k}", countries=[country])
        Rule.objects.create(rule_set=rs, order=k, name=f"{prefix}b{country}", territory=terr, action=Rule.Action.TEAM,
                            team=teams[k])
    services.rule_set_publish(rule_set=rs)
    return weights


def worker(queue, results) -> None:
    connections.close_all()  # never share the parent's connection
    routed = Counter()
    cpu = time.process_time()
    while True:
        batch = queue.get()
        if batch is None:
            break
        for attempt in range(5):
            try:
                routed.update(services.leads_route_batch(lead_ids=batch, trigger="api", reason="bench"))
                break
            except Exception as exc:  # noqa: BLE001 - a deadlock retry is part of the figure
                if "deadlock" not in str(exc) or attempt == 4:
                    raise
    results.put((dict(routed), time.process_time() - cpu))
    connections.close_all()


def measure_throughput(prefix: str, n: int, workers: int, batch_size: int) -> None:
    weights = setup_throughput(prefix)
    t = time.perf_counter()
    lead_ids = make_leads(f"{prefix}t", n, countries=COUNTRIES)
    emit("throughput_load_s", round(time.perf_counter() - t, 1), "s")
    batches = [lead_ids[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(5)
    resent = rng.sample(batches, max(1, len(batches) // 10))
    jobs = batches + resent
    rng.shuffle(jobs)
    connections.close_all()
    ctx = mp.get_context("fork")
    queue, results = ctx.Queue(), ctx.Queue()
    for job in jobs:
        queue.put(job)
    for _ in range(workers):
        queue.put(None)
    procs = [ctx.Process(target=worker, args=(queue, results)) for _ in range(workers)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for p in procs:
        p.start()
    outcomes = [results.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    if any(p.exitcode for p in procs):
        raise SystemExit("a worker failed")
    total = Counter()
    for counts, _ in outcomes:
        total.update(counts)
    emit("throughput_leads", n, "leads")
    emit("throughput_workers", workers, "processes")
    emit("throughput_batch_size", batch_size, "leads")
    emit("throughput_resent_batches", len(resent), "batches")
    emit("throughput_leads_per_s", round(n / elapsed, 1), "leads/s")
    emit("throughput_worker_cpu_s", round(sum(c for _, c in outcomes), 1), "s")
    emit("throughput_worker_cpu_ms_per_lead", round(sum(c for _, c in outcomes) / n * 1000, 3), "ms")
    emit("throughput_loadavg_1m", round((load_before + os.getloadavg()[0]) / 2, 2), "load (mean of start and end)")
    emit("throughput_kept_on_resend", total["kept"], "leads")
    rows = Assignment.objects.filter(lead__email__startswith=f"{prefix}t")
    per_lead = Counter(rows.values_list("lead_id", flat=True))
    emit("leads_assigned_twice", sum(1 for v in per_lead.values() if v > 1), "leads")
    emit("leads_without_assignment", n - len(per_lead), "leads")
    got = Counter(dict(rows.values_list("rep_id").annotate(n=django.db.models.Count("id")).values_list("rep_id", "n")))
    worst = 0.0
    for reps in weights.values():
        team_total = sum(got[r] for r in reps)
        weight_total = sum(reps.values())
        for rep_id, w in reps.items():
            worst = max(worst, abs(got[rep_id] / team_total - w / weight_total) / (w / weight_total) * 100)
    emit("weighted_share_max_deviation", round(worst, 3), "% of the rep's weight share")


def measure_freshness(prefix: str, n: int) -> None:
    country = COUNTRIES[199 % 8]
    lead_ids = make_leads(f"{prefix}f", 2 * n + 20, countries=[country], postal="99999")
    samples: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i, lead_id in enumerate(lead_ids):
            fresh = i % 2 == 0
            services.config._FRESHNESS = fresh
            t = time.perf_counter()
            services.lead_route(lead_id=lead_id, trigger="api")
            if i >= 20:  # the first ones warm both paths
                samples[fresh].append((time.perf_counter() - t) * 1000)
    finally:
        services.config._FRESHNESS = True
    on, off = percentile(samples[True], 0.99), percentile(samples[False], 0.99)
    emit("freshness_samples", len(samples[True]), "leads each")
    emit("route_p50_freshness_on", round(percentile(samples[True], 0.5), 2), "ms")
    emit("route_p50_freshness_off", round(percentile(samples[False], 0.5), 2), "ms")
    emit("route_p99_freshness_on", round(on, 2), "ms")
    emit("route_p99_freshness_off", round(off, 2), "ms")
    emit("route_p99_freshness_ratio", round(on / off, 3), "on / off (goal <= 1.10)")


def route_worker(queue, results) -> None:
    """Routes one lead at a time (``lead_route``: its own transaction, run
    again by martech.db on a conflict); errors are counted, not retried."""
    import logging

    connections.close_all()
    retries = []

    class Count(logging.Handler):
        def emit(self, record):
            retries.append(record.getMessage())

    logging.getLogger("martech.db").addHandler(Count(level=logging.WARNING))
    errors, routed = [], 0
    while True:
        batch = queue.get()
        if batch is None:
            break
        for lead_id in batch:
            try:
                services.lead_route(lead_id=lead_id, trigger="api", reason="bench")
                routed += 1
            except Exception as exc:  # noqa: BLE001 - counted: the goal is none
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
    results.put((routed, errors, len(retries)))
    connections.close_all()


def roll_worker(versions: list[int], stop, results) -> None:
    connections.close_all()
    rolled, errors, i = 0, [], 0
    while not stop.is_set():
        try:
            services.rule_set_rollback(to=RuleSet.objects.get(pk=versions[i % 2]))
            rolled += 1
        except Exception as exc:  # noqa: BLE001 - counted: the goal is none
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        i += 1
        stop.wait(1.0)
    results.put((rolled, errors))
    connections.close_all()


def _route_phase(lead_ids: list[int], workers: int, *, rolling: list[int] | None) -> tuple[float, int, list, int, int, list]:
    connections.close_all()
    ctx = mp.get_context("fork")
    queue, results, roll_results, stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    for i in range(0, len(lead_ids), 50):
        queue.put(lead_ids[i:i + 50])
    for _ in range(workers):
        queue.put(None)
    procs = [ctx.Process(target=route_worker, args=(queue, results)) for _ in range(workers)]
    roller = ctx.Process(target=roll_worker, args=(rolling, stop, roll_results)) if rolling else None
    start = time.perf_counter()
    if roller:
        roller.start()
    for p in procs:
        p.start()
    outcomes = [results.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    rolled, roll_errors = 0, []
    if roller:
        stop.set()
        rolled, roll_errors = roll_results.get()
        roller.join()
    routed = sum(o[0] for o in outcomes)
    errors = [e for o in outcomes for e in o[1]]
    retries = sum(o[2] for o in outcomes)
    return routed / elapsed, routed, errors, retries, rolled, roll_errors


def measure_rollbacks(prefix: str, n: int, workers: int) -> None:
    """Quiet, then with rollbacks every second, on the throughput set-up's
    teams (the bulk rule set live and a second version with its rules in
    the opposite order, four of them assigning to capped reps)."""
    live = services.live_rule_set()
    other = services.rule_set_copy(source=live, note="bench: the other version")
    other.name = live.name
    other.save(update_fields=["name"])
    rules = list(other.rules.order_by("order"))
    for rule, rep in zip(rules[:4], Rep.objects.filter(email__startswith=f"{prefix}b").order_by("id")[::10]):
        Rep.objects.filter(pk=rep.pk).update(max_open_leads=10_000_000)  # capped: the rep lock path
        rule.action, rule.rep = Rule.Action.REP, rep
        rule.save()
    for i, rule in enumerate(reversed(rules)):
        Rule.objects.filter(pk=rule.pk).update(order=i)
    other = services.rule_set_publish(rule_set=other)
    services.config_changed()
    versions = [live.pk, other.pk]
    quiet_ids = make_leads(f"{prefix}q", n, countries=COUNTRIES)
    rolled_ids = make_leads(f"{prefix}r", n, countries=COUNTRIES)
    # Alternating quiet and rolling parts, so a load that changes on the
    # shared machine weighs on both alike.
    parts = 4
    size = -(-n // parts)
    totals = {False: [0.0, 0], True: [0.0, 0]}
    quiet_errors, busy_errors, roll_errors, quiet_retries, busy_retries, rolled = [], [], [], 0, 0, 0
    for k in range(parts):
        for rolling, ids in ((False, quiet_ids), (True, rolled_ids)):
            chunk = ids[k * size:(k + 1) * size]
            if not chunk:
                continue
            rate, routed, errs, retries, rolls, roll_errs = _route_phase(chunk, workers, rolling=versions if rolling else None)
            totals[rolling][0] += routed / rate
            totals[rolling][1] += routed
            (busy_errors if rolling else quiet_errors).extend(errs)
            roll_errors.extend(roll_errs)
            rolled += rolls
            if rolling:
                busy_retries += retries
            else:
                quiet_retries += retries
    quiet = totals[False][1] / totals[False][0]
    busy = totals[True][1] / totals[True][0]
    emit("rollback_leads_per_phase", n, "leads")
    emit("rollback_workers", workers, "processes")
    emit("quiet_route_leads_per_s", round(quiet, 1), "leads/s")
    emit("rolling_route_leads_per_s", round(busy, 1), "leads/s")
    emit("rolling_throughput_ratio", round(busy / quiet, 3), "rolling / quiet (goal >= 0.80)")
    emit("rollbacks_during_routing", rolled, "rollbacks")
    emit("rolling_errors", len(busy_errors) + len(quiet_errors) + len(roll_errors), "errors (goal 0)")
    emit("rolling_conflict_retries", busy_retries + quiet_retries, "transactions run again")
    for message in (busy_errors + quiet_errors + roll_errors)[:5]:
        print(f"  error: {message}", file=sys.stderr)
    rows = Assignment.objects.filter(lead__email__startswith=f"{prefix}q") | \
        Assignment.objects.filter(lead__email__startswith=f"{prefix}r")
    per_lead = Counter(rows.values_list("lead_id", flat=True))
    emit("rolling_leads_assigned_twice", sum(1 for v in per_lead.values() if v > 1), "leads")
    emit("rolling_leads_without_assignment", 2 * n - len(per_lead), "leads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 leads, 300 decisions")
    parser.add_argument("--leads", type=int, default=None)
    parser.add_argument("--decisions", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rollback-leads", type=int, default=None)
    args = parser.parse_args()
    n = args.leads or (10_000 if args.quick else 100_000)
    decisions = args.decisions or (300 if args.quick else 2000)
    rollback_leads = args.rollback_leads or (2_000 if args.quick else 10_000)
    settings.DEBUG = False
    prefix = f"rb{uuid.uuid4().hex[:6]}-"
    try:
        setup_decision(prefix)
        measure_decision(prefix, decisions)
        measure_freshness(prefix, decisions)
        measure_throughput(prefix, n, args.workers, args.batch_size)
        measure_rollbacks(prefix, rollback_leads, args.workers)
    finally:
        connections.close_all()
        cleanup(prefix)
    out = ROOT / "bench" / "results" / "routing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"database": connection.vendor, "leads": n, "decisions": decisions, "rollback_leads": rollback_leads,
            "workers": args.workers,
            "quick": args.quick, "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "at": timezone.now().isoformat()}
    out.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
