"""No lost or doubled SQL handoffs under load, on PostgreSQL: 60 forms from
4 threads at once, 3 per person submitted together (a contact form and two
demo requests), each form's capture task run inline in its thread (so the
tasks of one lead run at the same time, as in a cluster's workers). The
contact form's task runs the score rule (to MQL) on the lead as it read it
while a demo's task moves the lead to SQL: decided under the lead's lock, it
never moves it back. Every lead ends SQL with exactly one handoff. The
same for event batches sharing leads, whose capture task handles every lead
of its batch."""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from django.core.cache import cache
from django.db import connections
from rest_framework.test import APIClient

from martech.models import EventType, Lead, LifecycleStage, StageTransition
from martech.scoring import services as scoring
from martech.scoring.models import FitRule, Handoff, LifecycleRule, ScoringModel
from tests.factories import FormFactory, form_field

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data", "scoring_inline"),  # tests/conftest.py
]

THREADS, FORMS, PER_LEAD = 4, 60, 3


@pytest.fixture(autouse=True)
def _setup(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "handoffs"}}
    cache.clear()
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "form_capture": "10000/min"},
    }


def test_every_sql_lead_gets_exactly_one_handoff():
    model = ScoringModel.objects.create(name="Test", is_active=True, half_life_days=None)
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=80)
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    # A score rule to MQL (read on each task's snapshot) and the demo event to SQL.
    LifecycleRule.objects.create(name="MQL", order=1, condition="score >= 50", to_stage=stages["mql"])
    demo = EventType.objects.get(name="demo_requested")
    LifecycleRule.objects.create(name="Demo", order=0, event_type=demo, to_stage=stages["sql"])
    for key, event_type in (("demo", demo), ("contact", None)):
        FormFactory(key=key, event_type=event_type, fields=[form_field("email", "email", required=True),
                                                            form_field("title", "job_title")])
    emails = [f"p{i // PER_LEAD}@example.com" for i in range(FORMS)]
    keys = ["contact" if i % PER_LEAD == 0 else "demo" for i in range(FORMS)]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    statuses: list[int] = []

    def worker(n: int) -> None:
        try:
            client = APIClient()
            barrier.wait(timeout=30)
            for i in range(n, FORMS, THREADS):
                r = client.post(f"/api/v1/capture/{keys[i]}", {"email": emails[i], "title": "VP Sales"}, format="json",
                                HTTP_USER_AGENT="test")
                statuses.append(r.status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(statuses) == FORMS and all(s < 300 for s in statuses), Counter(statuses)

    leads = Lead.objects.filter(email__in=set(emails)).select_related("lifecycle_stage")
    assert len(leads) == FORMS // PER_LEAD
    assert Counter(lead.lifecycle_stage.key for lead in leads) == {"sql": FORMS // PER_LEAD}
    per_lead = Counter(Handoff.objects.values_list("lead_id", flat=True))
    assert per_lead == {lead.pk: 1 for lead in leads}
    # Forward only: no lead went back from SQL (which would make a second SQL move).
    assert Counter(StageTransition.objects.filter(to_stage__key="sql").values_list("lead_id", flat=True)) == per_lead
    assert scoring.handoffs_sweep(grace=dt.timedelta(0)) == 0


BATCHES, PEOPLE = 40, 20


def test_every_sql_lead_of_concurrent_event_batches_gets_exactly_one_handoff():
    """The same for event batches (POST /api/v1/events), whose capture task
    handles every lead of its batch: 40 batches from 4 threads, each naming
    3 people (a VP identify and a demo request each), so batches running at
    once share leads. Every lead ends SQL with exactly one handoff."""
    from tests.martech.test_capture_events import make_client

    model = ScoringModel.objects.create(name="Test", is_active=True, half_life_days=None)
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=80)
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    LifecycleRule.objects.create(name="MQL", order=1, condition="score >= 50", to_stage=stages["mql"])
    LifecycleRule.objects.create(name="Demo", order=0, event_type=EventType.objects.get(name="demo_requested"),
                                 to_stage=stages["sql"])
    make_client(["capture"])  # its token below
    token = "tok-site-0123456789abcdef"

    def batch(i: int) -> list[dict]:
        items = []
        for person in (i % PEOPLE, (i + 7) % PEOPLE, (i + 13) % PEOPLE):
            email = f"e{person}@example.com"
            items.append({"type": "identify", "messageId": f"b{i}-i{person}", "traits": {"email": email,
                                                                                       "title": "VP Sales"}})
            items.append({"type": "track", "event": "demo_requested", "messageId": f"b{i}-t{person}",
                          "properties": {"email": email}})
        return items

    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    statuses: list[int] = []

    def worker(n: int) -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait(timeout=30)
            for i in range(n, BATCHES, THREADS):
                r = client.post("/api/v1/events", {"batch": batch(i)}, format="json")
                statuses.append(r.status_code)
                assert r.json()["accepted"] == 6, r.json()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(statuses) == BATCHES and all(s == 200 for s in statuses), Counter(statuses)

    leads = Lead.objects.filter(email__startswith="e", email__endswith="@example.com").select_related(
        "lifecycle_stage")
    assert len(leads) == PEOPLE
    assert Counter(lead.lifecycle_stage.key for lead in leads) == {"sql": PEOPLE}
    assert {lead.total_score for lead in leads} == {80}
    per_lead = Counter(Handoff.objects.values_list("lead_id", flat=True))
    assert per_lead == {lead.pk: 1 for lead in leads}
    assert Counter(StageTransition.objects.filter(to_stage__key="sql").values_list("lead_id", flat=True)) == per_lead
    assert scoring.handoffs_sweep(grace=dt.timedelta(0)) == 0
