"""Speed to lead under load: forms posted at 2/s and 20/s against gunicorn
(2 workers) and two qcluster processes (the default cluster and the bulk
cluster, MARTECH_BULK_CLUSTER) on PostgreSQL with Redis, with both CRM
emulators; per stage the seconds from the form's POST.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench REDIS_URL=redis://127.0.0.1:6379/8 \\
        python bench/speed_to_lead.py [--quick] [--rates 2,20] [--seconds 30]

The database is migrated and the demo seeded (``seed_demo --leads 200``:
the "Request a demo" form emits demo_requested -> SQL -> the handoff, a
journey triggered by the form sends its first email, routing rules, scoring,
a HubSpot and a Salesforce connection) when its demo form is missing. The
Redis database is FLUSHED (the broker's queues, the cache). Each rate posts
forms for ``--seconds`` (``--quick``: 8 s at 2/s, 8 s at 20/s), each with a
new email, then waits up to ``--drain`` seconds for every stage of every
lead. Per stage (created, scored, routed, handoff task (a handoff exists;
timed by its SLA clock start, the SQL move, as the handoff records no
creation time), owner in HubSpot, owner in Salesforce, first email) p50/p95/max seconds from the POST and
completeness (leads that reached it / forms posted), the answer's p50/p95,
and the same for events posted beside the forms at ``--event-share`` of the
form rate (``POST /api/v1/events`` with an API token, one trial_started
track of a new person each, which starts the "Trial onboarding" journey):
the event to journey step stage (its first email sent) and the events API's answer;
the queue depth when the load ends and the seconds until it is empty, and
one worker's capacity (a form's request service and its capture task,
timed in this process after the load). ``uptime`` load is printed beside: other work on the
machine's cores counts.

Beside the stages, the CPU each rate cost (``<rate>_cpu_per_form``): CPU
seconds (user + system, from ``/proc/<pid>/stat``) of every process group
from the load's start until every stage completed and the queue emptied,
per form posted: gunicorn (master and workers), the default and the bulk
qcluster (each with its forked workers, pusher and monitor), each emulator,
the PostgreSQL backends connected to the bench's database (not this
process's own), Redis (one server shared with the machine's other users:
an upper bound) and this process (the load generator and its polling).
Processes are sampled every half second (a process that exits loses at most
its last half second; one started meanwhile counts from zero). The budget on
2 cores at 20 forms/s is 100 ms per form for all of them together. And the
tasks per form by task name (``<rate>_tasks_per_form``, django-q2's saved
tasks), with each task name's mean time from its enqueue to its end; and
the CPU of the task functions themselves per name (``<rate>_task_cpu_per_form``,
tallied in the workers with MARTECH_TASK_CPU_TALLY), so the clusters' CPU
splits into the tasks' and django-q2's own.

Prints one JSON line per figure and writes bench/results/speed_to_lead.json
(``--quick``: speed_to_lead_quick.json, so a quick run keeps the full run's file).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone as dt_tz
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
RESULTS = ROOT / "bench" / "results" / "speed_to_lead.json"
RESULTS_QUICK = ROOT / "bench" / "results" / "speed_to_lead_quick.json"
STAGES = ["created", "scored", "routed", "handoff_task", "owner_hubspot", "owner_salesforce", "first_email"]
# Events posted beside the forms (POST /api/v1/events with an API token): a
# trial_started track of a new person starts the demo's "Trial onboarding"
# journey, whose first step is a transactional email; the stage is that
# email sent, timed from the event's POST.
EVENT_STAGES = ["event_journey_step"]
EVENT_JOURNEY = "Trial onboarding"


def free_base() -> int:
    """A port P with P (gunicorn), P+471 and P+472 (the emulators) free."""
    for _ in range(200):
        base = 20000 + secrets.randbelow(20000)
        ok = True
        for port in (base, base + 471, base + 472):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise SystemExit("no free ports")


def wait_port(port: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listening on {port}")


CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_APP = "speed_to_lead bench"  # application_name of this process's connections: its backends count as its own


def proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(process group, CPU seconds user + system, start time in ticks) of a
    live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is the state (field 3 of proc(5))
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19])


class CpuMeter:
    """CPU seconds per process group between ``start()`` and ``stop()``,
    sampled every ``every`` seconds in a thread (see the module's docstring).
    ``groups``: name -> process group id (the processes this bench started,
    each a session of its own); PostgreSQL's backends are found by database
    in pg_stat_activity, Redis by its command name."""

    def __init__(self, groups: dict[str, int], every: float = 0.5):
        self.groups = groups
        self.every = every
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = [int(d) for d in os.listdir("/proc") if d.isdigit() and _comm(int(d)) == "redis-server"]

    def _pg_backends(self) -> list[int]:
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()")
            return [(pid, "bench process" if name == BENCH_APP else "postgresql") for pid, name in cur.fetchall()]

    def _sample(self, started: bool) -> None:
        pgids = {pgid: name for name, pgid in self.groups.items()}
        seen: dict[int, tuple[str, float]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = proc_stat(int(d))
            if st and st[0] in pgids:
                seen[int(d)] = (pgids[st[0]], st[1])
        for pid, group in self._pg_backends():
            st = proc_stat(pid)
            if st:
                seen[pid] = (group, st[1])
        for pid in self._redis:
            st = proc_stat(pid)
            if st:
                seen[pid] = ("redis (shared)", st[1])
        me = proc_stat(os.getpid())
        seen[os.getpid()] = ("bench process", me[1])
        for pid, value in seen.items():
            if pid not in self.first:
                # Seen at the start: counted from there; born later: from zero.
                self.first[pid] = value if not started else (value[0], 0.0)
            self.last[pid] = value

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(self.every):
                self._sample(True)
        finally:
            connection.close()

    def start(self) -> None:
        self._sample(False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample(True)
        out: dict[str, float] = {}
        for pid, (group, cpu) in self.last.items():
            out[group] = out.get(group, 0.0) + cpu - self.first[pid][1]
        return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rates", default="2,20")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--drain", type=float, default=90, help="seconds to wait for every stage after the load")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS of the default cluster")
    parser.add_argument("--event-share", type=float, default=0.5,
                        help="events posted per form (a trial_started track each: the event to journey step stage)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.drain = 8, 40
    if not os.environ.get("DATABASE_URL", "").startswith("postgres") or not os.environ.get("REDIS_URL"):
        raise SystemExit("DATABASE_URL (PostgreSQL) and REDIS_URL are required")

    base = free_base()
    env = {**os.environ, "MARTECH_PORT": str(base), "MARTECH_BULK_CLUSTER": "bulk", "DJANGO_DEBUG": "false",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
           "FORM_CAPTURE_RATE": "100000/min", "MARTECH_TASK_CPU_TALLY": "true", "Q_WORKERS": str(args.workers), "Q_BULK_WORKERS": "1",
           "PYTHONUNBUFFERED": "1"}
    for name in ("MARTECH_CRM_HUBSPOT_URL", "MARTECH_CRM_SALESFORCE_URL", "Q_CLUSTER_NAME"):
        env.pop(name, None)
    # The same settings here (the cluster stats are signed with the secret key).
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False
    settings.DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = BENCH_APP
    import redis

    redis.from_url(os.environ["REDIS_URL"]).flushdb()
    call_command("migrate", verbosity=0)
    from martech.models import Form

    procs: list[subprocess.Popen] = []
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp")) / f"speed_to_lead-{base}"
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, cmd: list[str], **extra) -> None:
        out = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    def stop() -> None:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    try:
        start("hubspot", [PY, "manage.py", "crm_emulator"])
        start("salesforce", [PY, "manage.py", "crm_emulator", "--provider", "salesforce"])
        wait_port(base + 471)
        wait_port(base + 472)
        if not Form.objects.filter(key="demo-request").exists():
            call_command("seed_demo", leads=200, no_progress=True, verbosity=0)
        call_command("setup_schedules", verbosity=0)
        crm_state_reset()
        from martech.crm.tasks import pull_all

        pull_all()  # the CRM owners (reps' users matched by email), so owners reach the CRMs
        token = events_token()
        start("web", [PY, "-m", "gunicorn", "martech.wsgi", "-w", "2", "-b", f"127.0.0.1:{base}", "--access-logfile",
                      "-"])
        start("qcluster", [PY, "manage.py", "qcluster"])
        start("qcluster-bulk", [PY, "manage.py", "qcluster"], Q_CLUSTER_NAME="bulk")
        wait_port(base)
        time.sleep(3)  # the clusters' workers up
        groups = {name: p.pid for name, p in zip(("hubspot emulator", "salesforce emulator", "gunicorn", "qcluster",
                                                    "qcluster bulk"), procs)}
        figures = [idle_cpu(groups)]  # after the clusters' start-up schedules
        for rate in [float(r) for r in args.rates.split(",")]:
            figures += run_rate(rate, args.seconds, args.drain, base, groups, token=token, event_share=args.event_share)
    finally:
        stop()
    figures += capacity(20 if args.quick else 60)
    results = RESULTS_QUICK if args.quick else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"at": datetime.now(dt_tz.utc).isoformat(timespec="seconds"),
                                   "args": vars(args), "figures": figures}, indent=1) + "\n")


def idle_cpu(groups: dict[str, int], seconds: float = 5) -> dict:
    """CPU per second of each process group with no load (pollers,
    heartbeats): the floor under every rate's figures. Taken once the
    schedules a cluster runs when it starts have finished."""
    from django_q.models import Task

    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(2)
        if not Task.objects.filter(stopped__gte=datetime.fromtimestamp(time.time() - 2, dt_tz.utc)).exists():
            break
    meter = CpuMeter(groups)
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    figure = {"metric": "idle_cpu_per_s", "value": round(sum(v for g, v in cpu.items() if g != "bench process")
                                                          / seconds * 1000, 1), "unit": "ms/s",
              "by_process": {g: round(v / seconds * 1000, 1) for g, v in sorted(cpu.items())}}
    print(json.dumps(figure), flush=True)
    return figure


def capacity(n: int) -> list[dict]:
    """One worker's capacity: ``n`` forms stored (the request's service) and
    their ``capture_process`` run here, one after the other, with the
    clusters stopped (the wake-ups they enqueue are flushed after). CPU and
    wall seconds per form, and forms per second one worker keeps up with."""
    import redis
    from django.db import transaction

    from martech.models import Form
    from martech.services import capture
    from martech.services.forms import form_submit

    form = Form.objects.get(key="demo-request")
    run = uuid.uuid4().hex[:8]
    calls: list[tuple] = []
    real = capture.task_enqueue
    capture.task_enqueue = lambda func, *args, **kw: calls.append(args)
    try:
        store_wall = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            with transaction.atomic():
                form_submit(form=form, data={"email": f"cap-{run}-{i}@example.org", "first_name": "Cap",
                                             "last_name": "L", "company": "Bench GmbH", "title": "VP Marketing",
                                             "country": "DE", "consent": "1"}, ip="127.0.0.1", user_agent="bench")
            store_wall += time.perf_counter() - t0
    finally:
        capture.task_enqueue = real
    from martech.tasks import capture_process

    wall0, cpu0 = time.perf_counter(), time.process_time()
    for args in calls:
        capture_process(*args)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    redis.from_url(os.environ["REDIS_URL"]).flushdb()
    out = [
        {"metric": "form_request_service_per_form", "value": round(store_wall / n * 1000, 1), "unit": "ms",
         "forms": n},
        {"metric": "capture_task_per_form", "value": round(wall / len(calls) * 1000, 1), "unit": "ms",
         "cpu_ms": round(cpu / len(calls) * 1000, 1), "forms": len(calls),
         "note": "score, route, lifecycle + SQL handoff, journey enrollment; CRM pushes and emails are other tasks"},
        {"metric": "capture_forms_per_worker_s", "value": round(len(calls) / wall, 1), "unit": "forms/s",
         "loadavg_1m": round(os.getloadavg()[0], 2)},
    ]
    for figure in out:
        print(json.dumps(figure), flush=True)
    return out


def events_token() -> str:
    """A new API client with the capture scope (the events API), its token."""
    from martech.models import ApiClient
    from nurture.models import Workflow

    if not Workflow.objects.filter(name=EVENT_JOURNEY, status=Workflow.Status.ACTIVE).exists():
        raise SystemExit(f"the demo's {EVENT_JOURNEY!r} journey is not published")
    token = secrets.token_urlsafe(32)
    ApiClient.objects.create(name=f"bench-{uuid.uuid4().hex[:8]}", token_hash=ApiClient.hash_token(token),
                             token_prefix=token[:8], scopes=["capture"])
    return token


def crm_state_reset() -> None:
    """The emulators start empty and number their records from 1 again: the
    CRM ids and push states an earlier run stored would collide with the
    new ones, so this database's CRM state is forgotten (every
    ``hubspot*``/``salesforce*`` id column emptied, push states and the
    outbox deleted). The bench's database only."""
    import re

    from django.apps import apps

    from martech.crm.models import OutboxItem, PushState

    PushState.objects.all().delete()
    OutboxItem.objects.all().delete()
    for model in apps.get_models():
        cols = [f.name for f in model._meta.concrete_fields
                if re.fullmatch(r"(hubspot|salesforce)(_[a-z]+)?_id", f.name) and f.null and not f.is_relation]
        if cols:
            model.objects.exclude(**{f"{c}__isnull": True for c in cols[:1]}).update(**{c: None for c in cols})
            for c in cols[1:]:
                model.objects.filter(**{f"{c}__isnull": False}).update(**{c: None})


def run_rate(rate: float, seconds: float, drain: float, base: int, groups: dict[str, int], *, token: str,
             event_share: float) -> list[dict]:
    import redis
    from django.db import connection

    from martech.crm.models import PushState
    from martech.models import Lead
    from martech.scoring.models import Handoff, ScoreHistory
    from nurture.models import Message
    from routing.models import Assignment

    run = uuid.uuid4().hex[:8]
    n = int(rate * seconds)
    posted: dict[str, float] = {}
    answers: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    url = f"http://127.0.0.1:{base}/api/v1/capture/demo-request"

    def send(url: str, body: dict, headers: dict, key: str, sink: tuple[dict, list, list]) -> None:
        """POST ``body``; record its start time under ``key`` and its answer time and status in ``sink``."""
        req = urllib.request.Request(url, json.dumps(body).encode(), {
            "Content-Type": "application/json", "User-Agent": "bench", "X-Forwarded-Proto": "https", **headers})
        t0 = time.time()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except Exception:  # noqa: BLE001 - counted as not answered
            status = 0
        with lock:
            sink[0][key] = t0
            sink[1].append(time.time() - t0)
            sink[2].append(status)

    def post(i: int) -> None:
        email = f"stl-{run}-{i}@example.org"
        send(url, {"email": email, "first_name": "Bench", "last_name": f"L{i}", "company": "Bench GmbH",
                   "title": "VP Marketing", "country": "DE", "team_size": "51-200", "consent": "1"},
             {}, email, (posted, answers, statuses))

    n_events = int(n * event_share)
    event_posted: dict[str, float] = {}
    event_answers: list[float] = []
    event_statuses: list[int] = []
    events_url = f"http://127.0.0.1:{base}/api/v1/events"

    def post_event(i: int) -> None:
        # A new person's trial_started: the capture task makes the lead and enrolls it in the journey.
        email = f"evt-{run}-{i}@example.org"
        send(events_url, {"batch": [{"type": "track", "event": "trial_started", "messageId": f"evt-{run}-{i}",
                                     "timestamp": datetime.now(dt_tz.utc).isoformat(),
                                     "traits": {"email": email}, "properties": {"plan": "pro"}}]},
             {"Authorization": f"Bearer {token}"}, email, (event_posted, event_answers, event_statuses))

    load0 = os.getloadavg()[0]
    from martech import taskqueue

    r0 = redis.from_url(os.environ["REDIS_URL"])
    r0.delete(taskqueue.TALLY_KEY)
    meter = CpuMeter(groups)
    meter.start()
    start = time.time()
    # Forms and events interleaved in time order, each at its own even pace.
    sends = sorted([(i / rate, post, i) for i in range(n)] +
                   [(i / (rate * event_share), post_event, i) for i in range(n_events)], key=lambda s: s[0])
    with ThreadPoolExecutor(max_workers=64) as pool:
        for at, fn, i in sends:
            delay = start + at - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(fn, i)
    load_end = time.time()
    r = redis.from_url(os.environ["REDIS_URL"])

    def depth() -> int:
        # Waiting in Redis, plus what each cluster's pusher already took
        # into its own task queue (django-q2's cluster stats).
        from django_q.brokers import get_broker
        from django_q.status import Stat

        return sum(r.llen(f"django_q:{key}:q") for key in ("martech", "bulk")) + sum(
            s.task_q_size for s in Stat.get_all(get_broker()))

    depth_at_end = depth()
    emptied = None
    deadline = load_end + drain

    def timelines() -> dict[str, dict[str, float | None]]:
        leads = dict(Lead.objects.filter(email__startswith=f"stl-{run}-").values_list("email", "pk"))
        ids = list(leads.values())
        first = {}

        def take(rows, key):
            for lead_id, at in rows:
                if at is not None:
                    seen = first.setdefault(lead_id, {})
                    if seen.get(key) is None or at.timestamp() < seen[key]:
                        seen[key] = at.timestamp()

        take(Lead.objects.filter(pk__in=ids).values_list("pk", "created_at"), "created")
        take(ScoreHistory.objects.filter(lead_id__in=ids).values_list("lead_id", "changed_at"), "scored")
        take(Assignment.objects.filter(lead_id__in=ids).values_list("lead_id", "assigned_at"), "routed")
        take(Handoff.objects.filter(lead_id__in=ids).values_list("lead_id", "started_at"), "handoff_task")
        for provider in ("hubspot", "salesforce"):
            take(PushState.objects.filter(connection__provider=provider, object="contact", local_id__in=ids)
                 .values_list("local_id", "owner_pushed_at"), f"owner_{provider}")
        take(Message.objects.filter(lead_id__in=ids, channel="email", status="sent")
             .values_list("lead_id", "sent_at"), "first_email")
        return {email: first.get(pk, {}) for email, pk in leads.items()}

    def event_timelines() -> dict[str, dict[str, float]]:
        # The first email of the event's journey, per person the events made.
        rows = (Message.objects.filter(lead__email__startswith=f"evt-{run}-", workflow__name=EVENT_JOURNEY,
                                       channel="email", status="sent")
                .values_list("lead__email", "sent_at"))
        out: dict[str, dict[str, float]] = {}
        for email, at in rows:
            seen = out.setdefault(email, {})
            if at is not None and at.timestamp() < seen.get("event_journey_step", float("inf")):
                seen["event_journey_step"] = at.timestamp()
        return out

    while time.time() < deadline:
        # One reading of the depth an iteration: the loop ended on a second
        # reading of 0 that the first (a moment before) had not seen, and
        # printed the queue as never empty.
        waiting = depth()
        if emptied is None and waiting == 0:
            emptied = time.time() - load_end
        lines = timelines()
        event_lines = event_timelines()
        if (len(lines) == n and all(len(v) == len(STAGES) for v in lines.values()) and len(event_lines) == n_events
                and waiting == 0):
            break
        time.sleep(1)
        connection.close()
    cpu = meter.stop()
    measured = time.time() - start
    lines = timelines()
    event_lines = event_timelines()
    tag = f"{rate:g}_per_s"
    out = [
        {"metric": f"{tag}_forms_posted", "value": n, "unit": "forms", "seconds": round(load_end - start, 1),
         "answered_2xx": sum(1 for s in statuses if 200 <= s < 400), "loadavg_1m_before": round(load0, 2),
         "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        {"metric": f"{tag}_answer_p50", "value": percentile(answers, 0.5), "unit": "s"},
        {"metric": f"{tag}_answer_p95", "value": percentile(answers, 0.95), "unit": "s"},
        {"metric": f"{tag}_queue_depth_at_load_end", "value": depth_at_end, "unit": "tasks"},
        {"metric": f"{tag}_queue_empty_after_load", "value": round(emptied, 1) if emptied is not None else None,
         "unit": "s", "note": None if emptied is not None else f"not empty within {drain:g} s"},
    ]
    out += [
        {"metric": f"{tag}_events_posted", "value": n_events, "unit": "events",
         "answered_2xx": sum(1 for s in event_statuses if 200 <= s < 400)},
        {"metric": f"{tag}_event_answer_p50", "value": percentile(event_answers, 0.5), "unit": "s"},
        {"metric": f"{tag}_event_answer_p95", "value": percentile(event_answers, 0.95), "unit": "s"},
    ]
    for stages, timeline, sent, total in ((STAGES, lines, posted, n), (EVENT_STAGES, event_lines, event_posted, n_events)):
        for stage in stages:
            secs = [v[stage] - sent[email] for email, v in timeline.items() if v.get(stage) is not None and email in sent]
            out.append({"metric": f"{tag}_{stage}_p50", "value": percentile(secs, 0.5), "unit": "s",
                        "p95": percentile(secs, 0.95), "max": round(max(secs), 3) if secs else None,
                        "complete": f"{len(secs)}/{total}", "mean": round(statistics.fmean(secs), 3) if secs else None})
    from django.db.models import Count
    from django_q.models import Task

    since = datetime.fromtimestamp(start, dt_tz.utc)
    tasks = Task.objects.filter(started__gte=since)
    by_func = dict(tasks.values_list("func").annotate(n=Count("id")))
    runs: dict[str, list[float]] = {}
    for func, started, stopped in tasks.values_list("func", "started", "stopped"):
        runs.setdefault(func, []).append((stopped - started).total_seconds())
    out.append({"metric": f"{tag}_tasks_per_form", "value": round(sum(by_func.values()) / max(n, 1), 2),
                "unit": "tasks", "per_form": {f: round(c / max(n, 1), 3) for f, c in sorted(by_func.items())},
                "by_func": by_func, "mean_enqueued_to_done_ms": {f: round(statistics.fmean(v) * 1000, 1) for f, v in runs.items()},
                "note": "every task recorded from the load's start until the stages completed (schedules and "
                        "the events' tasks too)"})
    tally = taskqueue.task_cpu_tally()
    out.append({"metric": f"{tag}_task_cpu_per_form", "value": round(sum(c for c, _ in tally.values()) / max(n, 1) * 1000, 1),
                "unit": "ms", "by_func": {f: round(c / max(n, 1) * 1000, 1) for f, (c, k) in sorted(tally.items())},
                "per_task_ms": {f: round(c / max(k, 1) * 1000, 1) for f, (c, k) in sorted(tally.items())},
                "tasks": {f: k for f, (c, k) in sorted(tally.items())},
                "note": "CPU of the task functions alone, in the worker that ran them (MARTECH_TASK_CPU_TALLY), per "
                        "form posted; the rest of the clusters' CPU is django-q2's own (pusher, monitor, workers)"})
    system = sum(v for g, v in cpu.items() if g != "bench process")
    out.append({"metric": f"{tag}_cpu_per_form", "value": round(system / max(n, 1) * 1000, 1),
                "unit": "ms", "by_process": {g: round(v / max(n, 1) * 1000, 1) for g, v in sorted(cpu.items())},
                "cpu_seconds": {g: round(v, 2) for g, v in sorted(cpu.items())}, "measured_s": round(measured, 1),
                "budget_ms": round(os.cpu_count() / max(rate, 0.001) * 1000, 1),
                "note": "CPU of every process group from the load's start until every stage completed, per form "
                        "posted (value: all but the bench process); redis is shared with the machine's other "
                        "users; budget: the cores' CPU per form at this rate"})
    out.append({"metric": "uptime", "value": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                "unit": "text"})
    for figure in out:
        print(json.dumps(figure), flush=True)
    return out


if __name__ == "__main__":
    main()
