"""Push N changed leads through the CRM outbox to the HubSpot emulator.

Runs against the DATABASE_URL database (migrated). Starts the emulator as a
separate process on a free loopback port (``manage.py crm_emulator --port 0``,
latency 0) so this process's peak memory is the sync's alone. Creates N leads
under a run prefix, queues them (as the lead hook does), drains the outbox
end to end (claim, payload, hash check, HTTP batch upsert through
hubspot-api-client, push state, HubSpot ids written back), then queues them all
again unchanged and drains once more: that must make zero write calls.
Deletes its rows at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/crm_sync.py [--quick]

--quick: N = 10,000 (under a minute). Full: N = 10,000 and 100,000, to compare
peak memory. Prints one JSON line per figure and writes bench/results/crm_sync.json.

Then the same for N = 10,000 accounts pushed as HubSpot companies (batch
upsert by domain): calls used, records per second, and the unchanged rerun.

The Salesforce figures (50 calls per 10,000 with Collections) are not here:
the Salesforce connector is built on another branch.
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

settings.DEBUG = False  # no query log growing with N


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_emulator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "crm_emulator", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline().strip()
    if "emulator on " not in line:
        proc.kill()
        raise SystemExit(json.dumps({"error": {"code": "emulator", "message": f"emulator did not start: {line!r}"}}))
    return proc, line.rsplit(" ", 1)[1]


def one_size(n: int, url: str, stage: LifecycleStage) -> list[dict]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": url}
    Connection.objects.filter(provider="hubspot").delete()
    connection = Connection.objects.create(provider="hubspot", name="bench", daily_api_limit=10_000_000)
    for local, remote in [("email", "email"), ("first_name", "firstname"), ("last_name", "lastname"),
                          ("job_title", "jobtitle"), ("country", "country")]:
        FieldMapping.objects.create(connection=connection, local_field=local, remote_field=remote)
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
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    run = outbox_drain(connection=connection)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss_after = rss_mb()
    queue()
    t1 = time.perf_counter()
    second = outbox_drain(connection=connection)
    elapsed2 = time.perf_counter() - t1
    assert run.pushed == n and run.failed == 0, (run.pushed, run.failed, run.error)
    figures = [
        {"metric": f"hubspot_push_{n}_api_calls", "value": run.api_calls, "unit": "calls",
         "minimum": -(-n // 100)},
        {"metric": f"hubspot_push_{n}_records_per_s", "value": round(n / elapsed, 1), "unit": "records/s"},
        {"metric": f"hubspot_push_{n}_records_per_cpu_s", "value": round(n / cpu, 1), "unit": "records/cpu-s"},
        {"metric": f"hubspot_push_{n}_peak_rss", "value": round(rss_after, 1), "unit": "MB",
         "rss_before_drain": round(rss_before, 1)},
        {"metric": f"hubspot_push_{n}_unchanged_write_calls", "value": second.api_calls, "unit": "calls",
         "skipped": second.skipped, "seconds": round(elapsed2, 2)},
    ]
    # Clean up this run's rows.
    OutboxItem.objects.filter(connection=connection).delete()
    PushState.objects.filter(connection=connection).delete()
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    Lead.objects.filter(email__startswith=f"{prefix}-").delete()
    return figures


def companies(n: int, url: str) -> list[dict]:
    """N accounts -> HubSpot companies, upserted by domain, 100 per call."""
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
    t0, cpu0 = time.perf_counter(), time.process_time()
    run = outbox_drain(connection=connection)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    queue()
    second = outbox_drain(connection=connection)
    assert run.pushed == n and run.failed == 0, (run.pushed, run.failed, run.error)
    figures = [
        {"metric": f"hubspot_companies_push_{n}_api_calls", "value": run.api_calls, "unit": "calls",
         "minimum": -(-n // 100)},
        {"metric": f"hubspot_companies_push_{n}_records_per_s", "value": round(n / elapsed, 1), "unit": "records/s",
         "cpu_s": round(cpu, 2), "wall_s": round(elapsed, 2)},
        {"metric": f"hubspot_companies_push_{n}_unchanged_write_calls", "value": second.api_calls, "unit": "calls",
         "skipped": second.skipped},
    ]
    OutboxItem.objects.filter(connection=connection).delete()
    PushState.objects.filter(connection=connection).delete()
    SyncRun.objects.filter(connection=connection).delete()
    connection.delete()
    Account.objects.filter(domain__startswith=f"{prefix}-").delete()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "crm_sync.json"))
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    if Connection.objects.filter(provider="hubspot").exclude(name="bench").exists():
        raise SystemExit(json.dumps({"error": {"code": "db_in_use",
                                               "message": "Run on a bench database without a real HubSpot connection."}}))
    stage = LifecycleStage.objects.get(key="lead")
    proc, url = start_emulator()
    out = []
    try:
        for n in sizes:
            for line in one_size(n, url, stage):
                line["loadavg_1m"] = round(os.getloadavg()[0], 2)
                print(json.dumps(line), flush=True)
                out.append(line)
        for line in companies(10_000, url):
            line["loadavg_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(line), flush=True)
            out.append(line)
    finally:
        proc.terminate()
        proc.wait()
    meta = {"quick": args.quick, "sizes": sizes, "database": settings.DATABASES["default"]["ENGINE"],
            "loadavg": os.getloadavg(), "emulator_latency_s": 0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "figures": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
