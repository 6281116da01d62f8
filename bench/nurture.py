"""Nurture engine throughput, lag and memory; segment enrollment time.

Runs against the DATABASE_URL database (migrated). Creates N leads with
email consent under a unique prefix, a segment of exactly those leads and a
one-email workflow triggered by entering it, enrolls the whole segment with
``workflow_segment_sync`` (what the schedule runs: membership in SQL, then
``workflow_enroll_bulk``), spreads the due times over the run as if steps fell due at 1,000/s, then
starts 2 worker processes that each loop ``enrollments_advance_due`` (SKIP
LOCKED batches) with Django's locmem email backend until every enrollment is
done. Repeated at N/10 to show whether peak worker memory grows with N.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/nurture.py [--quick]

Prints one JSON line per figure and writes them to bench/results/nurture.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core import mail  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from martech.models import ConsentRecord, Lead, LifecycleStage  # noqa: E402
from nurture.models import Enrollment, Message, Workflow  # noqa: E402

RATE = 1000  # due steps per second offered to the workers


def worker(workflow_id: int, batch: int, smtp_port: int | None = None, tick: float = 0.1) -> None:
    """Loop the engine until the workflow's enrollments are done and its
    messages settled (sent, skipped, failed or in doubt); ``tick``: the sleep
    when a run found nothing (the scheduler's period, in the crash run)."""
    from nurture.engine import enrollments_advance_due

    settings.DEBUG = False
    if smtp_port:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_port
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    else:
        settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    steps = 0
    unsettled = Message.objects.filter(workflow_id=workflow_id, status__in=["queued", "sending"])
    while (Enrollment.objects.filter(workflow_id=workflow_id, status="active").exists() or unsettled.exists()):
        done = enrollments_advance_due(batch_size=batch, max_batches=1)
        mail.outbox = []  # locmem keeps every message; an ESP would not
        steps += done
        if not done:
            time.sleep(tick)
    from rss import own_peak_rss_kb  # bench/rss.py: this process's own peak, not the parent's

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"steps": steps, "maxrss_kb": own_peak_rss_kb(), "cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one_run(n: int, batch: int, workers: int) -> dict:
    prefix = f"nb{uuid.uuid4().hex[:8]}-"
    stage = LifecycleStage.objects.get(key="lead")
    for i in range(0, n, 5000):
        leads = Lead.objects.bulk_create([Lead(email=f"{prefix}{j}@bench.example", lifecycle_stage=stage)
                                          for j in range(i, min(n, i + 5000))])
        ConsentRecord.objects.bulk_create([ConsentRecord(lead=l, channel="email", status="granted", source="bench") for l in leads])
    from martech.scoring.models import Segment
    from martech.scoring.services import segment_save
    from nurture.services import workflow_publish, workflow_segment_sync

    # The "entering a segment" trigger: a segment of exactly these N leads,
    # enrolled by the same sync the schedule runs.
    segment = segment_save(name=f"{prefix}segment", condition=f'email starts_with "{prefix}"')
    wf = Workflow.objects.create(name=f"{prefix}bench", trigger="segment", trigger_config={"segment": segment.pk},
                                 definition={"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Hi {{first_name|there}}", "body": "Read https://example.com/x", "next": "end"},
        "end": {"type": "end"}}})
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    try:
        t, cpu = time.perf_counter(), time.process_time()
        enrolled = workflow_segment_sync(workflow_id=wf.pk)
        enroll_s, enroll_cpu = time.perf_counter() - t, time.process_time() - cpu
        assert enrolled == n, (enrolled, n)
        # Due times spread as if steps fell due at RATE per second from now.
        start = timezone.now() + timedelta(seconds=5)
        with connection.cursor() as c:
            c.execute(
                "UPDATE nurture_enrollment SET due_at = %s + (row_number_sub.rn / %s) * interval '1 second' "
                "FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM nurture_enrollment WHERE workflow_id = %s) "
                "row_number_sub WHERE nurture_enrollment.id = row_number_sub.id",
                [start, float(RATE), wf.pk],
            )
            c.execute("ANALYZE nurture_enrollment")
        t = time.perf_counter()
        workers_started = timezone.now()
        load_start = os.getloadavg()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(wf.pk), "--batch", str(batch)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(workers)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t
        sent = Message.objects.filter(workflow=wf, status="sent").count()
        assert sent == n, f"sent {sent} of {n}"
        dup = Message.objects.filter(workflow=wf).count() - n
        # A step cannot run before the workers start; the setup above (the
        # spreading UPDATE) may outlast the first due times, so lag counts
        # from the later of the due time and the workers' start.
        lags = [
            (sent_at - max(due, workers_started)).total_seconds()
            for sent_at, due in Message.objects.filter(workflow=wf).values_list("sent_at", "execution__due_at")
        ]
        offered = n / RATE  # the run cannot finish before the last step falls due
        early = Enrollment.objects.filter(workflow=wf, executions__due_at__lt=workers_started).distinct().count()
        return {
            "n": n,
            "enroll_s": enroll_s,
            "enroll_cpu_s": enroll_cpu,
            "due_before_workers_started": early,
            "worker_cpu_s": [round(o["cpu_s"], 1) for o in outs],
            "load_at_workers_start": load_start,
            "load_at_end": os.getloadavg(),
            "wall_s": wall,
            "email_steps_per_s": n / max(wall - 1, 1e-9) if wall > offered + 1 else None,
            "throughput_backlog": None,
            "lag_p50_s": percentile(lags, 0.5),
            "lag_p95_s": percentile(lags, 0.95),
            "lag_max_s": max(lags),
            "worker_maxrss_mb": max(o["maxrss_kb"] for o in outs) / 1024,
            "duplicates": dup,
            "steps_per_worker": [o["steps"] for o in outs],
        }
    finally:
        Enrollment.objects.filter(workflow=wf).delete()
        Workflow.objects.filter(pk=wf.pk).delete()
        Segment.objects.filter(pk=segment.pk).delete()
        Lead.objects.filter(email__startswith=prefix).delete()


def backlog_run(n: int, batch: int, workers: int) -> dict:
    """Everything due at once: pure execution throughput (steps/s)."""
    prefix = f"nk{uuid.uuid4().hex[:8]}-"
    stage = LifecycleStage.objects.get(key="lead")
    for i in range(0, n, 5000):
        leads = Lead.objects.bulk_create([Lead(email=f"{prefix}{j}@bench.example", lifecycle_stage=stage)
                                          for j in range(i, min(n, i + 5000))])
        ConsentRecord.objects.bulk_create([ConsentRecord(lead=l, channel="email", status="granted", source="bench") for l in leads])
    from nurture.services import workflow_enroll_bulk, workflow_publish

    wf = Workflow.objects.create(name=f"{prefix}bench", definition={"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Hi", "body": "https://example.com/x", "next": "end"}, "end": {"type": "end"}}})
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    try:
        workflow_enroll_bulk(workflow=wf, leads=Lead.objects.filter(email__startswith=prefix), source="bench")
        with connection.cursor() as c:
            c.execute("ANALYZE nurture_enrollment")
        t = time.perf_counter()
        load_start = os.getloadavg()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(wf.pk), "--batch", str(batch)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(workers)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t
        assert Message.objects.filter(workflow=wf, status="sent").count() == n
        return {"rate": n / wall, "wall_s": wall, "worker_cpu_s": [round(o["cpu_s"], 1) for o in outs],
                "worker_maxrss_mb": max(o["maxrss_kb"] for o in outs) / 1024,
                "load_at_workers_start": load_start, "load_at_end": os.getloadavg()}
    finally:
        Enrollment.objects.filter(workflow=wf).delete()
        Workflow.objects.filter(pk=wf.pk).delete()
        Lead.objects.filter(email__startswith=prefix).delete()


def crash_run(n: int, batch: int, *, lease: int, tick: float, kill_after: int) -> dict:
    """A worker delivering over SMTP (to a loopback sink that answers each
    message after 2 ms) is SIGKILLed after ``kill_after`` messages; a new
    worker then runs the engine every ``tick`` seconds, as the schedule does,
    with the lease at ``lease`` seconds. Measures the time from the kill to
    every due step settled, what was left in doubt, and whether any of those
    never reached the sink."""
    import signal

    from tests.nurture.smtp_sink import SmtpSink

    prefix = f"nc{uuid.uuid4().hex[:8]}-"
    stage = LifecycleStage.objects.get(key="lead")
    leads = Lead.objects.bulk_create([Lead(email=f"{prefix}{j}@bench.example", lifecycle_stage=stage) for j in range(n)])
    ConsentRecord.objects.bulk_create([ConsentRecord(lead=l, channel="email", status="granted", source="bench") for l in leads])
    from nurture.services import workflow_enroll_bulk, workflow_publish

    wf = Workflow.objects.create(name=f"{prefix}bench", definition={"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Hi", "body": "https://example.com/x", "next": "end"}, "end": {"type": "end"}}})
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    env = {**os.environ, "NURTURE_SENDING_LEASE_SECONDS": str(lease), "NURTURE_SEND_TIMEOUT_SECONDS": str(max(1, lease // 4))}
    try:
        workflow_enroll_bulk(workflow=wf, leads=Lead.objects.filter(email__startswith=prefix), source="bench")
        with SmtpSink(reply_delay=0.002) as sink:
            cmd = [sys.executable, __file__, "--worker", str(wf.pk), "--batch", str(batch), "--smtp-port", str(sink.port)]
            first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
            t0 = time.perf_counter()
            while len(sink.received) < kill_after and first.poll() is None:
                time.sleep(0.001)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            killed_at, killed_wall = time.perf_counter(), time.time()
            before_kill_rate = len(sink.received) / (killed_at - t0)
            # What the dead worker had decided: its messages, and the moment they are all settled.
            last_id = Message.objects.filter(workflow=wf).order_by("-pk").values_list("pk", flat=True).first() or 0
            left = Message.objects.filter(workflow=wf).exclude(status="sent").count() + Enrollment.objects.filter(
                workflow=wf, status="active").count()
            second = subprocess.Popen(cmd + ["--tick", str(tick)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
            second.communicate()
            recovered_s = time.perf_counter() - killed_at
            taken = Counter(sink.keys())
            resumed = min((r["at"] for r in sink.received if r["at"] > killed_wall), default=None)
        doubt = set(Message.objects.filter(workflow=wf, status="in_doubt").values_list("key", flat=True))
        from django.db.models import Max

        left_done = Message.objects.filter(workflow=wf, pk__lte=last_id, status="sent").aggregate(t=Max("sent_at"))["t"]
        return {
            "n": n, "lease_s": lease, "tick_s": tick, "killed_after": kill_after, "left_at_kill": left,
            "crash_to_all_settled_s": recovered_s,
            "crash_to_first_send_s": (resumed - killed_wall) if resumed else None,
            "crash_to_dead_workers_messages_sent_s": (left_done.timestamp() - killed_wall) if left_done else None,
            "sent": Message.objects.filter(workflow=wf, status="sent").count(),
            "in_doubt": len(doubt), "in_doubt_never_sent": len(doubt - set(taken)),
            "duplicates": sum(c - 1 for c in taken.values() if c > 1),
            "smtp_msgs_per_s_before_kill": before_kill_rate,
        }
    finally:
        Enrollment.objects.filter(workflow=wf).delete()
        Workflow.objects.filter(pk=wf.pk).delete()
        Lead.objects.filter(email__startswith=prefix).delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 due steps (under a minute)")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tick", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["backlog", "crash"], default=None,
                        help="run only the backlog throughput or only the crash recovery")
    parser.add_argument("--crashes", type=int, default=3, help="crash runs (each kills a worker once)")
    parser.add_argument("--lease", type=int, default=20, help="NURTURE_SENDING_LEASE_SECONDS in the crash runs")
    parser.add_argument("--crash-tick", type=float, default=10.0, help="the scheduler's period in the crash runs (s)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "nurture.json"))
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.batch, args.smtp_port, args.tick)
        return 0
    settings.DEBUG = False
    if connection.vendor != "postgresql":
        print("bench/nurture.py measures PostgreSQL (SKIP LOCKED); set DATABASE_URL", file=sys.stderr)
        return 2
    n = args.n or (10_000 if args.quick else 100_000)
    if args.only:
        return _partial(args, n)
    small = one_run(max(n // 10, 1000), args.batch, args.workers)
    big = one_run(n, args.batch, args.workers)
    backlog = backlog_run(n, args.batch, args.workers)
    figures = [
        ("due_steps", n, "steps"),
        ("workers", args.workers, "processes"),
        ("backlog_email_steps_per_s", round(backlog["rate"], 1), "steps/s"),
        ("backlog_wall_s", round(backlog["wall_s"], 1), "s"),
        ("backlog_worker_cpu_s", backlog["worker_cpu_s"], "s per worker"),
        ("backlog_worker_peak_rss_mb", round(backlog["worker_maxrss_mb"], 1), "MB"),
        ("spread_wall_s", round(big["wall_s"], 1), "s"),
        ("spread_worker_cpu_s", big["worker_cpu_s"], "s per worker"),
        ("due_before_workers_started", big["due_before_workers_started"], "steps"),
        ("lag_p50_s", round(big["lag_p50_s"], 2), "s"),
        ("lag_p95_s", round(big["lag_p95_s"], 2), "s"),
        ("lag_max_s", round(big["lag_max_s"], 2), "s"),
        ("offered_rate", RATE, "steps/s"),
        ("worker_peak_rss_mb", round(big["worker_maxrss_mb"], 1), "MB"),
        (f"worker_peak_rss_mb_at_{small['n']}", round(small["worker_maxrss_mb"], 1), "MB"),
        ("duplicates", big["duplicates"], "messages"),
        ("enroll_segment_s", round(big["enroll_s"], 2), "s"),
        ("enroll_segment_client_cpu_s", round(big["enroll_cpu_s"], 2), "s"),
        ("enroll_segment_leads", n, "leads"),
        ("enroll_leads_per_s", round(n / big["enroll_s"], 1), "leads/s"),
    ]
    results = []
    for metric, value, unit in figures:
        line = {"metric": metric, "value": value, "unit": unit}
        print(json.dumps(line), flush=True)
        results.append(line)
    meta = {"loadavg_at_end": os.getloadavg(), "cpu_count": os.cpu_count(), "quick": args.quick,
            "spread_run": {k: big[k] for k in ("load_at_workers_start", "load_at_end", "steps_per_worker")},
            "backlog_run": {k: backlog[k] for k in ("load_at_workers_start", "load_at_end")},
            "small_run": {k: small[k] for k in ("n", "lag_p95_s", "worker_maxrss_mb", "enroll_s")}}
    Path(args.out).write_text(json.dumps({"results": results, "meta": meta}, indent=2, default=str) + "\n")
    return 0


def _partial(args, n: int) -> int:
    lines = []
    if args.only == "backlog":
        backlog = backlog_run(n, args.batch, args.workers)
        lines.append({"metric": "backlog_email_steps_per_s", "value": round(backlog["rate"], 1), "unit": "steps/s",
                      "n": n, "load": backlog["load_at_workers_start"]})
    else:
        m = min(n, 3000)
        for i in range(args.crashes):
            run = crash_run(m, args.batch, lease=args.lease, tick=args.crash_tick, kill_after=m // 3 + 37 * i)
            lines.append({"metric": "crash_recovery", **{k: round(v, 2) if isinstance(v, float) else v
                                                           for k, v in run.items()}})
    for line in lines:
        print(json.dumps(line, default=str), flush=True)
    Path(args.out).write_text(json.dumps({"results": lines}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
