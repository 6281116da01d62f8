"""One task per form (martech.services.capture): the request stores and
answers; scoring, routing (after the first score), lifecycle with the SQL
handoff and journey enrollment run in ``capture_process``. Lifecycle moves
forward only, decided under the lead's lock; the handoff sweep; debounced
wake-ups on commit."""
from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from martech import taskqueue
from martech.models import EventType, Lead, LifecycleStage, StageTransition
from martech.scoring import services as scoring
from martech.scoring.models import FitRule, Handoff, LifecycleRule, ScoringModel
from martech.services.leads import lead_change_stage
from routing.models import Assignment
from tests.factories import FormFactory, LeadFactory, form_field
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "capture-task"}}
    cache.clear()
    from routing import services

    services._clear_cache()


@pytest.fixture
def queued(monkeypatch):
    """The functions enqueued with django-q2 (nothing runs)."""
    names: list[str] = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: names.append(func))
    monkeypatch.setattr("attribution.receivers.async_task", lambda func, *a, **kw: names.append(func))
    return names


def stage(key):
    return LifecycleStage.objects.get(key=key)


@pytest.fixture
def demo_form():
    demo = EventType.objects.get(name="demo_requested")
    return FormFactory(key="demo", event_type=demo, fields=[
        form_field("email", "email", required=True), form_field("title", "job_title")])


@pytest.fixture
def scored_routing():
    """A fit rule (VPs score 80), a routing rule reading the score, an event
    rule: a demo request makes an SQL."""
    model = ScoringModel.objects.create(name="Test", is_active=True, half_life_days=None)
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=80)
    cold, hot = TeamFactory(name="Cold"), TeamFactory(name="Hot")
    RepFactory(team=cold, name="cold-rep")
    hot_rep = RepFactory(team=hot, name="hot-rep")
    draft = RuleSetFactory(fallback_team=cold)
    RuleFactory(rule_set=draft, name="Hot", condition="score >= 50", action="team", team=hot)
    from routing import services

    services.rule_set_publish(rule_set=draft)
    LifecycleRule.objects.create(name="Demo", event_type=EventType.objects.get(name="demo_requested"),
                                 to_stage=stage("sql"))
    return hot_rep


def post(data, key="demo"):
    return APIClient().post(f"/api/v1/capture/{key}", data, format="json", HTTP_USER_AGENT="test")


def test_a_form_queues_one_task_and_its_request_routes_nothing(demo_form, scored_routing, queued,
                                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post({"email": "vp@example.com", "title": "VP Sales"})
    assert response.status_code in (200, 201, 202), response.content
    # One task for everything the form causes (it was scoring twice, the
    # attribution refresh, and the handoff's own task).
    assert queued == ["martech.tasks.capture_process"]
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.total_score == 0 and lead.lifecycle_stage.key == "lead"
    assert not Assignment.objects.filter(lead=lead).exists()


def test_the_capture_task_scores_then_routes_then_hands_off(demo_form, scored_routing, scoring_inline,
                                                             django_capture_on_commit_callbacks):
    hot_rep = scored_routing
    with django_capture_on_commit_callbacks(execute=True):
        assert post({"email": "vp@example.com", "title": "VP Sales"}).status_code in (200, 201, 202)
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.total_score == 80 and lead.lifecycle_stage.key == "sql"
    # Routed once, by the rule reading the score: the score came first.
    (assignment,) = Assignment.objects.filter(lead=lead)
    assert (assignment.rep, assignment.trigger, assignment.rule_name) == (hot_rep, "new_lead", "Hot")
    handoff = Handoff.objects.get(lead=lead)
    assert handoff.owner == hot_rep.user and handoff.transition.to_stage.key == "sql"


def test_capture_process_twice_changes_nothing_more(demo_form, scored_routing, scoring_inline,
                                                    django_capture_on_commit_callbacks):
    from martech.models import Event
    from martech.tasks import capture_process

    with django_capture_on_commit_callbacks(execute=True):
        post({"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    event = Event.objects.get(lead=lead)
    with django_capture_on_commit_callbacks(execute=True):
        capture_process(lead.pk, [event.pk], True, [], "form:demo")
    assert Assignment.objects.filter(lead=lead).count() == 1
    assert Handoff.objects.filter(lead=lead).count() == 1
    assert StageTransition.objects.filter(lead=lead, to_stage__key="sql").count() == 1


def test_a_stale_rule_never_moves_a_lead_back():
    lead = LeadFactory()
    stale = Lead.objects.get(pk=lead.pk)  # read while the lead was a "lead"
    lead_change_stage(lead=lead, to_stage="sql", reason="demo")
    assert lead_change_stage(lead=stale, to_stage="mql", reason="rule: MQL", forward_only=True) is None
    assert Lead.objects.get(pk=lead.pk).lifecycle_stage.key == "sql"
    # Without forward_only (an explicit recycle) the move back is made.
    assert lead_change_stage(lead=stale, to_stage="mql", reason="recycled: no budget") is not None


def test_lifecycle_rules_on_an_older_snapshot_do_not_undo_an_sql(monkeypatch):
    LifecycleRule.objects.create(name="MQL", condition='country = "DE"', to_stage=stage("mql"))
    lead = LeadFactory(country="DE")
    real_filter = Lead.objects.filter

    def read_then_moved(*args, **kwargs):
        # lifecycle_apply's read of the lead; another task moves it to SQL
        # right after (the read is what this task then decides on).
        monkeypatch.setattr(Lead.objects, "filter", real_filter)
        rows = list(real_filter(*args, **kwargs))
        lead_change_stage(lead=Lead.objects.get(pk=lead.pk), to_stage="sql", reason="demo")
        return _Rows(rows)

    monkeypatch.setattr(Lead.objects, "filter", read_then_moved)
    assert scoring.lifecycle_apply(lead_ids=[lead.pk]) == []
    assert Lead.objects.get(pk=lead.pk).lifecycle_stage.key == "sql"
    assert not StageTransition.objects.filter(lead=lead, to_stage__key="mql").exists()


class _Rows(list):
    """The rows as read, for lifecycle_apply's select_related/only chain."""

    def select_related(self, *a):
        return self

    def only(self, *a):
        return self


def test_the_handoff_sweep_starts_a_lost_handoff_once(scoring_inline):
    lead = LeadFactory()
    tr = StageTransition.objects.create(lead=lead, to_stage=stage("sql"), reason="demo", source="t",
                                        changed_at=timezone.now() - dt.timedelta(minutes=5))
    Lead.objects.filter(pk=lead.pk).update(lifecycle_stage=stage("sql"))
    recent = LeadFactory()
    StageTransition.objects.create(lead=recent, to_stage=stage("sql"), reason="demo", source="t",
                                   changed_at=timezone.now())
    assert scoring.handoffs_sweep() == 1
    assert Handoff.objects.get().transition == tr  # the recent one is its own task's, for now
    assert scoring.handoffs_sweep() == 0


def test_the_sweep_leaves_a_lead_that_moved_on_since(scoring_inline):
    lead = LeadFactory()
    old = timezone.now() - dt.timedelta(minutes=10)
    StageTransition.objects.create(lead=lead, to_stage=stage("sql"), reason="demo", source="t", changed_at=old)
    StageTransition.objects.create(lead=lead, to_stage=stage("lead"), reason="recycled: x", source="t",
                                   changed_at=old + dt.timedelta(minutes=1))
    assert scoring.handoffs_sweep() == 0


def test_wake_ups_are_debounced_until_the_task_reads(queued):
    for _ in range(20):
        taskqueue.wake("nurture.tasks.advance_woken", key="k")
    assert queued == ["nurture.tasks.advance_woken"]
    taskqueue.woken("k")  # the task began: the next write wakes another
    assert taskqueue.wake("nurture.tasks.advance_woken", key="k") is True
    assert queued == ["nurture.tasks.advance_woken"] * 2


def test_a_new_enrollment_wakes_the_due_steps_on_commit(queued, django_capture_on_commit_callbacks):
    from nurture.tasks import wake_on_commit

    with django_capture_on_commit_callbacks(execute=True):
        wake_on_commit()
        wake_on_commit()
    assert queued == ["nurture.tasks.advance_woken"]


def test_wake_ups_in_a_coalescing_block_go_once_per_key_at_its_end(monkeypatch, django_capture_on_commit_callbacks):
    calls: list[str] = []
    monkeypatch.setattr(taskqueue, "wake", lambda func, *args, key, cluster=None: calls.append(key))
    with taskqueue.coalesced_wakes():
        for _ in range(3):  # three transactions committed
            with django_capture_on_commit_callbacks(execute=True):
                taskqueue.wake_on_commit("crm.tasks.drain", key="crm.drain:1")
                taskqueue.wake_on_commit("crm.tasks.drain", key="crm.drain:2")
        assert calls == []
    assert sorted(calls) == ["crm.drain:1", "crm.drain:2"]
    with django_capture_on_commit_callbacks(execute=True):  # outside a block: at each commit
        taskqueue.wake_on_commit("crm.tasks.drain", key="crm.drain:1")
    assert calls[-1] == "crm.drain:1" and len(calls) == 3


def test_committed_work_is_woken_when_the_coalescing_block_raises(monkeypatch, django_capture_on_commit_callbacks):
    calls: list[str] = []
    monkeypatch.setattr(taskqueue, "wake", lambda func, *args, key, cluster=None: calls.append(key))
    with pytest.raises(RuntimeError), taskqueue.coalesced_wakes():
        with django_capture_on_commit_callbacks(execute=True):
            taskqueue.wake_on_commit("nurture.tasks.advance_woken", key="nurture.advance")
        assert calls == []
        raise RuntimeError("boom")
    assert calls == ["nurture.advance"]



def test_a_form_request_reads_the_configuration_once(demo_form, scored_routing, queued):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    post({"email": "first@example.com", "title": "VP Sales"})  # the form's own caches warm
    with CaptureQueriesContext(connection) as ctx:
        assert post({"email": "vp@example.com", "title": "VP Sales"}).status_code in (200, 201, 202)
    tokens = [q["sql"] for q in ctx.captured_queries
              if q["sql"].startswith('SELECT key, token FROM "martech_configversion"')]
    assert len(tokens) == 1, tokens
