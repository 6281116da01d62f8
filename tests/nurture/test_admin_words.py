"""Nurture pages in words: step types, outcomes and step details by their
labels; enrollments, step executions and messages with real titles."""
from __future__ import annotations

import pytest
from django.urls import reverse

from nurture import labels
from nurture.graph import TARGETS

pytestmark = pytest.mark.django_db


def test_every_step_type_has_a_label():
    assert set(labels.STEP_TYPES) == set(TARGETS)
    assert labels.step_type_label("wait_until") == "Wait until"
    assert labels.step_type_label("brand_new") == "Brand new"


def test_outcomes_and_details_read_as_words():
    assert labels.outcome_label("skipped:no_consent") == "skipped: no consent"
    assert labels.outcome_label("timed_out") == "timed out"
    assert labels.detail_text({"until": "2026-03-02T09:00:00+00:00"}) == "until 2026-03-02 09:00 UTC"
    assert labels.detail_text({"audience": "retargeting"}) == "audience retargeting"


def test_test_run_shows_words(client, marketing_ops, make_workflow, consenting_lead):
    wf = make_workflow({"start": "w", "steps": {
        "w": {"type": "wait", "days": 2, "next": "e"},
        "e": {"type": "send_email", "subject": "Hi {{first_name|there}}", "body": "b", "next": "end"},
        "end": {"type": "end"},
    }}, publish=False)
    lead = consenting_lead(first_name="Ada")
    client.force_login(marketing_ops)
    body = client.post(reverse("admin:nurture_workflow_test", args=[wf.pk]), {"lead": lead.email}).content.decode()
    assert "<td>Wait</td>" in body and "<td>Send email</td>" in body
    assert "until 20" in body and "{&#x27;until&#x27;" not in body and "send_email" not in body


def test_enrollment_title_names_the_lead_and_workflow(client, marketing_ops, make_workflow, consenting_lead):
    from nurture.models import Enrollment
    from nurture.services import enrollment_create

    wf = make_workflow({"start": "w", "steps": {"w": {"type": "wait", "days": 2, "next": "end"}, "end": {"type": "end"}}})
    lead = consenting_lead(first_name="Ada")
    enrollment, _ = enrollment_create(workflow=wf, lead=lead, source="test", check_criteria=False)
    enrollment = Enrollment.objects.get(pk=enrollment.pk)
    assert str(enrollment) == f"{lead} in {wf} (active)"
    client.force_login(marketing_ops)
    html = client.get(reverse("admin:nurture_enrollment_change", args=[enrollment.pk])).content.decode()
    assert "object (" not in html
