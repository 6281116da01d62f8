"""The score-threshold trigger against martech.scoring's real rescoring and
its score_changed signal: events ingested through the core, an active
scoring model's rules, tasks run inline. Crossing upward enrolls once per
crossing; staying above, rising further or falling never does."""
from __future__ import annotations

import pytest
from django.test import TestCase
from django.utils import timezone

from martech.models import EventType, Lead
from martech.scoring.models import EngagementRule, FitRule, ScoringModel
from martech.scoring.services import scores_recompute
from martech.services.ingest import events_ingest
from martech.services.leads import lead_upsert
from nurture.models import Enrollment, Workflow
from nurture.receivers import on_score
from nurture.services import workflow_set_status
from tests.nurture.conftest import email_flow

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scoring_inline")]  # tests/conftest.py
_n = [0]


@pytest.fixture
def scoring(db):
    model = ScoringModel.objects.create(name="Nurture test", is_active=True)
    view = EventType.objects.get(name="page_view")
    rule = EngagementRule.objects.create(model=model, name="Views", event_type=view, points=30)
    return model, rule


def view_page(lead):
    _n[0] += 1
    with TestCase.captureOnCommitCallbacks(execute=True):
        events_ingest(items=[{"type": "track", "event": "page_view", "messageId": f"score-{_n[0]}",
                              "timestamp": timezone.now().isoformat(), "traits": {"email": lead.email},
                              "properties": {"url": f"/p{_n[0]}"}}], source="test")
    lead.refresh_from_db()
    return lead.total_score


def enrollments(wf, lead):
    return Enrollment.objects.filter(workflow=wf, lead=lead).count()


def test_crossing_upward_enrolls_once(make_workflow, consenting_lead, scoring):
    wf = make_workflow(email_flow(1), trigger="score", trigger_config={"threshold": 50})
    lead = consenting_lead()
    assert view_page(lead) == 30 and enrollments(wf, lead) == 0  # below
    assert view_page(lead) == 60 and enrollments(wf, lead) == 1  # crossed 50
    enr = Enrollment.objects.get(workflow=wf, lead=lead)
    assert enr.source == "score:50"
    assert view_page(lead) == 90 and enrollments(wf, lead) == 1  # already above: no new crossing


def test_falling_never_enrolls_and_a_new_crossing_follows_the_policy(make_workflow, consenting_lead, scoring):
    model, rule = scoring
    again = make_workflow(END_FLOW, trigger="score", trigger_config={"threshold": 50}, reenroll=Workflow.Reenroll.ALWAYS)
    once = make_workflow(END_FLOW, trigger="score", trigger_config={"threshold": 50})
    lead = consenting_lead()
    view_page(lead)
    view_page(lead)  # 60: crossed
    assert (enrollments(again, lead), enrollments(once, lead)) == (1, 1)
    Enrollment.objects.filter(lead=lead).update(status=Enrollment.Status.COMPLETED, due_at=None)
    # The rule loses value: the score falls to 20 (crossing downward).
    rule.points = 10
    rule.save()
    with TestCase.captureOnCommitCallbacks(execute=True):
        scores_recompute(lead_ids=[lead.pk], reason="rule changed")
    lead.refresh_from_db()
    assert lead.total_score == 20
    assert (enrollments(again, lead), enrollments(once, lead)) == (1, 1)
    # A fit rule lifts it over 50 again, when the field it reads changes: a second crossing.
    FitRule.objects.create(model=model, name="Director", condition='job_title = "Director"', points=40)
    with TestCase.captureOnCommitCallbacks(execute=True):
        lead_upsert(data={"email": lead.email, "job_title": "Director"}, source="test", overwrite=True)
    lead.refresh_from_db()
    assert lead.total_score == 60
    assert (enrollments(again, lead), enrollments(once, lead)) == (2, 1)  # "never" keeps its one
    # Rescoring with nothing new (a retried task) sends no signal: no third enrollment.
    Enrollment.objects.filter(lead=lead).update(status=Enrollment.Status.COMPLETED, due_at=None)
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert scores_recompute(lead_ids=[lead.pk], reason="retry") == 0
    assert enrollments(again, lead) == 2


def test_reaching_the_threshold_exactly_counts_as_crossing(make_workflow, consenting_lead, scoring):
    model, rule = scoring
    rule.points = 50
    rule.save()
    exact = make_workflow(END_FLOW, trigger="score", trigger_config={"threshold": 50})
    lead = consenting_lead()
    assert view_page(lead) == 50 and enrollments(exact, lead) == 1  # reaching the threshold is crossing it


def test_a_deleted_lead_does_not_break_the_scoring_signal(make_workflow, scoring):
    wf = make_workflow(END_FLOW, trigger="score", trigger_config={"threshold": 10})
    on_score(sender=Lead, lead_id=987654321, old_total=0, new_total=20)
    assert not Enrollment.objects.filter(workflow=wf).exists()


END_FLOW = {"start": "end", "steps": {"end": {"type": "end"}}}


def test_a_paused_workflow_stops_enrolling_at_once(make_workflow, consenting_lead):
    # The receivers cache the active workflows (martech.configcache): pausing
    # and resuming must reach them at once.
    wf = make_workflow(END_FLOW, trigger="score", trigger_config={"threshold": 50})
    first, second, third = consenting_lead(), consenting_lead(), consenting_lead()
    on_score(sender=None, lead_id=first.pk, old_total=10, new_total=60)  # warms the workflows cache
    assert Enrollment.objects.filter(workflow=wf, lead=first).count() == 1
    workflow_set_status(workflow=wf, action="pause")
    on_score(sender=None, lead_id=second.pk, old_total=10, new_total=60)
    assert not Enrollment.objects.filter(workflow=wf, lead=second).exists()
    workflow_set_status(workflow=wf, action="resume")
    on_score(sender=None, lead_id=third.pk, old_total=10, new_total=60)
    assert Enrollment.objects.filter(workflow=wf, lead=third).count() == 1
