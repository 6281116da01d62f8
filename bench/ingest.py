"""Throughput of POST /api/v1/events, and of the website tracker's public
POST /api/v1/t, each against a plain bulk insert.

Runs against the DATABASE_URL database (migrated with ``manage.py migrate``):
creates its own API client, leads, identities and events under a unique run
prefix and deletes them at the end. Each batch of 500 Segment-shaped items
(page, track and identify calls from a pool of visitors, some of whom give an
email; UTM on some pages; a few re-sent messageIds) goes through the real
endpoint in-process (DRF test client: authentication, throttle, parsing,
validation, dedupe, identity resolution, touches, rendering). The same rows,
flattened to Event objects, are then written with a plain
``Event.objects.bulk_create``; the two are interleaved batch by batch so both
see the same table sizes.

Then page views go through the tracker endpoint the way the tracker script
sends them (text/plain JSON with the publishable key and an allowed Origin,
``--tracker-batch`` page views per request, from the same visitor pool, so
some resolve to leads), interleaved with a plain ``bulk_create`` of the same
rows in the same batch size; and once more one page view per request.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_bench python bench/ingest.py [--quick]

Prints one JSON line per figure and writes them all to bench/results/ingest.json.
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
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from martech.models import ApiClient, Event, EventType, Identity, Lead, QuarantinedEvent, Website  # noqa: E402

TRACK_EVENTS = ["demo_requested", "pricing_viewed", "webinar_registered", "ad_clicked", "trial_started"]
UTMS = [
    {"source": "google", "medium": "cpc", "name": "brand"},
    {"source": "adwords", "medium": "PaidSearch", "name": "Generic"},
    {"source": "linkedin", "medium": "paid_social", "name": "launch"},
    {"source": "newsletter", "medium": "email", "name": "march"},
    {"source": "bing", "medium": "organic", "name": ""},
]
T0 = datetime(2025, 1, 1, tzinfo=dt_timezone.utc)


class Workload:
    """Deterministic stream of batches from a pool of visitors."""

    def __init__(self, prefix: str, total: int, batch_size: int, *, per_visitor: int, email_share: float, seed: int = 7):
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.total = total
        self.batch_size = batch_size
        self.visitors = max(50, total // per_visitor)
        self.email_every = max(1, round(1 / email_share)) if email_share > 0 else 0
        self.identified: set[int] = set()
        self.sent: list[str] = []
        self.n = 0

    def _visitor_email(self, v: int) -> str | None:
        # A share of the visitors ever give an email (each becomes a new lead).
        return f"{self.prefix}v{v}@bench-{v % 97}.example" if self.email_every and v % self.email_every == 0 else None

    def item(self) -> dict:
        rng = self.rng
        self.n += 1
        if self.sent and rng.random() < 0.02:
            mid = rng.choice(self.sent[-2000:])  # a client retry
            return {"type": "track", "messageId": mid, "event": "demo_requested", "anonymousId": f"{self.prefix}a0",
                    "timestamp": T0.isoformat()}
        v = rng.randrange(self.visitors)
        mid = f"{self.prefix}m{self.n}"
        self.sent.append(mid)
        at = (T0 + timedelta(seconds=self.n * 3)).isoformat().replace("+00:00", "Z")
        anon = f"{self.prefix}a{v}"
        email = self._visitor_email(v)
        roll = rng.random()
        if email and (roll < 0.06 or (v not in self.identified and roll < 0.25)):
            self.identified.add(v)
            return {"type": "identify", "messageId": mid, "anonymousId": anon, "timestamp": at,
                    "traits": {"email": email, "firstName": f"F{v}", "company": f"Co {v % 97}"}}
        if roll < 0.65:
            item = {"type": "page", "messageId": mid, "anonymousId": anon, "timestamp": at, "name": "Docs",
                    "properties": {"url": f"https://example.com/p/{v % 50}", "title": "Docs", "path": f"/p/{v % 50}"},
                    "context": {"userAgent": "Mozilla/5.0 bench", "ip": "203.0.113.9"}}
            if rng.random() < 0.3:
                item["context"]["campaign"] = rng.choice(UTMS)
            return item
        item = {"type": "track", "messageId": mid, "anonymousId": anon, "timestamp": at,
                "event": rng.choice(TRACK_EVENTS), "properties": {"plan": "pro", "value": rng.randrange(100)}}
        if email and v in self.identified and rng.random() < 0.5:
            item["properties"]["email"] = email
        return item

    def batches(self):
        made = 0
        while made < self.total:
            size = min(self.batch_size, self.total - made)
            yield [self.item() for _ in range(size)]
            made += size


def plain_rows(items: list[dict], prefix: str, types: dict[str, EventType], batch: uuid.UUID) -> list[Event]:
    """The same rows as Event objects, no validation or resolution."""
    rows = []
    for i, it in enumerate(items):
        name = {"page": "page_view", "identify": "identify"}.get(it["type"]) or it["event"]
        campaign = (it.get("context") or {}).get("campaign") or {}
        rows.append(
            Event(
                client_event_id=f"{prefix}plain-{batch.hex[:8]}-{i}",
                kind=it["type"],
                event_type=types[name],
                anonymous_id=it.get("anonymousId", ""),
                properties=it.get("properties") or {},
                context=it.get("context") or {},
                occurred_at=datetime.fromisoformat(it["timestamp"]),
                utm_source=campaign.get("source", ""),
                utm_medium=campaign.get("medium", ""),
                utm_campaign=campaign.get("name", ""),
                ingest_batch=batch,
            )
        )
    return rows


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


TRACKER_ORIGIN = "https://www.bench.example"


def tracker_page_view(prefix: str, n: str, visitors: int, rng: random.Random) -> dict:
    """One page view as the tracker script sends it."""
    v = rng.randrange(visitors)
    url = f"{TRACKER_ORIGIN}/p/{v % 50}"
    context = {"page": {"url": url, "path": f"/p/{v % 50}", "referrer": "", "title": "Docs", "search": ""},
               "library": {"name": "martech-tracker", "version": "1"}, "locale": "en-US"}
    if rng.random() < 0.3:
        utm = rng.choice(UTMS)
        context["campaign"] = utm
        url += f"?utm_source={utm['source']}&utm_medium={utm['medium']}"
        context["page"]["url"] = url
    return {"type": "page", "messageId": f"{prefix}tm{n}", "anonymousId": f"{prefix}a{v}", "name": "Docs",
            "timestamp": datetime.now(dt_timezone.utc).isoformat(), "context": context,
            "properties": {"url": url, "path": f"/p/{v % 50}", "referrer": "", "title": "Docs", "search": ""}}


def tracker_phase(prefix: str, website: Website, types: dict[str, EventType], api: APIClient, *, total: int,
                  batch_size: int, visitors: int, tag: str) -> dict[str, float]:
    """Page views through POST /api/v1/t, batch by batch against the same
    batch through the token API (POST /api/v1/events: the tracker keeps its
    messageIds in its own namespace, so the same items are new there) and a
    plain bulk_create of the same rows in the same batch size."""
    from django.test import Client

    client = Client()
    rng = random.Random(11)
    tracker_time = plain_time = tracker_cpu = plain_cpu = api_time = 0.0
    sent = accepted = plain_written = 0
    n = 0
    latencies: list[float] = []
    first = True
    while sent < total:
        items = []
        for _ in range(min(batch_size, total - sent)):
            n += 1
            items.append(tracker_page_view(prefix, f"{tag}{n}", visitors, rng))
        body = json.dumps({"key": website.key, "sentAt": datetime.now(dt_timezone.utc).isoformat(), "batch": items})
        start, cpu_start = time.perf_counter(), time.process_time()
        res = client.post("/api/v1/t", body, content_type="text/plain;charset=UTF-8", HTTP_ORIGIN=TRACKER_ORIGIN)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if res.status_code != 200:
            raise SystemExit(f"tracker: HTTP {res.status_code}: {res.content[:500]!r}")
        if first:  # warm-up, as for the batch API
            first = False
            continue
        tracker_time += elapsed
        tracker_cpu += cpu
        latencies.append(elapsed * 1000)
        sent += len(items)
        accepted += res.json()["accepted"]
        start = time.perf_counter()
        res = api.post("/api/v1/events", json.dumps({"batch": items}), content_type="application/json")
        api_time += time.perf_counter() - start
        if res.status_code != 200:
            raise SystemExit(f"events API: HTTP {res.status_code}: {res.content[:500]!r}")
        rows = plain_rows(items, prefix, types, uuid.uuid4())
        start, cpu_start = time.perf_counter(), time.process_time()
        with transaction.atomic():
            Event.objects.bulk_create(rows, batch_size=batch_size)
        plain_time += time.perf_counter() - start
        plain_cpu += time.process_time() - cpu_start
        plain_written += len(rows)
    return {"per_s": sent / tracker_time, "plain_per_s": plain_written / plain_time, "accepted": accepted,
            "per_cpu_s": sent / tracker_cpu, "plain_per_cpu_s": plain_written / plain_cpu,
            "api_per_s": sent / api_time,
            "sent": sent, "p50": statistics.median(latencies), "p95": percentile(latencies, 0.95)}


def cleanup(prefix: str, client_name: str, website: Website | None = None) -> None:
    if website is not None:
        Event.objects.filter(client_event_id__startswith=f"t{website.pk}:").delete()
        Website.history.filter(id=website.pk).delete()
        website.delete()
    Event.objects.filter(client_event_id__startswith=prefix).delete()
    Identity.objects.filter(value__startswith=prefix).delete()
    Lead.objects.filter(email__startswith=prefix).delete()  # cascades stage history, consent, events
    QuarantinedEvent.objects.filter(client_event_id__startswith=prefix).delete()
    ApiClient.objects.filter(name=client_name).delete()
    ApiClient.history.filter(name=client_name).delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 events (well under a minute)")
    parser.add_argument("--events", type=int, default=None, help="events to send (default 100,000; --quick 10,000)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--events-per-visitor", type=int, default=20, help="visitor pool = events / this (default 20)")
    parser.add_argument("--email-share", type=float, default=0.2, help="share of visitors who identify (default 0.2)")
    parser.add_argument("--tracker-events", type=int, default=None,
                        help="page views through /api/v1/t (default 20,000; --quick 2,000); a twentieth more go one per request")
    parser.add_argument("--tracker-batch", type=int, default=20,
                        help="page views per tracker request (default 20, what the script sends at most)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    args = parser.parse_args()
    total = args.events or (10_000 if args.quick else 100_000)
    tracker_total = args.tracker_events or (2_000 if args.quick else 20_000)

    # Query logging (DEBUG) would add its own cost to every query.
    settings.DEBUG = False
    prefix = f"bench{uuid.uuid4().hex[:8]}-"
    client_name = f"{prefix}client"
    token = f"{prefix}{uuid.uuid4().hex}"
    ApiClient.objects.create(name=client_name, token_hash=ApiClient.hash_token(token), token_prefix=token[:8], scopes=["capture"])
    types = {et.name: et for et in EventType.objects.all()}
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    # The client's throttle would stop a long run; it is not what is measured.
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], user="1000000/min", tracker="1000000/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    from rest_framework.settings import api_settings

    api_settings.reload()

    queries = {"n": 0}

    def count_queries(execute, sql, params, many, context):
        queries["n"] += 1
        return execute(sql, params, many, context)

    workload = Workload(
        prefix, total, args.batch_size, per_visitor=args.events_per_visitor, email_share=args.email_share
    )
    latencies: list[float] = []
    per_batch_queries: list[int] = []
    ingest_time = plain_time = ingest_cpu = 0.0
    sent = accepted = duplicate = rejected = plain_rows_written = 0
    website = Website.objects.create(name=f"{prefix}site", allowed_origins=[TRACKER_ORIGIN])
    try:
        for n, items in enumerate(workload.batches()):
            body = json.dumps({"batch": items})
            queries["n"] = 0
            with connection.execute_wrapper(count_queries):
                start, cpu_start = time.perf_counter(), time.process_time()
                res = api.post("/api/v1/events", body, content_type="application/json")
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if res.status_code != 200:
                raise SystemExit(f"batch {n}: HTTP {res.status_code}: {res.content[:500]!r}")
            data = res.json()
            if n == 0:
                # The first batch pays for imports and caches; keep it out of
                # the figures. The tables may have been emptied by an earlier
                # run: fresh statistics keep the planner on the indexes a live
                # table would use (e.g. anonymous_id, not "lead_id IS NULL").
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute("ANALYZE martech_event, martech_lead, martech_identity")
                continue
            ingest_time += elapsed
            ingest_cpu += cpu
            latencies.append(elapsed * 1000)
            per_batch_queries.append(queries["n"])
            sent += len(items)
            accepted += data["accepted"]
            duplicate += data["duplicate"]
            rejected += data["rejected"]

            rows = plain_rows(items, prefix, types, uuid.uuid4())
            start = time.perf_counter()
            with transaction.atomic():
                Event.objects.bulk_create(rows, batch_size=args.batch_size)
            plain_time += time.perf_counter() - start
            plain_rows_written += len(rows)
        leads_made = Lead.objects.filter(email__startswith=prefix).count()
        # Before the tracker phase and the clean-up (whose deletes may load
        # rows into memory): the batch API's own peak.
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracker = tracker_phase(prefix, website, types, api, total=tracker_total, batch_size=args.tracker_batch,
                                visitors=workload.visitors, tag="b")
        single = tracker_phase(prefix, website, types, api, total=max(50, tracker_total // 20), batch_size=1,
                               visitors=workload.visitors, tag="s")
    finally:
        cleanup(prefix, client_name, website)

    events_per_s = sent / ingest_time
    plain_per_s = plain_rows_written / plain_time
    figures = [
        ("events_per_s", round(events_per_s, 1), "events/s"),
        ("plain_insert_per_s", round(plain_per_s, 1), "events/s"),
        ("ratio", round(events_per_s / plain_per_s, 3), "ingest/plain"),
        # This process's CPU only (the database server's work is not in it):
        # what one app core sustains when the database is not the limit.
        ("events_per_app_cpu_s", round(sent / ingest_cpu, 1), "events/cpu-s"),
        ("batch_latency_p50", round(statistics.median(latencies), 1), "ms"),
        ("batch_latency_p95", round(percentile(latencies, 0.95), 1), "ms"),
        ("queries_per_batch_mean", round(statistics.mean(per_batch_queries), 1), "queries"),
        ("queries_per_batch_max", max(per_batch_queries), "queries"),
        ("peak_rss", round(peak_rss, 1), "MiB"),
        ("events_sent", sent, "events"),
        ("accepted", accepted, "events"),
        ("duplicate", duplicate, "events"),
        ("rejected", rejected, "events"),
        ("leads_created", leads_made, "leads"),
        ("new_leads_per_batch", round(leads_made / max(1, len(latencies) + 1), 1), "leads"),
        ("batch_size", args.batch_size, "events"),
        # The website tracker's public endpoint (origin, key, public-input
        # rules, namespaced ids) against a plain insert in the same batch size.
        ("tracker_page_views_per_s", round(tracker["per_s"], 1), "page views/s"),
        ("tracker_plain_insert_per_s", round(tracker["plain_per_s"], 1), "events/s"),
        ("tracker_ratio", round(tracker["per_s"] / tracker["plain_per_s"], 3), "tracker/plain"),
        # This process's CPU only, as events_per_app_cpu_s: readable on a shared machine.
        ("tracker_page_views_per_app_cpu_s", round(tracker["per_cpu_s"], 1), "page views/cpu-s"),
        ("tracker_plain_insert_per_app_cpu_s", round(tracker["plain_per_cpu_s"], 1), "events/cpu-s"),
        ("tracker_cpu_ratio", round(tracker["per_cpu_s"] / tracker["plain_per_cpu_s"], 3), "tracker/plain"),
        # The same batches through the token API: what the public endpoint adds.
        ("tracker_events_api_per_s", round(tracker["api_per_s"], 1), "page views/s"),
        ("tracker_vs_events_api", round(tracker["per_s"] / tracker["api_per_s"], 3), "tracker/api"),
        ("tracker_request_latency_p50", round(tracker["p50"], 1), "ms"),
        ("tracker_request_latency_p95", round(tracker["p95"], 1), "ms"),
        ("tracker_batch_size", args.tracker_batch, "page views"),
        ("tracker_accepted", tracker["accepted"], "page views"),
        ("tracker_page_views_sent", tracker["sent"], "page views"),
        # One page view per request: what a visitor's first, lone page view costs.
        ("tracker_single_page_views_per_s", round(single["per_s"], 1), "page views/s"),
        ("tracker_single_plain_insert_per_s", round(single["plain_per_s"], 1), "events/s"),
        ("tracker_single_ratio", round(single["per_s"] / single["plain_per_s"], 3), "tracker/plain"),
        ("tracker_single_vs_events_api", round(single["per_s"] / single["api_per_s"], 3), "tracker/api"),
    ]
    out = [{"metric": m, "value": v, "unit": u} for m, v, u in figures]
    for line in out:
        print(json.dumps(line))
    meta = {
        "database": connection.vendor,
        "events": total,
        "quick": args.quick,
        "events_per_visitor": args.events_per_visitor,
        "email_share": args.email_share,
        "tracker_events": tracker_total,
        "load_average": os.getloadavg(),
        "at": datetime.now(dt_timezone.utc).isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "figures": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
