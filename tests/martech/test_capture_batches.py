"""One capture task per event batch (martech.services.capture, as for a
form): the events API's request validates, stores, dedupes and identifies;
scoring, routing (after the first score), lifecycle with the SQL handoff and
journey enrollment run in ``capture_process``, once per batch, safe to run
twice. The routing sweep scores before it routes."""
from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from martech.models import CapturePending, Event, EventType, Lead, LifecycleStage, StageTransition
from martech.scoring.models import FitRule, Handoff, LifecycleRule, ScoringModel
from martech.services import ingest
from nurture.models import Enrollment, Workflow
from nurture.services import workflow_publish
from routing.models import Assignment
from tests.martech.test_capture_events import identify, make_client, page, post_batch, track
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
CAPTURE = "martech.tasks.capture_process"


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "capture-batches"}}
    cache.clear()
    from routing import services

    services._clear_cache()


@pytest.fixture
def queued(monkeypatch):
    """(function, args) of every task enqueued with django-q2 (nothing runs)."""
    calls: list[tuple[str, tuple]] = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: calls.append((func, a)))
    monkeypatch.setattr("attribution.receivers.async_task", lambda func, *a, **kw: calls.append((func, a)))
    return calls


@pytest.fixture
def api():
    return make_client(["capture"])


def scored_world():
    """VPs score 80; the routing rule "score >= 50" sends them to Hot; a
    demo request makes an SQL; a journey starts on a demo request. Returns
    the Hot team's rep and the journey."""
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
                                 to_stage=LifecycleStage.objects.get(key="sql"))
    journey = Workflow.objects.create(name="Demo follow-up", trigger="event",
                                      trigger_config={"event": "demo_requested"},
                                      definition={"start": "end", "steps": {"end": {"type": "end"}}})
    workflow_publish(workflow=journey)
    return hot_rep, journey


@pytest.fixture
def world():
    return scored_world()


def _batch():
    # Two new people (one a VP), each identified and then requesting a demo; an anonymous page view.
    return [identify("i1", "vp@x.com", anon="a1", title="VP Sales"), identify("i2", "ic@x.com", anon="a2"),
            track("t1", anonymousId="a1", minutes=1), track("t2", anonymousId="a2", minutes=1),
            page("p1", "a3")]


def test_a_batch_queues_one_task_and_its_request_routes_scores_and_enrolls_nothing(
        api, world, queued, django_capture_on_commit_callbacks):
    # The token's first use and the configuration caches (catalog, UTM tables, CRM mappings).
    post_batch(api, [identify("w1", "warm@x.com", anon="a0"), track("w2", anonymousId="a0")])
    queued.clear()
    with CaptureQueriesContext(connection) as ctx, django_capture_on_commit_callbacks(execute=True):
        res = post_batch(api, _batch())
    assert res.status_code == 200 and res.json()["accepted"] == 5
    # One task for everything the batch causes; it was routing and enrollment
    # in the request, a scoring task, a rescoring task and the attribution refresh.
    assert [func for func, _ in queued] == [CAPTURE]
    vp, ic = Lead.objects.get(email="vp@x.com"), Lead.objects.get(email="ic@x.com")
    (lead_ids, event_ids, created_ids, transition_ids, source, reason), = [a for _, a in queued]
    assert sorted(lead_ids) == sorted(created_ids) == sorted([vp.pk, ic.pk])
    assert sorted(event_ids) == sorted(Event.objects.filter(lead__in=[vp, ic]).values_list("pk", flat=True))
    assert len(event_ids) == 4 and len(transition_ids) == 2  # the anonymous page view is no lead's
    assert (source, reason) == ("api:site", "event")
    assert vp.total_score == 0 and vp.lifecycle_stage.key == "lead"
    assert not Assignment.objects.exists() and not Enrollment.objects.exists()
    sql = [q["sql"] for q in ctx.captured_queries]
    for app in ("routing", "nurture", "scoring", "django_q"):
        assert not [q for q in sql if re.search(rf'(FROM|INTO|UPDATE|JOIN) "{app}_', q)], app
    # The request's queries: the token, the configuration tokens, stored
    # ids, identities and leads read; for each new lead (in its savepoints)
    # the lead inserted with its first stage (from the process's stage cache),
    # its transition and its identity written (5 queries a new lead fewer
    # than when the stage was read, then written second: its savepoint and
    # release, a lock, an UPDATE, and with a CRM connection an outbox upsert
    # too); the events inserted; the touched leads locked and updated; the
    # pending capture recorded (one INSERT: martech.services.capture). None
    # of them grows with routing rules, journeys or scoring rules.
    assert len(sql) == (47 if connection.vendor == "postgresql" else 46), [q[:100] for q in sql]
    assert len([q for q in sql if 'INTO "martech_capturepending"' in q]) == 1
    pending = CapturePending.objects.latest("pk")  # (the warm-up batch's is the other)
    assert pending.args() == (lead_ids, event_ids, created_ids, transition_ids, source, reason)


def test_anonymous_page_views_queue_no_task(api, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        res = post_batch(api, [page(f"p{i}", f"anon-{i}") for i in range(20)])
    assert res.json()["accepted"] == 20
    assert queued == []


def test_the_batch_task_scores_then_routes_then_hands_off_and_enrolls(api, world, scoring_inline,
                                                                     django_capture_on_commit_callbacks):
    hot_rep, journey = world
    with django_capture_on_commit_callbacks(execute=True):
        assert post_batch(api, _batch()).json()["accepted"] == 5
    vp, ic = Lead.objects.get(email="vp@x.com"), Lead.objects.get(email="ic@x.com")
    assert (vp.total_score, vp.lifecycle_stage.key) == (80, "sql")
    assert (ic.total_score, ic.lifecycle_stage.key) == (0, "sql")
    # Routed once each, the VP by the rule reading the score: the score came first.
    (assignment,) = Assignment.objects.filter(lead=vp)
    assert (assignment.rep, assignment.trigger, assignment.rule_name) == (hot_rep, "new_lead", "Hot")
    assert Assignment.objects.get(lead=ic).rule_name != "Hot"
    assert Handoff.objects.get(lead=vp).owner == hot_rep.user
    assert Handoff.objects.filter(lead=ic).count() == 1
    assert set(Enrollment.objects.filter(workflow=journey).values_list("lead__email", flat=True)) == {
        "vp@x.com", "ic@x.com"}


def test_the_batch_task_twice_changes_nothing_more(api, world, scoring_inline, monkeypatch,
                                                   django_capture_on_commit_callbacks):
    from martech.services import capture
    from martech.tasks import capture_process

    runs = []
    real = capture.task_enqueue
    monkeypatch.setattr(capture, "task_enqueue", lambda func, *a, **kw: (runs.append(a), real(func, *a, **kw)))
    with django_capture_on_commit_callbacks(execute=True):
        post_batch(api, _batch())
    (args,) = runs  # ran once inline; twice more now
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            capture_process(*args)
    for email in ("vp@x.com", "ic@x.com"):
        lead = Lead.objects.get(email=email)
        assert Assignment.objects.filter(lead=lead).count() == 1
        assert Handoff.objects.filter(lead=lead).count() == 1
        assert StageTransition.objects.filter(lead=lead, to_stage__key="sql").count() == 1
        assert Enrollment.objects.filter(lead=lead).count() == 1
    assert Lead.objects.get(email="vp@x.com").total_score == 80


def test_an_event_of_a_known_lead_reaches_the_task_with_its_lead(api, world, queued,
                                                                django_capture_on_commit_callbacks):
    lead = Lead.objects.create(email="known@x.com")
    with django_capture_on_commit_callbacks(execute=True):
        post_batch(api, [track("t1", properties={"email": "known@x.com"})])
    (lead_ids, event_ids, created_ids, transition_ids, _, _), = [a for _, a in queued]
    assert (lead_ids, created_ids, transition_ids) == ([lead.pk], [], [])
    assert event_ids == [Event.objects.get(client_event_id="t1").pk]


def test_a_rolled_back_item_is_not_announced(api, world, queued, monkeypatch, django_capture_on_commit_callbacks):
    real = ingest.lead_upsert

    def flaky(*, data, **kw):
        lead, created = real(data=data, **kw)  # written and noted, then its savepoint rolls back
        if data["email"] == "boom@x.com":
            raise ValidationError({"email": ["CRM says no."]})
        return lead, created

    monkeypatch.setattr(ingest, "lead_upsert", flaky)
    with django_capture_on_commit_callbacks(execute=True):
        res = post_batch(api, [identify("i1", "boom@x.com", anon="a1"), identify("i2", "fine@x.com", anon="a2")])
    assert [r["status"] for r in res.json()["results"]] == ["rejected", "accepted"]
    fine = Lead.objects.get(email="fine@x.com")
    (lead_ids, _, created_ids, transition_ids, _, _), = [a for _, a in queued]
    assert lead_ids == created_ids == [fine.pk]
    assert transition_ids == list(StageTransition.objects.filter(lead=fine).values_list("pk", flat=True))


def test_a_task_queued_by_the_earlier_form_signature_still_runs(world, scoring_inline,
                                                               django_capture_on_commit_callbacks):
    from martech.tasks import capture_process

    lead = Lead.objects.create(email="vp@x.com", job_title="VP")
    with django_capture_on_commit_callbacks(execute=True):
        capture_process(lead.pk, [], True, [], "form:old")  # (lead id, events, created, moves, source)
    lead.refresh_from_db()
    assert lead.total_score == 80
    assert Assignment.objects.get(lead=lead).rule_name == "Hot"


def test_the_unrouted_sweep_scores_before_it_routes(world, queued):
    from routing import services

    hot_rep, _ = world
    # A new lead whose capture task is still queued (a backlog): not scored, not routed.
    lead = Lead.objects.create(email="vp@x.com", job_title="VP Sales")
    assert services.unrouted_sweep() == 1
    lead.refresh_from_db()
    assert lead.total_score == 80
    assert Assignment.objects.get(lead=lead).rep == hot_rep  # the rule read the score, not the unscored 0
