"""The capture task's queries, with its transactions really committed (a
transactional test): what runs after each commit (the stage's
announcement, the SQL handoff, wake-ups) runs inside the task, as in a
worker."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from martech.models import Event, Lead, StageTransition
from martech.scoring.models import Handoff, LifecycleRule
from tests.factories import FormFactory, form_field
from tests.martech.test_capture_task import _local_cache, demo_form, post, scored_routing, stage  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reference_data", "scoring_inline")]


def test_the_capture_task_reads_the_configuration_once(demo_form, scored_routing, monkeypatch):
    """Every receiver's cache check read the configuration's tokens: 7 reads
    a form here (10 in the demo). The task holds one snapshot; its queries
    are bounded. (Its wake-ups, once per key: the coalescing tests in
    test_capture_task.py.)"""
    from martech.crm.models import Connection, FieldMapping
    from martech.tasks import capture_process

    for provider, owner in (("hubspot", "hubspot_owner_id"), ("salesforce", "OwnerId")):
        conn = Connection.objects.create(provider=provider, name=provider, is_active=True)
        FieldMapping.objects.create(connection=conn, local_field="email", remote_field="email", kind="text")
        FieldMapping.objects.create(connection=conn, local_field="owner", remote_field=owner, kind="text",
                                    direction="push")
    captured: list[tuple] = []
    monkeypatch.setattr("martech.services.capture.task_enqueue", lambda func, *args, **kw: captured.append(args))
    post({"email": "vp@example.com", "title": "VP Sales"})
    (args,) = captured
    lead = Lead.objects.get(email="vp@example.com")
    assert args[:2] == ([lead.pk], [Event.objects.get(lead=lead).pk])
    with CaptureQueriesContext(connection) as ctx:
        capture_process(*args)
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert Handoff.objects.filter(lead=lead).count() == 1
    tokens = [q for q in sqls if q.startswith('SELECT key, token FROM "martech_configversion"')]
    assert len(tokens) == 1, tokens
    # PostgreSQL 45, SQLite 51 (71 and 75 before the task routed a lead once,
    # started the handoff in the move's transaction and rescored only for a
    # change a fit rule reads; 77 and 81 before the snapshot). Holding the CRM
    # outbox rows until the task's end added its one UPDATE making them due,
    # and on SQLite the two drain wake-ups (django-q2's ORM broker rows) that
    # the request sent before.
    assert len(sqls) <= (45 if connection.vendor == "postgresql" else 51), len(sqls)



def _task_queries(monkeypatch, data):
    """The capture task of one form posted with ``data``, its SQL captured."""
    from martech.tasks import capture_process

    captured: list[tuple] = []
    monkeypatch.setattr("martech.services.capture.task_enqueue", lambda func, *args, **kw: captured.append(args))
    post(data)
    (args,) = captured
    with CaptureQueriesContext(connection) as ctx:
        capture_process(*args)
    return [q["sql"] for q in ctx.captured_queries]


def test_the_capture_task_routes_a_new_sql_lead_once(demo_form, scored_routing, monkeypatch):
    """A new lead that the form makes an SQL: the new-lead announcement
    routes it (after its scoring: the rule reading the score), and the stage
    trigger and the SQL handoff of the same task take that assignment
    instead of locking the lead to find it; the handoff is started in the
    lifecycle move's transaction (one BEGIN for both); the owner routing set
    and the stage move, read by no fit rule, cost no second scoring."""
    from routing.models import Assignment

    hot_rep = scored_routing
    sqls = _task_queries(monkeypatch, {"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.lifecycle_stage.key == "sql" and lead.total_score == 80
    (assignment,) = Assignment.objects.filter(lead=lead)
    assert (assignment.rep, assignment.trigger, assignment.rule_name) == (hot_rep, "new_lead", "Hot")
    # The stage trigger's first touch (sql is a first-touch stage) found it.
    assert assignment.first_touch_source == "stage:sql"
    handoff = Handoff.objects.get(lead=lead)
    assert (handoff.owner, handoff.assigned_by) == (hot_rep.user, "routing")
    # The lead's current assignment is read (under its lock) by one route only.
    current = [q for q in sqls if q.startswith('SELECT "id" FROM "routing_assignment" WHERE "lead_id"')]
    assert len(current) == 1, current
    # One scoring (no "lead changed" rescoring: its history has one row).
    assert lead.score_history.count() == 1
    # The handoff takes the move it follows and the task's lead: the only
    # read of transitions is the task's of the request's.
    assert len([q for q in sqls if q.startswith('SELECT "martech_stagetransition"')]) == 1
    # Transactions: scoring, the route, the move with its handoff.
    if connection.vendor == "postgresql":
        assert sqls.count("BEGIN") == 3, sqls.count("BEGIN")


def test_a_handoff_that_fails_in_the_move_is_started_by_the_announcement(demo_form, scored_routing, monkeypatch):
    """The handoff runs in a savepoint of the move's transaction: when it
    fails the move stands, and the move's announcement starts the handoff
    (inline, as before), once."""
    from martech.scoring import services as scoring_services

    real, calls = scoring_services._handoff, []

    def fail_first(transition, lead, **kw):
        calls.append(transition.pk)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(transition, lead, **kw)

    monkeypatch.setattr(scoring_services, "_handoff", fail_first)
    _task_queries(monkeypatch, {"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.lifecycle_stage.key == "sql"
    assert len(calls) == 2 and calls[0] == calls[1]
    assert Handoff.objects.filter(lead=lead).count() == 1


def test_a_fit_rule_reading_the_stage_rescores_after_the_move(demo_form, scored_routing, monkeypatch):
    """The task scores a lead once more after a change a fit rule reads (here
    the SQL move), and only then."""
    from martech.scoring.models import FitRule, ScoreHistory, ScoringModel

    model = ScoringModel.objects.get(is_active=True)
    FitRule.objects.create(model=model, name="SQL", condition='lifecycle_stage = "sql"', points=5)
    _task_queries(monkeypatch, {"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.lifecycle_stage.key == "sql" and lead.total_score == 85
    assert list(ScoreHistory.objects.filter(lead=lead).order_by("pk").values_list("reason", flat=True)) == [
        "form", "lead changed"]


def test_lifecycle_rules_reading_the_owner_read_the_lead_after_its_route(scored_routing, monkeypatch):
    """The lifecycle rules take the task's rows of its leads only when
    nothing they read changed since: a condition on the owner (which the
    route just set) makes them read the lead again, and the rule moves it."""
    from django.contrib.auth import get_user_model

    from martech.scoring import services as scoring_services

    scored_routing.user = get_user_model().objects.create(username="hot")
    scored_routing.save()
    FormFactory(key="contact", event_type=None, fields=[form_field("email", "email", required=True),
                                                        form_field("title", "job_title")])
    LifecycleRule.objects.create(name="Owned", condition="owner is not empty", to_stage=stage("mql"))
    real, given = scoring_services.lifecycle_apply, []

    def spy(**kwargs):
        given.append(kwargs.get("leads"))
        return real(**kwargs)

    monkeypatch.setattr(scoring_services, "lifecycle_apply", spy)
    captured: list[tuple] = []
    monkeypatch.setattr("martech.services.capture.task_enqueue", lambda func, *args, **kw: captured.append(args))
    post({"email": "vp@example.com", "title": "VP Sales"}, key="contact")
    from martech.tasks import capture_process

    capture_process(*captured[0])
    lead = Lead.objects.get(email="vp@example.com")
    assert lead.owner == scored_routing.user and lead.lifecycle_stage.key == "mql"
    assert given[0] is None  # read again: the owner changed since the task's read
    assert list(StageTransition.objects.filter(lead=lead, to_stage__key="mql").values_list("reason", flat=True)) == [
        "rule: Owned"]
