"""Lead edits through the API while drains and pulls run, on PostgreSQL:
each thread its own connection and transactions, the HubSpot emulator
answering with a little latency so pushes are in flight while edits land.
No request may fail, no drain or pull may abort, and once the queue is
drained every lead holds its last edit here and in the CRM."""
from __future__ import annotations

import random
import threading
import time

import pytest
from django.core.cache import cache
from django.db import connections
from rest_framework.test import APIClient

from martech.crm.models import OutboxItem
from martech.crm.services import outbox_drain, pull_changes
from martech.models import ApiClient, Lead
from martech.services.leads import lead_upsert

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]

TOKEN = "tok-crm-stress-0123456789"
EDITORS = 4
LEADS_PER_EDITOR = 5
EDITS_PER_EDITOR = 60


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "crm-stress"}}
    cache.clear()


def _client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    return client


def test_api_edits_during_drains_and_pulls_are_neither_lost_nor_failed(connection, hubspot):
    ApiClient.objects.create(name="stress", token_hash=ApiClient.hash_token(TOKEN), token_prefix=TOKEN[:8],
                             scopes=["leads:read", "leads:write"])
    def create(i: int) -> int:
        return lead_upsert(data={"email": f"s{i}@example.org", "first_name": "start", "last_name": "L"},
                           source="test")[0].pk

    # Half the leads are in the CRM already; the other half get their first
    # push (which stores the CRM id on the lead) while they are being edited.
    total = EDITORS * LEADS_PER_EDITOR
    leads = [create(i) for i in range(0, total, 2)]
    outbox_drain(connection=connection)
    leads += [create(i) for i in range(1, total, 2)]
    leads.sort()
    hubspot.latency = 0.01  # every CRM call takes a while: pushes are in flight while edits land

    last: dict[int, str] = {}
    errors: list[str] = []
    stop = threading.Event()

    def editor(n: int) -> None:
        # Each editor owns its leads, so its last edit of one is that lead's last edit.
        mine = leads[n * LEADS_PER_EDITOR:(n + 1) * LEADS_PER_EDITOR]
        rnd = random.Random(n)
        client = _client()
        try:
            for k in range(EDITS_PER_EDITOR):
                pk = rnd.choice(mine)
                value = f"e{n}-{k}"
                try:
                    res = client.patch(f"/api/v1/leads/{pk}", {"first_name": value}, format="json")
                except Exception as exc:  # noqa: BLE001 - counted below
                    errors.append(f"PATCH {pk}: {exc!r}")
                    continue
                if res.status_code != 200:
                    errors.append(f"PATCH {pk}: {res.status_code} {res.content[:200]!r}")
                else:
                    last[pk] = value
        finally:
            connections.close_all()

    def loop(name: str, fn) -> None:
        try:
            while not stop.is_set():
                try:
                    run = fn()
                except Exception as exc:  # noqa: BLE001 - counted below
                    errors.append(f"{name}: {exc!r}")
                    continue
                if run.error or run.failed:
                    errors.append(f"{name}: {run.error or run.failed}")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=editor, args=(n,)) for n in range(EDITORS)]
    # Two drains, as two qcluster workers run them, and a pull.
    background = [threading.Thread(target=loop, args=("drain", lambda: outbox_drain(connection=connection))),
                  threading.Thread(target=loop, args=("drain", lambda: outbox_drain(connection=connection))),
                  threading.Thread(target=loop, args=("pull", lambda: pull_changes(connection=connection)))]
    started = time.monotonic()
    for t in [*workers, *background]:
        t.start()
    for t in workers:
        t.join(timeout=300)
    stop.set()
    for t in background:
        t.join(timeout=120)
    elapsed = time.monotonic() - started
    hubspot.latency = 0.0

    # Settle: what is still queued goes out, and a pull after it brings nothing back over an edit.
    for _ in range(3):
        outbox_drain(connection=connection)
        pull_changes(connection=connection)
    outbox_drain(connection=connection)

    local = dict(Lead.objects.filter(pk__in=last).values_list("pk", "first_name"))
    emails = dict(Lead.objects.filter(pk__in=last).values_list("pk", "email"))
    remote = {pk: hubspot.contacts[hubspot.by_email[emails[pk]]]["properties"]["firstname"] for pk in last}
    lost_here = sorted(pk for pk, value in last.items() if local[pk] != value)
    lost_there = sorted(pk for pk, value in last.items() if remote[pk] != value)
    figures = {"edits": EDITORS * EDITS_PER_EDITOR, "errors": len(errors), "lost_here": len(lost_here),
               "lost_in_crm": len(lost_there), "pending_left": OutboxItem.objects.filter(status="pending").count(),
               "seconds": round(elapsed, 1)}
    print("stress figures:", figures)
    assert (figures["errors"], figures["lost_here"], figures["lost_in_crm"]) == (0, 0, 0), (figures, errors[:5])
