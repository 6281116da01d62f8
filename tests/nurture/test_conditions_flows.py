"""Conditions in nurture: branches (the cart-abandonment journey of the
seeds), content blocks, event property conditions, criteria and goals."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import TestCase
from django.utils import timezone

from martech.models import EventType
from martech.services.ingest import events_ingest
from martech.services.leads import lead_change_stage
from nurture.channels import LocmemSmsBackend
from nurture.engine import enrollments_advance_due
from nurture.gallery import GALLERY, workflow_create_from_gallery
from nurture.models import AudienceMember, Enrollment, StepExecution
from nurture.services import enrollment_create, workflow_enroll_bulk, workflow_publish, workflow_save, workflow_test_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def cart_flow(db):
    wf = workflow_create_from_gallery(key="cart_abandonment")
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    return wf


@pytest.mark.parametrize("props,first_email,path", [
    ({"cart_value": 250, "orders_count": 3}, "Your cart is waiting, Ann", ["w0", "value", "repeat", "e_vip", "sms", "aud", "w1"]),
    ({"cart_value": 250, "orders_count": 0}, "You left something behind", ["w0", "value", "repeat", "e_high", "sms", "aud", "w1"]),
    ({"cart_value": 40}, "Still thinking it over?", ["w0", "value", "e_low", "aud", "w1"]),
])
def test_cart_abandonment_branches(cart_flow, consenting_lead, props, first_email, path):
    lead = consenting_lead(channels=("email", "sms", "ads"), first_name="Ann", phone="+12025550143",
                           time_zone="UTC", properties=props)
    now = timezone.now().replace(hour=12)
    enrollment_create(workflow=cart_flow, lead=lead, source="t", now=now)
    enrollments_advance_due(now=now)
    enrollments_advance_due(now=now + timedelta(hours=1, minutes=1))
    assert [m.subject for m in mail.outbox] == [first_email]
    assert len(LocmemSmsBackend.outbox) == (1 if "sms" in path else 0)
    assert AudienceMember.objects.filter(audience="cart-retargeting", lead=lead).exists()
    done = list(StepExecution.objects.order_by("executed_at", "pk").values_list("step", flat=True))
    assert done == path
    enrollments_advance_due(now=now + timedelta(days=5))
    assert not AudienceMember.objects.exists()  # removed after three days
    assert Enrollment.objects.get().status == "completed"


def test_cart_goal_event_converts(cart_flow, consenting_lead, scoring_inline):
    lead = consenting_lead(properties={"cart_value": 10})
    enrollment_create(workflow=cart_flow, lead=lead, source="t")
    EventType.objects.get_or_create(name="order_completed")
    with TestCase.captureOnCommitCallbacks(execute=True):
        events_ingest(items=[{"type": "track", "event": "order_completed", "messageId": "o1",
                              "timestamp": timezone.now().isoformat(), "traits": {"email": lead.email}}], source="t")
    assert Enrollment.objects.get().status == "converted"


def test_content_blocks_chosen_by_condition(make_workflow, consenting_lead):
    wf = make_workflow({"start": "e", "steps": {
        "e": {"type": "send_email", "subject": "News", "body": "Hi.\n{{blocks}}", "next": "end",
              "blocks": [{"condition": 'country = "US"', "text": "US offer"},
                         {"condition": 'country = "FR"', "text": "Offre FR"}]},
        "end": {"type": "end"}}})
    enrollment_create(workflow=wf, lead=consenting_lead(country="FR"), source="t")
    enrollments_advance_due(now=timezone.now())
    assert "Offre FR" in mail.outbox[0].body and "US offer" not in mail.outbox[0].body


def test_enrollment_criteria_and_goal_condition(make_workflow, consenting_lead):
    flow = {"start": "w", "steps": {"w": {"type": "wait", "days": 1, "next": "e"},
                                   "e": {"type": "send_email", "subject": "s", "body": "b", "next": "end"},
                                   "end": {"type": "end"}}}
    wf = make_workflow(flow, enrollment_condition='country = "US"', goal_condition='lifecycle_stage = "sql"')
    assert enrollment_create(workflow=wf, lead=consenting_lead(country="DE"), source="t") == (None, "criteria")
    lead = consenting_lead(country="US")
    now = timezone.now()
    enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    enrollments_advance_due(now=now)
    lead_change_stage(lead=lead, to_stage="sql", reason="t")
    enrollments_advance_due(now=now + timedelta(days=2))
    enr = Enrollment.objects.get()
    assert enr.status == "converted" and mail.outbox == []


def test_event_trigger_with_property_condition(make_workflow, consenting_lead, scoring_inline):
    wf = make_workflow({"start": "end", "steps": {"end": {"type": "end"}}}, trigger="event",
                       trigger_config={"event": "cart_abandoned", "condition": "properties.cart_value >= 100"})
    EventType.objects.get_or_create(name="cart_abandoned")
    small, big = consenting_lead(), consenting_lead()
    for lead, value in ((small, 20), (big, 300)):
        with TestCase.captureOnCommitCallbacks(execute=True):
            events_ingest(items=[{"type": "track", "event": "cart_abandoned", "messageId": f"c{lead.pk}",
                                  "timestamp": timezone.now().isoformat(), "traits": {"email": lead.email},
                                  "properties": {"cart_value": value}}], source="t")
    assert list(Enrollment.objects.filter(workflow=wf).values_list("lead_id", flat=True)) == [big.pk]


def test_a_bad_condition_is_refused_with_its_column(db):
    wf = workflow_create_from_gallery(key="ebook_drip")
    wf.enrollment_condition = "score >>= 3"
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "column" in exc.value.message_dict["enrollment_condition"][0]


def test_bulk_enroll_applies_criteria_in_sql(make_workflow, consenting_lead):
    wf = make_workflow({"start": "end", "steps": {"end": {"type": "end"}}}, enrollment_condition='country = "US"')
    leads = [consenting_lead(country=c) for c in ("US", "US", "DE")]
    assert workflow_enroll_bulk(workflow=wf, lead_ids=[l.pk for l in leads], source="seg") == 2


@pytest.mark.parametrize("key", list(GALLERY))
def test_every_gallery_journey_validates_publishes_and_test_runs(key, consenting_lead):
    wf = workflow_create_from_gallery(key=key)
    workflow_save(workflow=wf)
    workflow_publish(workflow=wf)
    rows = workflow_test_run(workflow=wf, lead=consenting_lead(properties={"cart_value": 120}))
    assert rows[-1]["type"] == "end"
    assert not Enrollment.objects.exists() and mail.outbox == []
