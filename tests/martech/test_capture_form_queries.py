"""The queries of a form's request (POST /api/v1/capture/<key>), pinned.

The request stores and answers in one transaction with a savepoint only
where one guards something (the lead's INSERT, whose race a concurrent
submission of the same email can win); a new lead is written once, with its
first stage; what the capture causes runs in its task (martech.services.capture).
"""
from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from martech.models import ConsentRecord, Event, Lead, StageTransition
from martech.services import capture
from tests.factories import FormFactory, LeadFactory, form_field

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "form-q"}}
    cache.clear()


@pytest.fixture
def form(monkeypatch):
    monkeypatch.setattr(capture, "task_enqueue", lambda func, *a, **kw: None)  # the task is not this test's
    return FormFactory(
        key="contact",
        fields=[form_field("email", "email", required=True), form_field("first_name", "first_name"),
                form_field("company", "company_name")],
        consent_field="consent", consent_channel="email", consent_text="I agree to receive marketing email.",
    )


def post(data):
    res = APIClient().post("/api/v1/capture/contact", data, format="json", HTTP_USER_AGENT="test")
    assert res.status_code == 202, res.content
    return res


def request_queries(django_capture_on_commit_callbacks, data) -> list[str]:
    with CaptureQueriesContext(connection) as ctx, django_capture_on_commit_callbacks(execute=True):
        post(data)
    return [q["sql"] for q in ctx.captured_queries]


def kinds(sql: list[str]) -> list[str]:
    """Each query as its verb and table (savepoints by verb)."""
    out = []
    for q in sql:
        verb = q.split()[0].upper()
        table = re.search(r'(?:FROM|INTO|UPDATE)\s+"(\w+)"', q)
        out.append(f"{verb} {table.group(1)}" if table and verb in ("SELECT", "INSERT", "UPDATE") else verb)
    return out


NEW = {"email": "ann@acme.example", "first_name": "Ann", "company": "Acme", "consent": "1",
       "utm_source": "google", "utm_medium": "cpc"}
# In a test the request's transaction is a savepoint of the test's (BEGIN and
# COMMIT outside one). After its commit nurture's consent receiver wakes the
# journeys waiting for a double opt-in click (nurture.receivers.on_consent):
# a consent without the click is one UPDATE, with no lock of the lead.
OPEN, CLOSE = "SAVEPOINT", "RELEASE"
NURTURE_CONSENT = ["UPDATE nurture_enrollment"]


def test_a_new_lead_is_written_once_in_one_transaction_with_one_savepoint(form, django_capture_on_commit_callbacks):
    post({**NEW, "email": "warm@acme.example"})  # the configuration caches' first reads
    sql = request_queries(django_capture_on_commit_callbacks, NEW)
    lock = ["SELECT"] if connection.vendor == "postgresql" else []  # the person's advisory lock
    assert kinds(sql) == [
        # The configuration's tokens, once for the request; the form comes
        # from the process's cache under them (martech.configcache).
        "SELECT martech_configversion",
        # No look-up of a stored twin of the event: without a submission id its id is new.
        OPEN,
        # The first stage comes from the process's stage cache (read in the capture's snapshot).
        "SELECT martech_lead", *lock, "SELECT martech_account",
        # The only savepoint: the INSERT a concurrent submission of this email can win.
        "SAVEPOINT", "INSERT martech_lead", "RELEASE",
        # The first stage (and touch) are in the INSERT: its transition, no lock, no UPDATE, no savepoint.
        "INSERT martech_stagetransition",
        # Consent under the lock lead_upsert holds (no second lock, no savepoint).
        "INSERT martech_consentrecord",
        # The submission's touch went into the lead's INSERT (no UPDATE).
        "INSERT martech_event",
        "INSERT martech_capturepending",
        CLOSE,
        *NURTURE_CONSENT,
    ], kinds(sql)

    lead = Lead.objects.get(email="ann@acme.example")
    (transition,) = StageTransition.objects.filter(lead=lead)
    assert (transition.from_stage_id, transition.to_stage.key, transition.reason, transition.source) == \
        (None, "lead", "created", "form:contact")
    assert lead.lifecycle_stage.key == "lead"
    assert ConsentRecord.objects.get(lead=lead).status == "granted"
    event = Event.objects.get(lead=lead)
    assert (lead.first_utm_source, lead.latest_utm_source, lead.original_source) == ("google", "google", event.channel)
    assert lead.first_touch_at == lead.latest_touch_at == event.occurred_at


def test_a_known_lead_is_read_once_and_keeps_its_first_touch(form, django_capture_on_commit_callbacks):
    post({**NEW, "email": "warm@acme.example"})
    lead = LeadFactory(email="ann@acme.example", first_name="Ann")
    post({**NEW, "utm_source": "newsletter", "utm_medium": "email"})
    first = Lead.objects.get(pk=lead.pk)
    transitions = StageTransition.objects.filter(lead=lead).count()
    sql = request_queries(django_capture_on_commit_callbacks, {**NEW, "first_name": "Annie", "utm_source": "linkedin"})
    assert kinds(sql) == [
        "SELECT martech_configversion",
        OPEN,
        "SELECT martech_lead",  # found by email, locked
        "INSERT martech_consentrecord", "INSERT martech_event", "UPDATE martech_lead", "INSERT martech_capturepending",
        CLOSE,
        *NURTURE_CONSENT,
    ], kinds(sql)
    lead.refresh_from_db()
    # The touch folded into the row read under the look-up's lock: the first
    # touch stays, the latest moves.
    assert (lead.first_utm_source, lead.latest_utm_source) == ("newsletter", "linkedin")
    assert lead.first_touch_at == first.first_touch_at and lead.latest_touch_at > first.latest_touch_at
    assert lead.first_name == "Ann" and Event.objects.filter(lead=lead).count() == 2
    assert StageTransition.objects.filter(lead=lead).count() == transitions


def test_a_submission_id_is_looked_up_once_and_a_repeat_writes_nothing(form, django_capture_on_commit_callbacks):
    post({**NEW, "email": "warm@acme.example"})
    data = {**NEW, "submission_id": "s-1"}
    sql = request_queries(django_capture_on_commit_callbacks, data)
    assert kinds(sql)[:2] == ["SELECT martech_configversion", "SELECT martech_event"], kinds(sql)
    again = request_queries(django_capture_on_commit_callbacks, data)
    assert kinds(again) == ["SELECT martech_configversion", "SELECT martech_event"], kinds(again)
    assert Event.objects.filter(lead__email="ann@acme.example").count() == 1


def test_a_form_changed_or_deactivated_is_seen_by_the_next_post(form):
    post({**NEW, "email": "warm@acme.example"})  # the form cached
    form.fields = [*form.fields, form_field("title", "job_title", required=True)]
    form.save()
    res = APIClient().post("/api/v1/capture/contact", NEW, format="json")
    assert res.status_code == 400 and "title" in res.json()["error"]["fields"], res.content
    form.is_active = False
    form.save()
    assert APIClient().post("/api/v1/capture/contact", NEW, format="json").status_code == 404
