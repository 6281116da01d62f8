"""Lead list latency at scale: the API's first and deeper pages, and the admin changelist.

Loads N leads into the DATABASE_URL database (default 1,000,000; ``--quick``
50,000) once: with PostgreSQL's COPY (psycopg ``cursor.copy``), elsewhere with
``bulk_create`` batches. A marker (the last bench lead's email) makes a rerun
skip the load. Then, in-process through Django's test client:

- ``GET /api/v1/leads?page_size=50|500`` (bearer token with leads:read):
  first page, and pages reached by following ``next`` cursors;
- the same with a stage filter and with ``updated_at_after`` (incremental pulls);
- ``GET /admin/martech/lead/`` as a superuser.

For each: p50/p95 latency, SQL queries per request (CaptureQueriesContext),
and COUNT queries, split into whole-table counts (the thing to avoid) and
capped ones (``COUNT(*) FROM (... LIMIT n)``).

    createdb -h 127.0.0.1 -U postgres martech_bench_h2
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench_h2 python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench_h2 python bench/lead_list.py [--quick]

Prints one JSON line per figure and writes them all to bench/results/lead_list.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from martech.models import Account, ApiClient, Channel, Lead, LifecycleStage  # noqa: E402
from martech.services.api_clients import api_client_create  # noqa: E402

EMAIL = "bench{}@lead-list.example"
T0 = datetime(2024, 1, 1, tzinfo=dt_timezone.utc)
COUNTRIES = ["US", "DE", "GB", "FR", "CA", "NL", "SE", "ES", "IT", "AU"]
FIRST = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo"]
LAST = ["Smith", "Meyer", "Jones", "Khan", "Lee", "Novak", "Rossi", "Silva", "Tanaka", "Weber"]
SOURCES = [c for c in Channel.values]
WHOLE_TABLE_COUNT = re.compile(r'SELECT COUNT\(\*\)[^(]*FROM "martech_lead"', re.I)

figures: list[dict] = []


def emit(metric: str, value, unit: str) -> None:
    row = {"metric": metric, "value": value, "unit": unit}
    figures.append(row)
    print(json.dumps(row), flush=True)


# --- Load -------------------------------------------------------------------


def _lead_row_values(i: int, *, stages: list[int], accounts: list[int], defaults: dict) -> dict:
    created = T0 + timedelta(seconds=30 * i)
    return {
        **defaults,
        "email": EMAIL.format(i),
        "first_name": FIRST[i % 10],
        "last_name": LAST[(i // 10) % 10],
        "country": COUNTRIES[i % 10],
        "company_name": f"Company {i % 5000}",
        "lifecycle_stage_id": stages[i % len(stages)] if i % 7 else stages[0],
        "account_id": accounts[i % len(accounts)] if i % 3 == 0 else None,
        "total_score": (i * 37) % 101,
        "fit_score": (i * 11) % 51,
        "engagement_score": (i * 13) % 51,
        "original_source": SOURCES[i % len(SOURCES)],
        "created_at": created,
        "updated_at": created + timedelta(days=(i % 90)),
    }


def _field_defaults() -> tuple[list[str], dict]:
    """Every concrete column but the id, with the value Django would give it
    (COPY bypasses Django, and these columns have no database default)."""
    columns, defaults = [], {}
    for f in Lead._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(f.column)
        if f.has_default():
            value = f.get_default()
        elif f.null:
            value = None
        else:
            value = ""
        if f.get_internal_type() == "JSONField":
            value = json.dumps(value)
        defaults[f.attname] = value
    return columns, defaults


def load(n: int) -> float:
    """Load bench leads 0..n-1 (skipping those present). Returns seconds spent."""
    if Lead.objects.filter(email=EMAIL.format(n - 1)).exists():
        return 0.0
    start = time.perf_counter()
    first = Lead.objects.filter(email__startswith="bench", email__endswith="@lead-list.example").count()
    stages = list(LifecycleStage.objects.order_by("order").values_list("id", flat=True))
    if Account.objects.filter(domain__endswith=".lead-list.example").count() < 1000:
        Account.objects.bulk_create(
            [Account(name=f"Bench {k}", domain=f"b{k}.lead-list.example", industry="Software", country="US") for k in range(1000)],
            ignore_conflicts=True,
        )
    accounts = list(Account.objects.filter(domain__endswith=".lead-list.example").values_list("id", flat=True))
    columns, defaults = _field_defaults()
    attnames = [f.attname for f in Lead._meta.concrete_fields if not f.primary_key]
    print(f"loading leads {first}..{n - 1} ({connection.vendor})", file=sys.stderr, flush=True)
    if connection.vendor == "postgresql":
        cols = ", ".join(f'"{c}"' for c in columns)
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.cursor.copy(f'COPY "martech_lead" ({cols}) FROM STDIN') as copy:
                for i in range(first, n):
                    row = _lead_row_values(i, stages=stages, accounts=accounts, defaults=defaults)
                    copy.write_row([row[a] for a in attnames])
                    if i % 200_000 == 0 and i:
                        print(f"  {i}", file=sys.stderr, flush=True)
            cursor.execute('ANALYZE "martech_lead"')
    else:
        batch: list[Lead] = []
        for i in range(first, n):
            row = _lead_row_values(i, stages=stages, accounts=accounts, defaults=defaults)
            row["properties"] = {}
            batch.append(Lead(**row))
            if len(batch) == 5000:
                Lead.objects.bulk_create(batch)
                batch = []
        Lead.objects.bulk_create(batch)
    return time.perf_counter() - start


# --- Measure ------------------------------------------------------------------


class Probe:
    def __init__(self):
        self.latencies: list[float] = []
        self.queries: list[int] = []
        self.whole_counts: list[str] = []
        self.capped_counts: list[str] = []

    def get(self, client: Client, url: str, **headers):
        with CaptureQueriesContext(connection) as ctx:
            t = time.perf_counter()
            response = client.get(url, **headers)
            self.latencies.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.content[:500])
        self.queries.append(len(ctx.captured_queries))
        for q in ctx.captured_queries:
            sql = q["sql"]
            if "COUNT(" in sql.upper():
                (self.whole_counts if WHOLE_TABLE_COUNT.search(sql) and "LIMIT" not in sql.upper() else self.capped_counts).append(sql[:300])
        return response

    def report(self, name: str) -> None:
        lat = sorted(self.latencies)
        emit(f"{name}_p50", round(statistics.median(lat), 1), "ms")
        emit(f"{name}_p95", round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 1), "ms")
        emit(f"{name}_queries", max(self.queries), "queries/request")
        emit(f"{name}_whole_table_counts", len(self.whole_counts), "queries")
        if self.capped_counts:
            emit(f"{name}_capped_counts", len(self.capped_counts), "queries")


def measure(*, repeats: int, depth: int) -> None:
    User = get_user_model()
    root, _ = User.objects.get_or_create(username="bench-root", defaults={"is_staff": True, "is_superuser": True})
    ApiClient.objects.filter(name="bench-lead-list").delete()
    _, token = api_client_create(name="bench-lead-list", scopes=["leads:read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    api = Client()
    admin = Client()
    admin.force_login(root)
    stage = LifecycleStage.objects.order_by("order").values_list("key", flat=True)[1]
    since = (T0 + timedelta(days=300)).isoformat().replace("+", "%2B")

    for size in (50, 500):
        for name, url in (
            (f"api_first_page_{size}", f"/api/v1/leads?page_size={size}"),
            (f"api_stage_filter_{size}", f"/api/v1/leads?page_size={size}&lifecycle_stage={stage}"),
            (f"api_updated_since_{size}", f"/api/v1/leads?page_size={size}&updated_at_after={since}"),
        ):
            probe = Probe()
            probe.get(api, url, **auth)  # warm-up
            probe = Probe()
            for _ in range(repeats):
                probe.get(api, url, **auth)
            probe.report(name)
        # Deeper pages: follow the cursor `depth` pages down, `repeats // 4` times.
        probe = Probe()
        for _ in range(max(1, repeats // 4)):
            url = f"/api/v1/leads?page_size={size}"
            for _ in range(depth):
                url = probe.get(api, url, **auth).json()["next"]
                if not url:
                    break
        probe.report(f"api_cursor_pages_{size}")

    probe = Probe()
    probe.get(admin, "/admin/martech/lead/")
    probe = Probe()
    for _ in range(repeats):
        probe.get(admin, "/admin/martech/lead/")
    probe.report("admin_changelist")
    probe = Probe()
    for _ in range(max(3, repeats // 4)):
        probe.get(admin, "/admin/martech/lead/?p=50")
    probe.report("admin_changelist_page_50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 leads, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--depth", type=int, default=20, help="cursor pages to follow")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.leads
    repeats = args.repeats or (12 if args.quick else 30)

    load_s = load(n)
    total = Lead.objects.filter(email__startswith="bench", email__endswith="@lead-list.example").count()
    emit("leads_in_table", Lead.objects.count(), "rows")
    emit("bench_leads", total, "rows")
    if load_s:
        emit("load_seconds", round(load_s, 1), "s")
    else:
        emit("load_skipped", 1, "already loaded")

    # Private cache: throttle counters must not land in the shared one.
    with override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
        measure(repeats=repeats, depth=args.depth)

    out = ROOT / "bench" / "results" / "lead_list.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"database": connection.vendor, "leads": n, "quick": args.quick, "repeats": repeats, "at": timezone.now().isoformat()}
    out.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
