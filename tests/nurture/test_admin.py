"""The nurture admin: gallery, publish, test run, manual enrollment, metrics."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from nurture.gallery import GALLERY
from nurture.models import Enrollment, Message, Workflow
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db


def test_gallery_creates_each_journey_as_a_draft(client, marketing_ops):
    client.force_login(marketing_ops)
    assert client.get(reverse("admin:nurture_workflow_gallery")).status_code == 200
    for key in GALLERY:
        r = client.post(reverse("admin:nurture_workflow_gallery"), {"key": key})
        assert r.status_code == 302
    assert Workflow.objects.count() == 6
    assert set(Workflow.objects.values_list("status", flat=True)) == {"draft"}
    client.post(reverse("admin:nurture_workflow_gallery"), {"key": "ebook_drip"})
    assert Workflow.objects.filter(name="Ebook drip (2)").exists()


def test_analyst_cannot_create_from_gallery(client, analyst):
    client.force_login(analyst)
    client.post(reverse("admin:nurture_workflow_gallery"), {"key": "ebook_drip"})
    assert not Workflow.objects.exists()


BASE = {"trigger": "manual", "reenroll": "never", "suppress_unsubscribed": "on", "in_doubt_policy": "hold",
        "in_doubt_minutes": "60"}


def test_admin_add_makes_a_draft_journey_of_one_end_step_whatever_status_is_posted(client, marketing_ops):
    client.force_login(marketing_ops)
    r = client.post(reverse("admin:nurture_workflow_add"), {**BASE, "name": "x", "status": "active",
                                                            "definition": json.dumps(email_flow(1))})
    assert r.status_code == 302
    wf = Workflow.objects.get()
    # Neither the status nor the steps are form fields: publish makes it
    # active, the journey builder adds the steps.
    assert wf.status == "draft" and wf.current_version is None and wf.has_draft_changes
    assert wf.definition == {"start": "end", "steps": {"end": {"type": "end"}}}


def test_admin_picks_suppression_segments_by_name_and_a_segment_trigger(client, marketing_ops):
    from martech.scoring.services import segment_save

    seg = segment_save(name="Customers", condition='lifecycle_stage = "customer"')
    client.force_login(marketing_ops)
    data = {**BASE, "name": "seg", "trigger": "segment", "trigger_segment": "999999",
            "suppress_segments": [str(seg.pk)]}
    r = client.post(reverse("admin:nurture_workflow_add"), data)
    assert r.status_code == 200 and "Select a valid choice" in r.content.decode()
    r = client.post(reverse("admin:nurture_workflow_add"), {**data, "trigger_segment": ""})
    assert r.status_code == 200 and "Required for a “Entering a segment” trigger." in r.content.decode()
    r = client.post(reverse("admin:nurture_workflow_add"), {**data, "trigger_segment": str(seg.pk)})
    assert r.status_code == 302
    wf = Workflow.objects.get()
    assert wf.suppress_segments == [seg.pk] and wf.trigger_config == {"segment": seg.pk, "enroll_existing": False}
    assert "Customers" in client.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()


def test_publish_action_test_run_enroll_and_metrics_page(client, marketing_ops, make_workflow, consenting_lead):
    wf = make_workflow(email_flow(2), publish=False)
    client.force_login(marketing_ops)
    client.post(reverse("admin:nurture_workflow_changelist"), {"action": "publish", "_selected_action": [wf.pk]})
    wf.refresh_from_db()
    assert wf.status == "active" and wf.current_version.number == 1

    lead = consenting_lead(first_name="Grace")
    r = client.post(reverse("admin:nurture_workflow_test", args=[wf.pk]), {"lead": lead.email})
    body = r.content.decode()
    assert "Hello Grace #1" in body and "Hello Grace #2" in body
    assert not Message.objects.exists() and not Enrollment.objects.exists()  # nothing touched

    r = client.post(reverse("admin:nurture_workflow_enroll", args=[wf.pk]), {"leads": f"{lead.email}\nnobody@x.org"})
    assert r.status_code == 302 and Enrollment.objects.filter(lead=lead).count() == 1
    page = client.get(reverse("admin:nurture_workflow_change", args=[wf.pk]))
    assert page.status_code == 200 and "nurture-metrics" in page.content.decode()


def test_test_run_reports_an_unknown_lead(client, marketing_ops, make_workflow):
    wf = make_workflow(email_flow(1))
    client.force_login(marketing_ops)
    r = client.post(reverse("admin:nurture_workflow_test", args=[wf.pk]), {"lead": "ghost@example.org"})
    assert "no lead with email or id" in r.content.decode()


@pytest.mark.parametrize("model", ["enrollment", "message", "suppression", "audiencemember", "workflowversion"])
def test_other_pages_render(client, marketing_ops, model):
    client.force_login(marketing_ops)
    assert client.get(reverse(f"admin:nurture_{model}_changelist")).status_code == 200
