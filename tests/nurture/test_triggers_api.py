"""Triggers (event, form, stage, CRM field change, manual via API) and the API."""
from __future__ import annotations

import pytest
from django.test import TestCase
from django.utils import timezone

from martech.models import EventType
from martech.services.ingest import events_ingest
from martech.services.leads import lead_change_stage, lead_upsert
from nurture.models import Enrollment, Workflow
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields
from tests.factories import FormFactory
from tests.nurture.conftest import email_flow

# An event batch's journeys start in its capture task, run inline with scoring's tasks.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scoring_inline")]  # tests/conftest.py
END = {"start": "end", "steps": {"end": {"type": "end"}}}


def _ingest(email, event, mid, properties=None):
    EventType.objects.get_or_create(name=event)
    with TestCase.captureOnCommitCallbacks(execute=True):
        events_ingest(items=[{"type": "track", "event": event, "messageId": mid, "timestamp": timezone.now().isoformat(),
                              "traits": {"email": email}, "properties": properties or {}}], source="test")


def test_event_trigger_enrolls_once_per_active_enrollment(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1), trigger="event", trigger_config={"event": "cart_abandoned"})
    lead = consenting_lead()
    _ingest(lead.email, "cart_abandoned", "m1")
    _ingest(lead.email, "cart_abandoned", "m2")  # already enrolled
    _ingest(lead.email, "page_viewed_x", "m3")  # another event
    assert Enrollment.objects.filter(workflow=wf, lead=lead).count() == 1


def test_form_submission_trigger(make_workflow, consenting_lead):
    FormFactory(key="ebook")  # publishing refuses a form trigger on a form that does not exist
    wf = make_workflow(END, trigger="form", trigger_config={"form": "ebook"})
    lead = consenting_lead()
    _ingest(lead.email, "form_submitted", "f1", {"form": "ebook"})
    _ingest(lead.email, "form_submitted", "f2", {"form": "other"})
    assert Enrollment.objects.filter(workflow=wf).count() == 1


def test_stage_change_trigger(make_workflow, consenting_lead):
    wf = make_workflow(END, trigger="stage", trigger_config={"stage": "mql"})
    other = make_workflow(END, trigger="stage", trigger_config={"stage": "sql"})
    lead = consenting_lead()
    with TestCase.captureOnCommitCallbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="mql", reason="t")
    assert Enrollment.objects.filter(workflow=wf, lead=lead).exists()
    assert not Enrollment.objects.filter(workflow=other).exists()


def test_crm_field_change_trigger_only_for_crm_sources(make_workflow, consenting_lead):
    wf = make_workflow(END, trigger="crm_field", trigger_config={"fields": ["job_title"]})
    lead = consenting_lead()
    with TestCase.captureOnCommitCallbacks(execute=True):
        lead_upsert(data={"email": lead.email, "job_title": "VP"}, source="api:x")
    assert not Enrollment.objects.exists()
    with TestCase.captureOnCommitCallbacks(execute=True):
        lead_upsert(data={"email": lead.email, "company_name": "Other"}, source="crm:salesforce")
    assert not Enrollment.objects.exists()  # a field the trigger does not watch
    with TestCase.captureOnCommitCallbacks(execute=True):
        lead_upsert(data={"email": lead.email, "job_title": "CEO"}, source="crm:salesforce")
    assert Enrollment.objects.get(workflow=wf).source == "crm:salesforce"


def test_draft_or_paused_workflows_do_not_trigger(make_workflow, consenting_lead):
    make_workflow(END, publish=False, trigger="event", trigger_config={"event": "cart_abandoned"})
    lead = consenting_lead()
    _ingest(lead.email, "cart_abandoned", "d1")
    assert not Enrollment.objects.exists()


def test_workflow_save_validates_graph_conditions_and_trigger(db):
    from django.core.exceptions import ValidationError

    from nurture.services import workflow_save

    wf = Workflow(name="bad", definition={"start": "a", "steps": {"a": {"type": "wait", "days": 1, "next": "zz"}}},
                  trigger="event", trigger_config={}, reenroll="after_days")
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    errors = exc.value.message_dict
    assert any("a.next" in e for e in errors["definition"])
    assert errors["trigger_config"] == ['A event trigger needs "event".']
    assert "reenroll_days" in errors


def test_api_manual_enroll_and_metrics(token_api, make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    lead = consenting_lead()
    api = token_api("nurture:read", "nurture:write")
    r = api.post(f"/api/v1/nurture/workflows/{wf.pk}/enroll", {"lead_ids": [lead.pk, 999999]}, format="json")
    assert r.status_code == 200, r.content
    results = r.json()["results"]
    assert results[0]["enrolled"] is True and results[1] == {"lead_id": 999999, "enrolled": False, "enrollment_id": None, "reason": "no_lead"}
    again = api.post(f"/api/v1/nurture/workflows/{wf.pk}/enroll", {"lead_ids": [lead.pk]}, format="json").json()
    assert again["results"][0]["reason"] == "already_enrolled"
    from nurture.engine import enrollments_advance_due

    enrollments_advance_due(now=timezone.now())
    m = api.get(f"/api/v1/nurture/workflows/{wf.pk}/metrics").json()
    assert (m["enrolled"], m["completed"], m["sent"]) == (1, 1, 1)
    assert [(s["step"], s["executed"], s["sent"]) for s in m["steps"]] == [("e1", 1, 1), ("end", 1, 0)]
    listing = api.get("/api/v1/nurture/workflows").json()
    assert listing["results"][0]["version"] == 1


def test_api_scopes_and_bad_input(token_api, make_workflow):
    wf = make_workflow(END)
    reader = token_api("nurture:read")
    assert reader.post(f"/api/v1/nurture/workflows/{wf.pk}/enroll", {"lead_ids": [1]}, format="json").status_code == 403
    writer = token_api("nurture:read", "nurture:write")
    r = writer.post(f"/api/v1/nurture/workflows/{wf.pk}/enroll", {"lead_ids": []}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"lead_ids"}
    assert token_api("leads:read").get("/api/v1/nurture/workflows").status_code == 403
