"""The seeded demo shows speed to lead: a visitor who posts the demo's
"Request a demo" form becomes an SQL through the "Demo requested" rule (the
form emits the event it listens to), is handed off to a routed rep with a
follow-up task, and is enrolled in the demo's form-triggered journey, whose
transactional confirmation goes out without marketing consent."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import Event, Form, Lead, StageTransition
from martech.scoring.demo import demo_seed as scoring_demo_seed
from martech.scoring.models import Handoff
from martech.services.demo import demo_seed as core_demo_seed
from nurture.demo import DEMO_REQUEST_JOURNEY
from nurture.demo import demo_seed as nurture_demo_seed
from nurture.engine import enrollments_advance_due
from nurture.models import Enrollment, Message, Workflow
from routing.demo import demo_seed as routing_demo_seed
from routing.models import Assignment

pytestmark = pytest.mark.django_db

# A Tuesday 15:00 UTC: the demo's reps in New York and Berlin are at work.
AT_WORK = datetime(2026, 3, 3, 15, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def demo(settings, scoring_inline):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "demo-form"}}
    cache.clear()
    core_demo_seed(leads=0)
    scoring_demo_seed()
    routing_demo_seed(now=AT_WORK)
    made = nurture_demo_seed()
    mail.outbox = []
    return made


def _request_a_demo(client, **extra) -> Lead:
    data = {"email": "ines.ortega@globex.example", "first_name": "Ines", "last_name": "Ortega",
            "company": "Globex", "country": "US", **extra}
    res = client.post("/api/v1/capture/demo-request", data, format="json", HTTP_USER_AGENT="Mozilla/5.0 test")
    assert res.status_code == 202, res.json()
    return Lead.objects.get(email="ines.ortega@globex.example")


def test_the_demo_form_emits_the_event_the_sql_rule_listens_to(demo):
    form = Form.objects.get(key="demo-request")
    assert form.event_type.name == "demo_requested"
    journey = Workflow.objects.get(name=DEMO_REQUEST_JOURNEY["name"])
    assert (journey.status, journey.trigger, journey.trigger_config) == (
        Workflow.Status.ACTIVE, "form", {"form": "demo-request"})
    assert journey.current_version_id is not None


def test_a_demo_request_is_handed_off_and_confirmed_without_marketing_consent(
        demo, django_capture_on_commit_callbacks):
    client = APIClient()
    with django_capture_on_commit_callbacks(execute=True):
        lead = _request_a_demo(client)  # the consent box left unticked
    event = Event.objects.get(lead=lead)
    assert (event.event_type.name, event.properties["form"]) == ("demo_requested", "demo-request")

    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "sql"
    sql = StageTransition.objects.get(lead=lead, to_stage__key="sql")
    assert sql.reason == "rule: Demo requested"
    handoff = Handoff.objects.get(lead=lead)
    assert handoff.transition == sql and handoff.task is not None
    assignment = Assignment.objects.get(lead=lead, is_current=True)
    assert assignment.status == Assignment.Status.ASSIGNED and assignment.rep is not None
    assert assignment.sla_policy is not None  # the first-touch clock runs

    enrollment = Enrollment.objects.get(lead=lead)
    assert enrollment.workflow.name == DEMO_REQUEST_JOURNEY["name"]
    with django_capture_on_commit_callbacks(execute=True):
        enrollments_advance_due(now=timezone.now())
    confirmation = Message.objects.get(lead=lead, step="e1")
    assert (confirmation.status, confirmation.is_marketing) == ("sent", False)
    assert [m.to for m in mail.outbox] == [[lead.email]]
    assert mail.outbox[0].subject == "Your demo request, Ines"


def test_a_second_demo_seed_keeps_the_journey_and_the_form(demo):
    assert demo["nurture workflows"] == 7
    assert nurture_demo_seed()["nurture workflows"] == 0
    assert Workflow.objects.filter(name=DEMO_REQUEST_JOURNEY["name"]).count() == 1
