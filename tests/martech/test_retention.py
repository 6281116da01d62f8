"""Retention: per-kind days, small batches, what later stages point at kept,
workflow metrics that survive the deletion of their rows."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from martech.models import Event, EventType, QuarantinedEvent
from martech.retention import kinds, retention_apply
from tests.factories import EventFactory, LeadFactory

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


@pytest.fixture
def retention(settings):
    def set_days(**days):
        settings.MARTECH_RETENTION = {**settings.MARTECH_RETENTION, "BATCH_SIZE": 2,
                                      **{f"{k.upper()}_DAYS": v for k, v in days.items()}}
    return set_days


def _events(n: int, *, age_days: float, **kw) -> list[Event]:
    at = timezone.now() - timedelta(days=age_days)
    return [EventFactory(occurred_at=at, received_at=at, **kw) for _ in range(n)]


def test_every_kind_has_its_setting():
    # PostgreSQL also prunes the dedupe keys of the event months it dropped, on the events' days.
    extra = ["event_keys"] if connection.vendor == "postgresql" else []
    assert sorted({k.key for k in kinds()}) == sorted(["assignments", "decisions", "events", "messages", "quarantine",
                                                       "score_history", "sync_logs", "task_results", *extra])
    assert {k.days_of for k in kinds() if k.days_of} == ({"events"} if extra else set())
    assert len({k.label for k in kinds()}) == len(kinds())


def test_nothing_is_deleted_by_default():
    # But task records: django-q2 does not prune them itself (save_limit 0), retention does.
    _events(3, age_days=4000)
    assert retention_apply() == {"task_results": 0}
    assert Event.objects.count() == 3


def _task(age_days: float, *, success: bool = True):
    from django_q.models import Task

    at = timezone.now() - timedelta(days=age_days)
    return Task.objects.create(id=uuid.uuid4().hex, name="t", func="math.floor", started=at, stopped=at,
                               success=success)


def test_successful_task_records_are_pruned_after_their_days_failures_kept(retention):
    from django_q.models import Task

    retention(task_results=2)
    old = [_task(3) for _ in range(3)]
    failed, fresh = _task(5, success=False), _task(1)
    assert retention_apply(only="task_results") == {"task_results": 3}
    assert set(Task.objects.values_list("pk", flat=True)) == {failed.pk, fresh.pk}
    assert not {t.pk for t in old} & set(Task.objects.values_list("pk", flat=True))
    assert retention_apply(only="task_results") == {"task_results": 0}


def test_saving_a_task_result_costs_the_same_queries_however_many_are_kept(settings):
    """django-q2 with a save_limit above 0 locks and loads every kept success
    row after each task; with 0 (ours) a result is two queries."""
    from django_q.conf import Conf
    from django_q.monitor import save_task

    assert settings.Q_CLUSTER["save_limit"] == 0 == Conf.SAVE_LIMIT
    for _ in range(20):
        _task(0.5)
    now = timezone.now()
    task = {"id": uuid.uuid4().hex, "name": "n", "func": "math.floor", "args": (), "kwargs": {}, "started": now,
            "stopped": now, "result": 1, "success": True, "sync": True}
    with CaptureQueriesContext(connection) as ctx:
        save_task(task, None)
    assert len([q for q in ctx.captured_queries if "django_q_task" in q["sql"]]) == 2


def test_old_events_are_deleted_in_batches_and_touchpoint_events_kept(retention):
    from attribution.models import Touchpoint

    retention(events=30)
    old, fresh = _events(5, age_days=31), _events(2, age_days=29)
    lead = LeadFactory()
    Touchpoint.objects.create(lead=lead, event=old[0], occurred_at=old[0].occurred_at, channel="email")
    with CaptureQueriesContext(connection) as ctx:
        assert retention_apply(only="events") == {"events": 4}
    table = connection.ops.quote_name(Event._meta.db_table)
    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith(f"DELETE FROM {table}")]
    # Batches of two (BATCH_SIZE): four rows are two DELETEs of two rows each.
    assert len(deletes) == 2 and all(q.split(" IN (", 1)[1].count(",") == 1 for q in deletes)
    assert set(Event.objects.values_list("pk", flat=True)) == {old[0].pk, *(e.pk for e in fresh)}
    assert Touchpoint.objects.count() == 1
    assert retention_apply(only="events") == {"events": 0}  # a repeated run finds nothing


def test_max_batches_bounds_a_run(retention, settings):
    retention(events=1)
    _events(7, age_days=2)
    assert retention_apply(only="events", max_batches=2) == {"events": 4}
    assert Event.objects.count() == 3
    retention_apply(only="events")
    assert not Event.objects.exists()


def test_quarantine(retention):
    retention(quarantine=10)
    now = timezone.now()
    for age in (11, 12, 9):
        QuarantinedEvent.objects.create(payload={}, reason="bad", received_at=now - age * DAY)
    assert retention_apply(only="quarantine") == {"quarantine": 2}
    assert QuarantinedEvent.objects.get().received_at == now - 9 * DAY


def test_sync_logs_keep_the_latest_run_of_each_object(retention):
    from martech.crm.models import Connection, SyncRun, WebhookReceipt

    retention(sync_logs=30)
    conn = Connection.objects.create(provider="hubspot", name="HubSpot")
    now = timezone.now()
    old_runs = [SyncRun.objects.create(connection=conn, kind="pull", object="contact", started_at=now - (40 + i) * DAY)
                for i in range(3)]
    last_deal = SyncRun.objects.create(connection=conn, kind="pull", object="deal", started_at=now - 90 * DAY)
    fresh = SyncRun.objects.create(connection=conn, kind="pull", object="contact", started_at=now)
    WebhookReceipt.objects.create(provider="hubspot", event_id="1", payload={}, received_at=now - 40 * DAY,
                                  processed_at=now - 40 * DAY)
    unprocessed = WebhookReceipt.objects.create(provider="hubspot", event_id="2", payload={},
                                                received_at=now - 40 * DAY)
    assert retention_apply(only="sync_logs") == {"sync_logs": 4}
    assert set(SyncRun.objects.values_list("pk", flat=True)) == {last_deal.pk, fresh.pk}
    assert not SyncRun.objects.filter(pk__in=[r.pk for r in old_runs]).exists()
    assert list(WebhookReceipt.objects.all()) == [unprocessed]


def test_messages_and_decisions_go_and_the_metrics_stay(retention, settings):
    from nurture.engine import enrollments_advance_due
    from nurture.models import Message, StepExecution, StepTally, Workflow
    from nurture.selectors import workflow_metrics
    from nurture.services import enrollment_create, workflow_publish
    from tests.nurture.conftest import email_flow

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from martech.services.leads import consent_record

    wf = Workflow.objects.create(name="drip", definition=email_flow(1))
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    leads = [LeadFactory() for _ in range(5)]
    for lead in leads[:4]:
        consent_record(lead=lead, channel="email", granted=True, source="t")
    for lead in leads:
        enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    Message.objects.filter(lead=leads[0]).update(opened_at=timezone.now(), clicked_at=timezone.now())
    Message.objects.filter(lead=leads[1]).update(status="queued")  # unsettled: never deleted
    before = workflow_metrics(workflow=wf)
    assert before["sent"] == 3 and before["opened"] == 1 and before["steps"][0]["executed"] == 5

    later = timezone.now() + 40 * DAY
    retention(messages=30, decisions=30)
    assert retention_apply(now=later, only="messages") == {"messages": 3}
    assert list(Message.objects.values_list("lead_id", flat=True)) == [leads[1].pk]
    # The executions whose messages are gone (and the end steps, and the skipped one) go too.
    assert retention_apply(now=later, only="decisions") == {"decisions": 9}
    assert list(StepExecution.objects.values_list("enrollment__lead_id", flat=True)) == [leads[1].pk]
    assert StepTally.objects.count() == 2
    assert workflow_metrics(workflow=wf) == before
    assert retention_apply(now=later) == {"messages": 0, "decisions": 0, "task_results": 0}
    assert workflow_metrics(workflow=wf) == before


def test_retention_task_is_scheduled():
    from martech.schedules import declared

    names = {p.name: p.func for p in declared()}
    assert names["retention"] == "martech.tasks.retention_apply"
    assert names["consent.confirmations"] == "martech.tasks.consent_confirmations_send"


def test_event_type_is_kept_when_its_events_go(retention):
    retention(events=1)
    kind = EventType.objects.get(name="form_submitted")
    _events(2, age_days=5, event_type=kind)
    retention_apply(only="events")
    assert EventType.objects.filter(pk=kind.pk).exists()


def test_closed_assignments_go_never_the_current_or_an_open_one(retention):
    from routing.models import Assignment, Escalation

    retention(assignments=30)
    now, lead, other = timezone.now(), LeadFactory(), LeadFactory()
    closed = Assignment.Lifecycle.CLOSED

    def assignment(who, *, lifecycle=closed, current=False, closed_days=None):
        return Assignment.objects.create(
            lead=who, status=Assignment.Status.ASSIGNED, trigger="new_lead", is_current=current, lifecycle=lifecycle,
            closed_at=now - closed_days * DAY if closed_days is not None else None)

    old = [assignment(lead, closed_days=40 + i) for i in range(3)]
    Escalation.objects.create(assignment=old[0], level=1)
    recent = assignment(lead, closed_days=10)
    current_closed = assignment(lead, current=True, closed_days=90)  # closed but still the lead's current
    worked = assignment(other, lifecycle=Assignment.Lifecycle.WORKED, current=True)
    assert retention_apply(only="assignments") == {"assignments": 3}
    assert set(Assignment.objects.values_list("pk", flat=True)) == {recent.pk, current_closed.pk, worked.pk}
    assert not Escalation.objects.exists()
    assert retention_apply(only="assignments") == {"assignments": 0}


def test_score_history_keeps_each_leads_two_latest(retention):
    from martech.scoring.models import ScoreHistory

    retention(score_history=30)
    now = timezone.now()

    def history(lead, days):
        return ScoreHistory.objects.create(lead=lead, changed_at=now - days * DAY, fit_score=1, engagement_score=1,
                                           total_score=2, old_total=0, reason="test")

    busy, once, twice = LeadFactory(), LeadFactory(), LeadFactory()
    busy_rows = [history(busy, d) for d in (100, 90, 80, 70, 5)]
    once_row = history(once, 200)
    twice_rows = [history(twice, 300), history(twice, 250)]
    # Busy: the 100/90/80-day rows go; its 70-day row stays (one of its two latest,
    # old as it is), with the fresh one. The other leads keep all theirs.
    assert retention_apply(only="score_history") == {"score_history": 3}
    assert set(ScoreHistory.objects.values_list("pk", flat=True)) == {
        busy_rows[3].pk, busy_rows[4].pk, once_row.pk, *(r.pk for r in twice_rows)}
    assert retention_apply(only="score_history") == {"score_history": 0}
