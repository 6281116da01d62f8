"""Erasure: one person with 10,000 events and 500 messages (goal < 2 s).

Runs against the DATABASE_URL database (migrated). Each round makes a person
with data in every app (tests/privacy/people.py: a lead, its identities,
10,000 events (--quick: the same), 500 nurture messages, consent, stage
history, scores, an assignment, a deal with a touch and a credit, CRM
outbox rows, push state, a webhook payload naming them ...) beside a
background of other people (2,000 leads with 10 events each, 1,000 webhook
receipts and quarantined events, whose raw text the erasure searches), then
times ``subject_erase`` (one transaction: lock, delete or anonymize every
app's rows, tombstones, receipt). Everything made is deleted at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/martech_privacy python bench/privacy.py [--quick]

--quick: 3 rounds, else 10. Prints one JSON line per figure and writes
them to bench/results/privacy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from attribution.models import Opportunity  # noqa: E402
from martech.crm.models import WebhookReceipt  # noqa: E402
from martech.models import Event, EventType, Lead, QuarantinedEvent  # noqa: E402
from martech.privacy.models import PrivacyRequest  # noqa: E402
from martech.privacy.services import subject_erase  # noqa: E402
from tests.privacy.people import make_person  # noqa: E402

figures: list[dict] = []
EVENTS, MESSAGES = 10_000, 500


def emit(metric: str, value, unit: str) -> None:
    row = {"metric": metric, "value": value, "unit": unit}
    figures.append(row)
    print(json.dumps(row), flush=True)


def background(prefix: str, leads: int = 2_000) -> None:
    page_view = EventType.objects.get(name="page_view")
    now = timezone.now()
    made = Lead.objects.bulk_create([Lead(email=f"{prefix}-bg{i}@example.net") for i in range(leads)],
                                    batch_size=1000)
    Event.objects.bulk_create([Event(client_event_id=f"{prefix}-bg{lead.pk}-{j}", event_type=page_view, lead=lead,
                                     anonymous_id=f"{prefix}-a{lead.pk}", occurred_at=now,
                                     properties={"url": "https://example.net/"})
                               for lead in made for j in range(10)], batch_size=5000)
    WebhookReceipt.objects.bulk_create([WebhookReceipt(provider="hubspot", event_id=f"{prefix}-w{i}",
                                                       payload=[{"objectId": str(10**6 + i)}]) for i in range(1000)])
    QuarantinedEvent.objects.bulk_create([QuarantinedEvent(client_event_id=f"{prefix}-q{i}", reason="unknown",
                                                           payload={"anonymousId": f"{prefix}-qa{i}"})
                                          for i in range(1000)])


def cleanup(prefix: str) -> None:
    Event.objects.filter(client_event_id__startswith=prefix).delete()
    Lead.objects.filter(email__startswith=prefix).delete()
    WebhookReceipt.objects.filter(event_id__startswith=prefix).delete()
    QuarantinedEvent.objects.filter(client_event_id__startswith=prefix).delete()
    Opportunity.objects.filter(name__startswith=f"Deal {prefix}").delete()
    PrivacyRequest.objects.filter(source=prefix).delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    prefix = f"pb{uuid.uuid4().hex[:8]}"
    background(prefix)
    times, queries, rows = [], [], []
    try:
        for n in range(rounds):
            person = make_person(tag=f"{prefix}r{n}", events=EVENTS, messages=MESSAGES)
            with CaptureQueriesContext(connection) as captured:
                t0 = time.perf_counter()
                receipt = subject_erase(email=person.email, source=prefix, crm_delete=True)
                times.append(time.perf_counter() - t0)
            queries.append(len(captured.captured_queries))
            deleted = receipt.counts["deleted"]
            rows.append(sum(deleted.values()))
            assert deleted["martech.Event"] == EVENTS + 2 and deleted["nurture.Message"] == MESSAGES, deleted
            assert not Lead.objects.filter(email=person.email).exists()
    finally:
        cleanup(prefix)
    emit("erase_10k_events_500_messages_seconds_p50", round(statistics.median(times), 3), "s")
    emit("erase_10k_events_500_messages_seconds_max", round(max(times), 3), "s")
    emit("erase_rows_deleted", rows[0], "rows")
    emit("erase_queries", queries[0], "queries")
    emit("erase_rounds", rounds, "rounds")
    out = ROOT / "bench" / "results" / "privacy.json"
    meta = {"database": connection.vendor, "quick": args.quick, "at": timezone.now().isoformat(),
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "goal": "p50 < 2 s"}
    out.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
