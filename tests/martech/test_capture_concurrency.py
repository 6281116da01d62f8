"""Concurrent capture on PostgreSQL: 20 requests at once, each in its own
thread, connection and transaction. The unique indexes decide; the services
must turn every lost race into the winner's row, never a duplicate or a 500."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
from django.core.cache import cache
from django.db import connections
from rest_framework.test import APIClient

from martech.models import ApiClient, Event, Identity, Lead
from tests.factories import FormFactory, form_field

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]

N = 20
TOKEN = "tok-concurrency-0123456789"


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "h1-conc"}}
    cache.clear()
    # 20 posts from one test address must not hit the per-IP limit.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "form_capture": "1000/min"},
    }


def run_at_once(request: Callable[[int], object]) -> list:
    """Call request(i) for i in range(N) in N threads released together."""
    barrier = threading.Barrier(N)
    results: list = [None] * N
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = request(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def api_client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    return client


@pytest.fixture
def capture_client():
    ApiClient.objects.create(name="conc", token_hash=ApiClient.hash_token(TOKEN), token_prefix=TOKEN[:8], scopes=["capture"])


def test_concurrent_identifies_of_one_new_email_make_one_lead(capture_client):
    def call(i: int):
        item = {
            "type": "identify",
            "messageId": f"id-{i}",
            "anonymousId": f"anon-{i}",
            "traits": {"email": "Race@Example.com"},
            "timestamp": "2025-03-01T12:00:00Z",
        }
        res = api_client().post("/api/v1/events", {"batch": [item]}, format="json")
        return res.status_code, res.json()

    results = run_at_once(call)
    assert all(code == 200 for code, _ in results), results
    assert [body["accepted"] for _, body in results] == [1] * N
    lead = Lead.objects.get()
    assert lead.email == "race@example.com"
    assert Event.objects.filter(lead=lead).count() == N
    assert Identity.objects.filter(lead=lead, kind="anonymous").count() == N
    assert lead.stage_transitions.count() == 1


def test_concurrent_sends_of_one_message_id_store_one_event(capture_client):
    item = {"type": "track", "messageId": "same-id", "event": "demo_requested", "anonymousId": "a", "timestamp": "2025-03-01T12:00:00Z"}

    def call(i: int):
        res = api_client().post("/api/v1/events", {"batch": [item]}, format="json")
        assert res.status_code == 200, res.content
        return res.json()["results"][0]["status"]

    statuses = Counter(run_at_once(call))
    assert statuses == {"accepted": 1, "duplicate": N - 1}
    assert Event.objects.filter(client_event_id="same-id").count() == 1


def test_concurrent_batches_with_overlapping_new_emails(capture_client):
    # Each batch creates the same five leads, listed in a different order:
    # the lead writes are ordered by email, so no batch deadlocks or fails.
    emails = [f"p{k}@example.com" for k in range(5)]

    def call(i: int):
        order = emails[i % 5 :] + emails[: i % 5]
        items = [
            {"type": "identify", "messageId": f"b{i}-{e}", "anonymousId": f"anon-{i}-{e}", "traits": {"email": e},
             "timestamp": "2025-03-01T12:00:00Z"}
            for e in order
        ]
        res = api_client().post("/api/v1/events", {"batch": items}, format="json")
        return res.status_code, res.json().get("accepted")

    results = run_at_once(call)
    assert results == [(200, 5)] * N
    assert sorted(Lead.objects.values_list("email", flat=True)) == emails
    assert Event.objects.count() == 5 * N


def test_concurrent_form_posts_of_one_new_email_make_one_lead():
    form = FormFactory(key="race", fields=[form_field("email", "email", required=True), form_field("name", "first_name")])

    def call(i: int):
        res = APIClient().post(f"/api/v1/capture/{form.key}", {"email": "Form@Example.com", "name": f"n{i}", "consent": "on"}, format="json")
        return res.status_code, res.json()

    results = run_at_once(call)
    assert results == [(202, {"status": "received"})] * N, results
    lead = Lead.objects.get()
    assert lead.first_name.startswith("n")  # one submission's name; the rest only fill empty fields
    assert Event.objects.filter(lead=lead, kind="form").count() == N
    assert lead.consent_records.count() == N


def test_concurrent_form_posts_with_one_submission_id_store_one_event():
    form = FormFactory(key="race2", fields=[form_field("email", "email", required=True)])

    def call(i: int):
        res = APIClient().post(f"/api/v1/capture/{form.key}", {"email": "dup@example.com", "submission_id": "s-1"}, format="json")
        return res.status_code, res.json()

    results = run_at_once(call)
    assert results == [(202, {"status": "received"})] * N, results
    assert Lead.objects.count() == 1 and Event.objects.count() == 1
