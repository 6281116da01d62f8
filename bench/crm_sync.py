"""Push N changed leads through the CRM outbox to the HubSpot and the
Salesforce emulators.

Runs against the DATABASE_URL database (migrated). Starts each emulator as a
separate process on a free loopback port (``manage.py crm_emulator
[--provider salesforce] --port 0``, latency 0; Salesforce over TLS with a
certificate generated into a temp dir) so this process's peak memory is the
sync's alone. Creates N leads under a run prefix, queues them (as the lead
hook does), drains the outbox end to end (claim, payload, hash check, HTTP
batch upsert through hubspot-api-client / sObject Collections through
simple-salesforce, push state, CRM ids written back), then queues them all
again unchanged and drains once more: that must make zero write calls.
Deletes its rows at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/crm_sync.py [--quick] [--provider P]

--only pulls: the pull, import and idle figures alone; the other figures of
the results file (the last whole run's) are kept beside them.

--latency S: the emulators answer every call S seconds late (a real CRM's
round trip; default 0). Every push and pull also reports ``<name>_breakdown``:
its wall clock split into this process's CPU, the emulator's, the PostgreSQL
backend's, pacing and retry sleeps and what is left (waiting), with its
queries per batch or page (``Breakdown``).

--quick: N = 3,000 (the whole run about a minute). Full: N = 10,000 and
100,000, to compare peak memory (each size in its own process, so each peak
is that size's own). Prints one JSON line per figure and writes
bench/results/crm_sync.json.

Then, with HubSpot, N = 10,000 (``--quick``: 3,000) accounts pushed as HubSpot companies (matched,
HubSpot refusing ``domain`` as an upsert key: a search and a batch create per 100): calls used, held
to that exact minimum (``companies_minimum``) with no 429 under the search limit, records per second
against the search limit's ceiling, and the unchanged rerun.

Pulls: a HubSpot contacts pull of N = 100,000 (``--quick``: 12,000) behind
the search's 10,000-result cap, paced under the search endpoints' own limit
(HubSpot's 5 per second per token, enforced by the emulator: its 429s are
reported, they must be 0; 5 pages of 200 a second caps it near 1,000
records/s), and N (``--quick``: 3,000) imported in full through the list
endpoint (100 a page, under the general 190 per 10 s, also enforced), 600 of them sharing one lastmodifieddate
across each 10,000th result: records per second (wall), records per CPU
second of this process (the connector and the database writes) and the
emulator's own CPU seconds beside it, calls, completeness (distinct leads
pulled / N, must be 100%). The emulator is seeded in memory here, then
served from a forked process of its own (production's shape: the CRM is
elsewhere), with its search memo on (its sorted matches kept between pages
while nothing is written: a 100,000-record emulator otherwise spends half a
second of CPU per search call). And the API calls an idle connection's scheduled pulls cost per hour
(12 runs of ``tasks.pull_all`` at the 5-minute schedule, owners and
deletions once), beside what one idle pull cost before (every object, link,
owners and Get Deleted asked each run: Salesforce's 17).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from martech.crm.models import Connection, FieldMapping, OutboxItem, PushState, SyncRun  # noqa: E402
from martech.crm.services import outbox_drain  # noqa: E402
from martech.models import Account, Lead, LifecycleStage  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from rss import backend_cpu_of, backend_pid  # noqa: E402  (bench/rss.py)

settings.DEBUG = False  # no query log growing with N


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) of another process on this
    machine, from /proc: the emulator's; 0 when unknown."""
    return backend_cpu_of(pid)


class Breakdown:
    """Where a drain's or a pull's wall time went: this process's CPU, the
    emulator's CPU (its process), this connection's PostgreSQL backend's
    CPU, the connector's pacing sleeps (RateLimiter) and retry sleeps, and
    the queries this process sent. What is left of the wall clock
    (``other_s``) is waiting: for the CPU on a loaded machine, for the
    disk (commits), for a peer's answer on the loopback. Parts can overlap
    (the pull reads ahead in a thread while it writes), so ``other_s`` is
    clipped at 0."""

    def __init__(self, emulator_pid: int | None, connector=None):
        from django.db import connection as db

        self.emulator_pid, self.connector = emulator_pid, connector
        self.db_pid = backend_pid()
        self.queries = 0
        self._db = db

    def _count(self, execute, sql, params, many, context):
        self.queries += 1
        return execute(sql, params, many, context)

    def __enter__(self) -> "Breakdown":
        self._wrapper = self._db.execute_wrapper(self._count)
        self._wrapper.__enter__()
        stats = getattr(self.connector, "stats", None)
        self._paced0 = len(stats.paced) if stats is not None else 0
        self._slept0 = len(stats.slept) if stats is not None else 0
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.emu0, self.db0 = process_cpu(self.emulator_pid), backend_cpu_of(self.db_pid)
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.emulator_cpu = process_cpu(self.emulator_pid) - self.emu0
        self.db_cpu = backend_cpu_of(self.db_pid) - self.db0
        self._wrapper.__exit__(*exc)
        stats = getattr(self.connector, "stats", None)
        self.paced = sum(stats.paced[self._paced0:]) if stats is not None else 0.0
        self.slept = sum(stats.slept[self._slept0:]) if stats is not None else 0.0

    def figures(self, *, units: int, unit: str) -> dict:
        """The breakdown as a figure's fields; ``units`` batches or pages for the per-unit query count."""
        other = self.wall - self.cpu - self.emulator_cpu - self.db_cpu - self.paced - self.slept
        return {"wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2),
                "emulator_cpu_s": round(self.emulator_cpu, 2), "db_backend_cpu_s": round(self.db_cpu, 2),
                "paced_s": round(self.paced, 2), "retry_sleep_s": round(self.slept, 2),
                "other_s": round(max(other, 0.0), 2), "queries": self.queries,
                f"queries_per_{unit}": round(self.queries / units, 1) if units else None, unit + "s": units}


MAPPINGS = {
    "hubspot": [("email", "email", ""), ("first_name", "firstname", ""), ("last_name", "lastname", ""),
                ("job_title", "jobtitle", ""), ("country", "country", "")],
    "salesforce": [("email", "Email", ""), ("first_name", "FirstName", ""), ("last_name", "LastName", ""),
                   ("job_title", "Title", ""), ("country", "Country", ""),
                   ("company_name", "Company", "[not provided]")],
}
PER_CALL = {"hubspot": 100, "salesforce": 200}


# Seconds the emulators add to every answer (``--latency``; 0: the loopback's own).
LATENCY = float(os.environ.get("BENCH_CRM_LATENCY") or 0)


def start_emulator(provider: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "crm_emulator", "--provider", provider,
                             "--port", "0", "--latency", str(LATENCY)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline().strip()
    if "emulator on " not in line:
        proc.kill()
        raise SystemExit(json.dumps({"error": {"code": "emulator", "message": f"emulator did not start: {line!r}"}}))
    return proc, line.rsplit(" ", 1)[1]


def one_size(provider: str, n: int, stage: LifecycleStage, emulator_pid: int | None = None) -> list[dict]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    Connection.objects.filter(provider=provider).delete()
    connection = Connection.objects.create(provider=provider, name="bench", daily_api_limit=10_000_000)
    for local, remote, default in MAPPINGS[provider]:
        FieldMapping.objects.create(connection=connection, local_field=local, remote_field=remote, default=default)
    ids: list[int] = []
    for start in range(0, n, 5000):  # chunks keep setup memory flat too
        rows = [Lead(email=f"{prefix}-{i}@example.org", first_name=f"F{i}", last_name="Bench", job_title="Buyer",
                     country="US", lifecycle_stage=stage) for i in range(start, min(n, start + 5000))]
        Lead.objects.bulk_create(rows, batch_size=1000)
    ids = list(Lead.objects.filter(email__startswith=f"{prefix}-").values_list("pk", flat=True))

    def queue():
        now = timezone.now()
        for start in range(0, len(ids), 5000):
            OutboxItem.objects.bulk_create(
                [OutboxItem(connection=connection, object="contact", local_id=i, next_attempt_at=now, created_at=now)
                 for i in ids[start:start + 5000]], ignore_conflicts=True, batch_size=1000)

    queue()
    rss_before = rss_mb()
    from martech.crm.connectors import connector_for

    connector = connector_for(connection)
    with Breakdown(emulator_pid, connector) as spent:
        run = outbox_drain(connection=connection, connector=connector)
    elapsed, cpu = spent.wall, spent.cpu
    rss_after = rss_mb()
    queue()
    t1 = time.perf_counter()
    second = outbox_drain(connection=connection)
    elapsed2 = time.perf_counter() - t1
    assert run.pushed == n and run.failed == 0, (run.pushed, run.failed, run.error)
    p = provider
    figures = [
        {"metric": f"{p}_push_{n}_api_calls", "value": run.api_calls, "unit": "calls",
         "minimum": -(-n // PER_CALL[p])},
        {"metric": f"{p}_push_{n}_records_per_s", "value": round(n / elapsed, 1), "unit": "records/s",
         "seconds": round(elapsed, 2), "loadavg_1m": round(os.getloadavg()[0], 2)},
        {"metric": f"{p}_push_{n}_records_per_cpu_s", "value": round(n / cpu, 1), "unit": "records/cpu-s",
         "cpu_seconds": round(cpu, 2)},
        {"metric": f"{p}_push_{n}_breakdown", "value": round(spent.wall, 2), "unit": "s",
         **spent.figures(units=-(-n // settings.MARTECH_CRM["DRAIN_BATCH"]), unit="batch"),
         "api_calls": run.api_calls},
        {"metric": f"{p}_push_{n}_peak_rss", "value": round(rss_after, 1), "unit": "MB",
         "rss_before_drain": round(rss_before, 1)},
        {"metric": f"{p}_push_{n}_unchanged_write_calls", "value": second.api_calls, "unit": "calls",
         "skipped": second.skipped, "seconds": round(elapsed2, 2)},
    ]
    # Clean up this run's rows.
    OutboxItem.objects.filter(connection=connection).delete()
    PushState.objects.filter(connection=connection).delete()
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    # Chunked, so the cleanup does not hold every lead in memory at once.
    for start in range(0, len(ids), 5000):
        Lead.objects.filter(pk__in=ids[start:start + 5000]).delete()
    return figures


def companies_minimum(n: int, *, drain_batch: int, page: int = 100) -> dict[str, int]:
    """The fewest API calls a first push of N accounts as HubSpot companies
    can make (docs/crm.md, "Drain"): companies have no unique-value key
    (HubSpot refuses ``domain`` as ``idProperty``), so they are matched.
    Per drain claim (``drain_batch`` records) and per call of ``page``
    records in it: one search (``domain IN (...)``, nothing found in an
    empty portal) and one batch create. No batch update (no HubSpot id is
    stored yet: those are database reads, not calls), no association calls
    (companies have none), no allowance read (HubSpot has none)."""
    full, rest = divmod(n, drain_batch)
    chunks = full * -(-drain_batch // page) + -(-rest // page)
    return {"search": chunks, "create": chunks, "total": 2 * chunks}


def companies(n: int, url: str, emulator_pid: int | None = None) -> list[dict]:
    """N accounts -> HubSpot companies (matched: a search and a batch create
    per 100, ``companies_minimum``), held to that minimum and to HubSpot's
    search limit (5 a second: no 429 answered, so no retry)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": url}
    Connection.objects.filter(provider="hubspot").delete()
    connection = Connection.objects.create(provider="hubspot", name="bench", daily_api_limit=10_000_000)
    for local, remote, kind in [("domain", "domain", "text"), ("name", "name", "text"),
                                ("industry", "industry", "text"), ("employee_count", "numberofemployees", "number"),
                                ("country", "country", "text")]:
        FieldMapping.objects.create(connection=connection, object="company", local_field=local, remote_field=remote,
                                    kind=kind)
    for start in range(0, n, 5000):
        Account.objects.bulk_create(
            [Account(name=f"Co {i}", domain=f"{prefix}-{i}.example.com", industry="Retail", employee_count=i % 900,
                     country="US") for i in range(start, min(n, start + 5000))], batch_size=1000)
    ids = list(Account.objects.filter(domain__startswith=f"{prefix}-").values_list("pk", flat=True))

    def queue():
        now = timezone.now()
        for start in range(0, len(ids), 5000):
            OutboxItem.objects.bulk_create(
                [OutboxItem(connection=connection, object="company", local_id=i, next_attempt_at=now, created_at=now)
                 for i in ids[start:start + 5000]], ignore_conflicts=True, batch_size=1000)

    queue()
    from martech.crm.connectors import connector_for

    from martech.crm.connectors.hubspot import PAGE

    connector = connector_for(connection)
    # The calls by kind: searches (``_search_keys``, one call each when it has
    # records) and creates (``_call_once``: the one call that is never retried).
    kinds = {"search": 0, "create": 0}
    search_keys, call_once = connector._search_keys, connector._call_once

    def counted_search(spec, records):
        kinds["search"] += bool(records)
        return search_keys(spec, records)

    def counted_once(fn, *args, **kwargs):
        kinds["create"] += 1
        return call_once(fn, *args, **kwargs)

    connector._search_keys, connector._call_once = counted_search, counted_once
    with Breakdown(emulator_pid, connector) as spent:
        run = outbox_drain(connection=connection, connector=connector)
    elapsed, cpu = spent.wall, spent.cpu
    queue()
    second = outbox_drain(connection=connection)
    assert run.pushed == n and run.failed == 0, (run.pushed, run.failed, run.error)
    minimum = companies_minimum(n, drain_batch=settings.MARTECH_CRM["DRAIN_BATCH"], page=PAGE)
    search_rate = settings.MARTECH_CRM["HUBSPOT_SEARCH_RATE"]
    # Held to the minimum: not one call more, of either kind.
    assert (kinds["search"], kinds["create"], run.api_calls) == (minimum["search"], minimum["create"],
                                                                 minimum["total"]), (kinds, run.api_calls, minimum)
    # Held to the search limit: the emulator (HubSpot's 5 a second) refused
    # none, so nothing was retried; the searches' own pacing is the floor.
    assert connector.stats.retries == 0, connector.stats.retries
    # The k-th search of a rolling window of L per W seconds starts at least
    # floor((k - 1) / L) * W after the first: the least time these searches take.
    from martech.crm.connectors.base import parse_rate

    limit, window = parse_rate(search_rate)
    search_floor = (kinds["search"] - 1) // limit * window if kinds["search"] else 0.0
    assert elapsed >= search_floor, (elapsed, search_floor)
    figures = [
        {"metric": f"hubspot_companies_push_{n}_api_calls", "value": run.api_calls, "unit": "calls",
         "minimum": minimum["total"], "searches": kinds["search"], "creates": kinds["create"],
         "minimum_searches": minimum["search"], "minimum_creates": minimum["create"], "retries": 0},
        {"metric": f"hubspot_companies_push_{n}_records_per_s", "value": round(n / elapsed, 1), "unit": "records/s",
         "cpu_s": round(cpu, 2), "wall_s": round(elapsed, 2), "search_rate": search_rate,
         "cap_records_per_s": _cap(search_rate, PAGE), "search_floor_s": round(search_floor, 2),
         "paced_s": round(spent.paced, 2)},
        {"metric": f"hubspot_companies_push_{n}_breakdown", "value": round(spent.wall, 2), "unit": "s",
         **spent.figures(units=-(-n // settings.MARTECH_CRM["DRAIN_BATCH"]), unit="batch"),
         "api_calls": run.api_calls},
        {"metric": f"hubspot_companies_push_{n}_unchanged_write_calls", "value": second.api_calls, "unit": "calls",
         "skipped": second.skipped},
    ]
    OutboxItem.objects.filter(connection=connection).delete()
    PushState.objects.filter(connection=connection).delete()
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    Account.objects.filter(domain__startswith=f"{prefix}-").delete()
    return figures


def pull_behind_cap(n: int, *, mode: str = "search") -> list[dict]:
    """N HubSpot contacts pulled: ``search``, the incremental pull through
    search windows under the 10,000 cap, paced under the search endpoints'
    own limit (MARTECH_CRM_HUBSPOT_SEARCH_RATE; the emulator enforces
    HubSpot's 5 per second per token and counts its 429s); ``list``, the full
    import (``crm_sync --full``) through the list endpoint, 100 a page under
    the general 190 per 10 s."""
    import datetime as dt

    import multiprocessing

    from django.db import connections

    from martech.crm.emulators.hubspot import DEFAULT_SEARCH_RATE, HubSpotEmulator
    from martech.crm.services import pull_changes

    app = HubSpotEmulator(latency=LATENCY)  # the search limit enforced (its default, HubSpot's documented 5/1s)
    app.rate_limit = settings.MARTECH_CRM["HUBSPOT_RATE"]  # and the general window, as HubSpot does
    app.search_memo = True
    base = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.timezone.utc)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    for i in range(n):
        # 600 records share one time across each 10,000th result (a mass update).
        near = i % 10_000
        ms = i - near + 9_700 if 9_700 <= near < 10_300 else i
        app.put("contacts", {"email": f"{prefix}-{i}@example.org", "firstname": f"F{i}"},
                at=base + dt.timedelta(milliseconds=ms))
    connections.close_all()  # the forked emulator must not share this process's connection
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    emulator = context.Process(target=_serve_forked, args=(app, theirs), daemon=True)
    emulator.start()
    url = ours.recv()
    del app  # the emulator's records live in its own process now
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": url}
    Connection.objects.filter(provider="hubspot").delete()
    connection = Connection.objects.create(provider="hubspot", name="bench", daily_api_limit=10_000_000)
    for local, remote in [("email", "email"), ("first_name", "firstname")]:
        FieldMapping.objects.create(connection=connection, local_field=local, remote_field=remote)
    from martech.crm.connectors.hubspot import HubSpotConnector

    connector = HubSpotConnector(connection)
    try:
        with Breakdown(emulator.pid, connector) as spent:
            run = pull_changes(connection=connection, connector=connector, full=mode == "list")
        elapsed, cpu, emulator_cpu = spent.wall, spent.cpu, spent.emulator_cpu
        ours.send("cpu")
        _, refused = ours.recv()
    finally:
        ours.send("stop")
        emulator.join(10)
    distinct = Lead.objects.filter(email__startswith=f"{prefix}-").exclude(hubspot_id="").count()
    assert run.error == "" and distinct == n and run.pulled == n, (run.error, distinct, run.pulled)
    name = f"hubspot_pull_{n}_behind_cap" if mode == "search" else f"hubspot_full_import_{n}_list"
    page = 200 if mode == "search" else 100
    paced = connector.stats.paced
    figures = [
        {"metric": f"{name}_records_per_s", "value": round(n / elapsed, 1),
         "unit": "records/s", "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2),
         "loadavg_1m": round(os.getloadavg()[0], 2), "endpoint": mode,
         **({"search_rate": settings.MARTECH_CRM["HUBSPOT_SEARCH_RATE"], "emulator_search_rate": DEFAULT_SEARCH_RATE,
             "cap_records_per_s": _cap(settings.MARTECH_CRM["HUBSPOT_SEARCH_RATE"], page)}
            if mode == "search" else
            {"rate": settings.MARTECH_CRM["HUBSPOT_RATE"], "cap_records_per_s": _cap(settings.MARTECH_CRM["HUBSPOT_RATE"],
                                                                                   page)}),
         "paced_waits": len(paced), "paced_seconds": round(sum(paced), 2)},
        {"metric": f"{name}_records_per_cpu_s", "value": round(n / cpu, 1),
         "unit": "records/cpu-s", "cpu_seconds": round(cpu, 2), "emulator_in_process": False},
        {"metric": f"{name}_emulator_cpu_s", "value": round(emulator_cpu, 2),
         "unit": "s", "records_per_emulator_cpu_s": round(n / emulator_cpu, 1) if emulator_cpu else None},
        {"metric": f"{name}_api_calls", "value": run.api_calls, "unit": "calls",
         "minimum": -(-n // page), "page": page, "emulator_429s": refused},
        {"metric": f"{name}_breakdown", "value": round(spent.wall, 2), "unit": "s",
         **spent.figures(units=-(-n // page), unit="page")},
        {"metric": f"{name}_completeness", "value": round(100 * distinct / n, 2),
         "unit": "%", "applied_twice": run.pulled + run.skipped - n},
    ]
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    ids = list(Lead.objects.filter(email__startswith=f"{prefix}-").values_list("pk", flat=True))
    for start in range(0, len(ids), 5000):
        Lead.objects.filter(pk__in=ids[start:start + 5000]).delete()
    return figures


def _cap(rate: str, page: int) -> float:
    """The most records per second a rate ("5/1s") of calls of ``page`` records allows."""
    from martech.crm.connectors.base import parse_rate

    limit, window = parse_rate(rate)
    return round(limit * page / window, 1)


def _serve_forked(app, pipe) -> None:
    """The forked emulator process: serve ``app``, send its URL, then answer
    "cpu" with this process's CPU seconds and its 429s by policy until "stop"."""
    from martech.crm.emulators.base import Served

    served = Served(app).start()
    pipe.send(served.url)
    while pipe.recv() == "cpu":
        pipe.send((time.process_time(), dict(app.refused_429)))
    served.stop()


def idle_cost(provider: str) -> list[dict]:
    """API calls of an idle connection: one pull the way it was (every ask
    every run) and an hour of scheduled pulls now (12 runs, owners and
    deletions once)."""
    from martech.crm.connectors import connector_for
    from martech.crm.emulators.base import Served
    from martech.crm.models import SyncCursor
    from martech.crm.services import (
        deletions_pull_recorded,
        links_pull,
        owners_pull_recorded,
        pull_changes,
        pulled_link_keys,
        pulled_object_keys,
    )
    from martech.crm.tasks import pull_all
    from martech.crm.types import (
        COMPANY_MAPPINGS,
        SALESFORCE_ACCOUNT_MAPPINGS,
        SALESFORCE_CAMPAIGN_MAPPINGS,
        SALESFORCE_CONTACT_MAPPINGS,
        SALESFORCE_TASK_MAPPINGS,
        TASK_MAPPINGS,
    )

    from attribution.crm_sync import HUBSPOT_MAPPINGS, SALESFORCE_MAPPINGS

    Connection.objects.filter(provider=provider).delete()
    connection = Connection.objects.create(provider=provider, name="bench", daily_api_limit=10_000_000)
    if provider == "salesforce":
        from martech.crm.emulators.salesforce import SalesforceEmulator
        from martech.crm.emulators.tls import ensure_certificate

        certs = tempfile.mkdtemp()
        cert, key = ensure_certificate(Path(certs))
        app = SalesforceEmulator()
        served = Served(app, ssl_context=(str(cert), str(key))).start()
        settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SALESFORCE_URL": served.url, "SALESFORCE_CA_CERT": str(cert)}
        maps = {"contact": SALESFORCE_CONTACT_MAPPINGS, "company": SALESFORCE_ACCOUNT_MAPPINGS,
                "deal": SALESFORCE_MAPPINGS, "campaign": SALESFORCE_CAMPAIGN_MAPPINGS, "task": SALESFORCE_TASK_MAPPINGS}
        count = lambda: app.api_used  # noqa: E731
    else:
        from martech.crm.emulators.hubspot import HubSpotEmulator

        app = HubSpotEmulator()
        served = Served(app).start()
        settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": served.url}
        maps = {"contact": [("email", "email", "text", {}), ("first_name", "firstname", "text", {})],
                "company": COMPANY_MAPPINGS, "deal": HUBSPOT_MAPPINGS, "task": TASK_MAPPINGS}
        count = lambda: sum(app.calls.values())  # noqa: E731
    for obj, rows in maps.items():
        for local, remote, kind, extra in rows:
            FieldMapping.objects.create(connection=connection, object=obj, local_field=local, remote_field=remote,
                                        kind=kind, **extra)
    try:
        pull_all()  # the first run reads everything there is
        # Before: every ask, every run (owners, each object, each link, each Get Deleted).
        SyncCursor.objects.filter(connection=connection, object__startswith="del:").update(value="")
        before = count()
        connector = connector_for(connection)
        owners_pull_recorded(connection=connection, connector=connector)
        keys = pulled_object_keys(connection=connection, connector=connector)
        for key in keys:
            pull_changes(connection=connection, obj=key, connector=connector)
            for link in pulled_link_keys(connection=connection, obj=key, connector=connector):
                links_pull(connection=connection, link=link, connector=connector)
        deletions_pull_recorded(connection=connection, keys=keys, connector=connector)
        old_per_pull = count() - before
        # Now: an hour of the schedule, the slow asks due once in it.
        SyncCursor.objects.filter(connection=connection, object__in=["owners", "del:*"]).update(resume={})
        before = count()
        pull_all()
        first = count() - before
        for _ in range(11):
            pull_all()
        per_hour = count() - before
    finally:
        served.stop()
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    return [
        {"metric": f"{provider}_idle_api_calls_per_pull_before", "value": old_per_pull, "unit": "calls",
         "object_types": len(keys)},
        {"metric": f"{provider}_idle_api_calls_per_hour", "value": per_hour, "unit": "calls",
         "pulls_per_hour": 12, "first_pull_with_owners_and_deletions": first,
         "per_pull_after": (per_hour - first) // 11, "before_per_hour": old_per_pull * 12},
    ]


def run_single(provider: str, n: int) -> list[dict]:
    """One provider at one size in this process (its peak memory is this size's alone);
    provider "hubspot_companies" pushes N accounts as HubSpot companies."""
    if provider == "hubspot_pull":
        return pull_behind_cap(n)
    if provider == "hubspot_import":
        return pull_behind_cap(n, mode="list")
    if provider.startswith("idle_"):
        return idle_cost(provider.removeprefix("idle_"))
    stage = LifecycleStage.objects.get(key="lead")
    with tempfile.TemporaryDirectory() as certs:
        if provider == "salesforce":
            proc, url = start_emulator(provider, {"MARTECH_CRM_SALESFORCE_EMULATOR_CERT_DIR": certs})
            settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SALESFORCE_URL": url,
                                    "SALESFORCE_CA_CERT": str(Path(certs) / "salesforce-emulator.pem")}
        else:
            proc, url = start_emulator("hubspot")
            settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": url}
        try:
            if provider == "hubspot_companies":
                return companies(n, url, proc.pid)
            return one_size(provider, n, stage, proc.pid)
        finally:
            proc.terminate()
            proc.wait()


def _uptime() -> str:
    """``uptime``'s line (the machine's load beside the figures)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--provider", choices=["hubspot", "salesforce"], action="append",
                        help="Default: both.")
    parser.add_argument("--only", choices=["pulls"],
                        help="pulls: only the HubSpot pull behind the cap and the full import (the run's size) "
                             "and the idle costs; the other figures of --out are kept.")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="Seconds the emulators add to every answer (a real CRM's round trip); default 0.")
    parser.add_argument("--single", nargs=2, metavar=("PROVIDER", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "crm_sync.json"))
    args = parser.parse_args()
    if args.single:
        for line in run_single(args.single[0], int(args.single[1])):
            print(json.dumps(line), flush=True)
        return 0
    sizes = [3_000] if args.quick else [10_000, 100_000]
    providers = args.provider or ["hubspot", "salesforce"]
    if Connection.objects.filter(provider__in=providers).exclude(name="bench").exists():
        raise SystemExit(json.dumps({"error": {"code": "db_in_use",
                                               "message": "Run on a bench database without a real CRM connection."}}))
    out = []
    load_start, uptime_start = os.getloadavg(), _uptime()
    runs = [(p, n) for p in providers for n in sizes] if not args.only else []
    if "hubspot" in providers:
        if not args.only:
            runs.append(("hubspot_companies", 3_000 if args.quick else 10_000))
        runs.append(("hubspot_pull", 12_000 if args.quick else 100_000))
        runs.append(("hubspot_import", 3_000 if args.quick else 100_000))
    runs += [(f"idle_{p}", 0) for p in providers]
    for provider, n in runs:
        # A fresh process per size, so each peak_rss is that size's own.
        done = subprocess.run([sys.executable, __file__, "--single", provider, str(n)], cwd=ROOT,
                              capture_output=True, text=True,
                              env={**os.environ, "BENCH_CRM_LATENCY": str(args.latency)})
        lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"metric"')]
        if done.returncode != 0 or not lines:
            raise SystemExit(json.dumps({"error": {"code": "bench_failed", "message":
                                                   f"{provider} {n}: {done.stderr[-2000:]}"}}))
        for line in lines:
            print(json.dumps(line), flush=True)
            out.append(line)
    meta = {"quick": args.quick, **({"only": args.only} if args.only else {}), "sizes": sizes, "providers": providers,
            "database": settings.DATABASES["default"]["ENGINE"], "loadavg_start": load_start,
            "uptime_start": uptime_start,
            "loadavg": os.getloadavg(), "uptime": _uptime(), "cpu_count": os.cpu_count(), "emulator_latency_s": args.latency,
            "process_per_size": True}
    path = Path(args.out)
    if args.only and path.exists():
        # Keep the other figures of the last whole run (their own meta beside them).
        earlier = json.loads(path.read_text())
        ran = {line["metric"] for line in out}
        family = ("hubspot_pull_", "hubspot_full_import_", "hubspot_idle_", "salesforce_idle_")
        kept = [f for f in earlier.get("figures", []) if f["metric"] not in ran and not f["metric"].startswith(family)]
        earlier_meta = earlier.get("meta", {})
        meta["kept_from"] = {"figures": len(kept), **{k: earlier_meta.get(k) for k in ("quick", "uptime_start",
                                                                                        "uptime", "sizes")}}
        out = kept + out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "figures": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
