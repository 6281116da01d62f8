"""The "entering a segment" trigger and suppression by segment (at
enrollment and at every later step), with martech.scoring's real Segment."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from martech.services.leads import lead_change_stage, lead_upsert
from martech.scoring.services import segment_save
from nurture.engine import enrollments_advance_due
from nurture.gallery import workflow_create_from_gallery
from nurture.models import Enrollment, SegmentMember, Workflow
from nurture.services import (
    enrollment_create,
    segments_sync,
    workflow_enroll_bulk,
    workflow_publish,
    workflow_save,
    workflow_segment_sync,
    workflow_set_status,
)
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db


@pytest.fixture
def canada(db):
    return segment_save(name="Canada", condition='country = "CA"')


def move(lead, country):
    lead_upsert(data={"country": country}, source="test", lead=lead, overwrite=True)


def enrolled_ids(wf, **filters):
    return set(Enrollment.objects.filter(workflow=wf, **filters).values_list("lead_id", flat=True))


def test_entering_the_segment_enrolls_once_and_only_newcomers(make_workflow, consenting_lead, canada):
    wf = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk})
    a, b = consenting_lead(country="CA"), consenting_lead(country="CA")
    outsider = consenting_lead(country="US")
    assert segments_sync() == {wf.pk: 2}
    assert enrolled_ids(wf) == {a.pk, b.pk}
    assert Enrollment.objects.get(lead=a).source == f"segment:{canada.pk}"
    # A second run (or a second scheduler) finds nobody new.
    assert segments_sync() == {wf.pk: 0}
    move(outsider, "CA")
    assert workflow_segment_sync(workflow_id=wf.pk) == 1
    assert enrolled_ids(wf) == {a.pk, b.pk, outsider.pk}
    assert SegmentMember.objects.filter(workflow=wf).count() == 3


def test_leaving_and_coming_back_is_a_new_entry_under_the_reenrollment_policy(make_workflow, consenting_lead, canada):
    never = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk})
    always = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk},
                           reenroll=Workflow.Reenroll.ALWAYS)
    lead = consenting_lead(country="CA")
    assert segments_sync() == {never.pk: 1, always.pk: 1}
    Enrollment.objects.filter(lead=lead).update(status=Enrollment.Status.COMPLETED, due_at=None)  # journeys done
    move(lead, "US")
    assert segments_sync() == {never.pk: 0, always.pk: 0}
    assert not SegmentMember.objects.filter(lead=lead).exists()  # forgotten on leaving
    move(lead, "CA")
    assert segments_sync() == {never.pk: 0, always.pk: 1}
    assert Enrollment.objects.filter(workflow=always, lead=lead).count() == 2
    assert Enrollment.objects.filter(workflow=never, lead=lead).count() == 1
    # Still in the segment: no further entry, no further enrollment.
    Enrollment.objects.filter(lead=lead).update(status=Enrollment.Status.COMPLETED, due_at=None)
    assert segments_sync() == {never.pk: 0, always.pk: 0}


def test_enroll_existing_false_records_the_members_already_there(make_workflow, consenting_lead, canada):
    there = consenting_lead(country="CA")
    wf = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk, "enroll_existing": False})
    assert workflow_segment_sync(workflow_id=wf.pk) == 0
    assert SegmentMember.objects.filter(workflow=wf, lead=there).exists()
    newcomer = consenting_lead(country="US")
    move(newcomer, "CA")
    assert workflow_segment_sync(workflow_id=wf.pk) == 1
    assert enrolled_ids(wf) == {newcomer.pk}


def test_segment_trigger_respects_criteria_consent_and_pause(make_workflow, consenting_lead, canada):
    wf = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk},
                       enrollment_condition='job_title contains "vp"')
    vp = consenting_lead(country="CA", job_title="VP Sales")
    consenting_lead(country="CA", job_title="Intern")
    no_consent = consenting_lead(country="CA", job_title="VP Ops", channels=())
    from martech.services.leads import consent_record

    consent_record(lead=no_consent, channel="email", granted=False, source="t")
    assert segments_sync() == {wf.pk: 1}
    assert enrolled_ids(wf) == {vp.pk}
    workflow_set_status(workflow=wf, action="pause")
    later = consenting_lead(country="CA", job_title="VP Marketing")
    assert segments_sync() == {}  # a paused workflow enrolls nobody
    workflow_set_status(workflow=wf, action="resume")
    assert segments_sync() == {wf.pk: 1}
    assert later.pk in enrolled_ids(wf)


def test_a_new_version_watching_another_segment_starts_over(make_workflow, consenting_lead, canada):
    us = segment_save(name="US", condition='country = "US"')
    wf = make_workflow(email_flow(1), trigger="segment", trigger_config={"segment": canada.pk})
    consenting_lead(country="CA")
    american = consenting_lead(country="US")
    assert segments_sync() == {wf.pk: 1}
    wf.trigger_config = {"segment": us.pk}
    workflow_save(workflow=wf)
    workflow_publish(workflow=wf)
    assert segments_sync() == {wf.pk: 1}
    assert american.pk in enrolled_ids(wf)
    assert set(SegmentMember.objects.filter(workflow=wf).values_list("segment_id", flat=True)) == {us.pk}


def test_unknown_segments_are_refused_naming_the_field(make_workflow):
    wf = Workflow(name="bad", definition=email_flow(1), trigger="segment", trigger_config={"segment": 999999},
                  suppress_segments=[999998])
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    errors = exc.value.message_dict
    assert "no segment with id 999999" in errors["trigger_config"][0]
    assert errors["suppress_segments"] == ["No segment with id 999998."]
    wf = Workflow(name="bad2", definition=email_flow(1), suppress_segments=["x"])
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "suppress_segments" in exc.value.message_dict


def test_suppression_by_segment_at_enrollment_single_and_bulk(make_workflow, consenting_lead, canada):
    wf = make_workflow(email_flow(1), suppress_segments=[canada.pk])
    ca, us = consenting_lead(country="CA"), consenting_lead(country="US")
    assert enrollment_create(workflow=wf, lead=ca, source="t") == (None, "suppressed_segment")
    other = make_workflow(email_flow(1), suppress_segments=[canada.pk])
    ca2 = consenting_lead(country="CA")
    assert workflow_enroll_bulk(workflow=other, lead_ids=[ca.pk, ca2.pk, us.pk], source="t") == 1
    assert enrolled_ids(other) == {us.pk}


def test_entering_a_suppression_segment_after_enrollment_exits_before_the_send(make_workflow, consenting_lead, canada):
    flow = {"start": "w", "steps": {"w": {"type": "wait", "hours": 1, "next": "e1"}, **email_flow(1)["steps"]}}
    wf = make_workflow(flow, suppress_segments=[canada.pk], suppress_stages=["customer"])
    mover, stays, customer = consenting_lead(country="US"), consenting_lead(country="US"), consenting_lead(country="US")
    for lead in (mover, stays, customer):
        assert enrollment_create(workflow=wf, lead=lead, source="t")[1] == ""
    now = timezone.now()
    enrollments_advance_due(now=now)  # the waits
    move(mover, "CA")
    lead_change_stage(lead=customer, to_stage="customer", reason="t")
    enrollments_advance_due(now=now + timedelta(hours=2))
    assert [m.to for m in mail.outbox] == [[stays.email]]
    exited = {e.lead_id: e.exit_reason for e in Enrollment.objects.filter(workflow=wf, status=Enrollment.Status.EXITED)}
    assert exited == {mover.pk: "suppressed_segment", customer.pk: "suppressed_stage"}


def test_gallery_mql_reengagement_watches_the_quiet_mqls_segment(consenting_lead):
    from martech.models import Lead
    from martech.scoring.models import Segment

    wf = workflow_create_from_gallery(key="mql_reengagement")
    seg = Segment.objects.get(name="Quiet MQLs")
    assert wf.trigger == "segment" and wf.trigger_config == {"segment": seg.pk, "enroll_existing": True}
    workflow_publish(workflow=wf)
    quiet = consenting_lead()
    lead_change_stage(lead=quiet, to_stage="mql", reason="t")
    Lead.objects.filter(pk=quiet.pk).update(latest_touch_at=timezone.now() - timedelta(days=40))
    busy = consenting_lead()
    lead_change_stage(lead=busy, to_stage="mql", reason="t")
    Lead.objects.filter(pk=busy.pk).update(latest_touch_at=timezone.now() - timedelta(days=2))
    assert segments_sync() == {wf.pk: 1}
    assert enrolled_ids(wf) == {quiet.pk}
    # A second copy reuses the segment rather than making another.
    assert workflow_create_from_gallery(key="mql_reengagement").trigger_config["segment"] == seg.pk
