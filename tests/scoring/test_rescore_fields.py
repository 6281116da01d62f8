"""A lead change queues a rescoring only when a rule reads a changed field:
a fit rule of the active model or a lifecycle rule condition. A CRM id
written back after a push queued a rescoring per push before (most of a
form's tasks); a rule added later is seen at once (the rules' cache)."""
from __future__ import annotations

import pytest

from martech import hooks
from martech.models import LifecycleStage
from martech.scoring import tasks
from martech.scoring.models import FitRule, LifecycleRule
from martech.scoring.services import lead_fields_read
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(tasks, "enqueue", lambda func, *args: calls.append((func, args)))
    return calls


def _change(lead, fields, capture):
    with capture(execute=True):
        hooks.leads_changed(ids=[lead.pk], fields=fields, source="test")


def test_a_field_no_rule_reads_queues_nothing_and_a_read_one_queues_one(
        model, queued, django_capture_on_commit_callbacks):
    FitRule.objects.create(model=model, name="Manager", condition='job_title contains "manager"', points=15)
    lead = LeadFactory()
    queued.clear()
    _change(lead, ["hubspot_id", "salesforce_id"], django_capture_on_commit_callbacks)
    assert queued == []
    _change(lead, ["job_title"], django_capture_on_commit_callbacks)
    assert queued == [("martech.scoring.tasks.rescore_leads", ([lead.pk], "lead changed"))]


def test_a_rule_added_later_is_read_at_once(model, queued, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    assert "phone" not in lead_fields_read()
    FitRule.objects.create(model=model, name="US phone", condition='phone starts_with "+1"', points=5)
    assert "phone" in lead_fields_read()
    queued.clear()
    _change(lead, ["phone"], django_capture_on_commit_callbacks)
    assert [func for func, _ in queued] == ["martech.scoring.tasks.rescore_leads"]


def test_lifecycle_conditions_relations_and_the_stage_count(model):
    LifecycleRule.objects.create(name="German accounts", to_stage=LifecycleStage.objects.get(key="mql"),
                                 condition='account.country = "de" and owner is not empty')
    read = lead_fields_read()
    # A relation is read by its field and its column; the stage always counts.
    assert {"account", "account_id", "owner", "owner_id", "lifecycle_stage", "lifecycle_stage_id"} <= read
    assert "hubspot_id" not in read


def test_a_new_lead_is_always_scored(model, queued, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        hooks.leads_changed(ids=[lead.pk], fields=["hubspot_id"], created=True, source="test")
    assert [func for func, _ in queued] == ["martech.scoring.tasks.rescore_leads"]
