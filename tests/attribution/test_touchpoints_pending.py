"""New events' touchpoints: the receiver notes the leads (one INSERT) and
wakes one debounced task, which rebuilds every lead noted since its last run;
none is missed, not one noted while a run goes on, not one a failed run read."""
from datetime import datetime, timedelta, timezone as dt_tz

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from attribution import receivers, tasks
from attribution.models import Touchpoint, TouchpointPending
from martech import taskqueue
from martech.signals import EventsWithLead
from tests.factories import EventFactory, LeadFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=dt_tz.utc)


def touch(lead, channel, at):
    return EventFactory(lead=lead, occurred_at=at, channel=channel, utm_source="x")


def announce(events):
    receivers.on_events_ingested(sender=None, event_ids=[e.pk for e in events], with_lead=EventsWithLead(
        event_ids=frozenset(e.pk for e in events), lead_ids=frozenset(e.lead_id for e in events),
        type_names=frozenset(), campaign_ids=frozenset()))


@pytest.fixture
def queued(monkeypatch):
    """The wake-ups enqueued (django-q2's async_task), the debounce mark clear."""
    calls: list[str] = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: calls.append((func, kw.get("cluster"))))
    taskqueue.woken(tasks.TOUCHPOINTS_WAKE_KEY)
    yield calls
    taskqueue.woken(tasks.TOUCHPOINTS_WAKE_KEY)


def test_many_captures_wake_one_task_that_refreshes_all_their_leads(queued, django_capture_on_commit_callbacks):
    leads = [LeadFactory() for _ in range(3)]
    events = [touch(lead, "email", T0 + timedelta(minutes=i)) for i, lead in enumerate(leads)]
    with django_capture_on_commit_callbacks(execute=True):
        for event in events:  # three captures, one after another
            announce([event])
    assert [func for func, _ in queued] == ["attribution.tasks.touchpoints_woken"]  # debounced
    assert sorted(TouchpointPending.objects.values_list("lead_id", flat=True)) == sorted(lead.pk for lead in leads)
    result = tasks.touchpoints_woken()
    assert result["leads"] == 3 and result["created"] == 3
    assert set(Touchpoint.objects.values_list("event_id", flat=True)) == {e.pk for e in events}
    assert not TouchpointPending.objects.exists()
    assert tasks.touchpoints_woken() == {"leads": 0, "runs": 0}  # the sweep with nothing pending: one query


def test_the_receiver_costs_one_insert_and_no_task_per_capture(queued, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    event = touch(lead, "email", T0)
    with CaptureQueriesContext(connection) as ctx:
        announce([event])
    assert [q["sql"].split()[0] for q in ctx.captured_queries] == ["INSERT"]
    # Events without a lead note nothing and wake nothing.
    receivers.on_events_ingested(sender=None, event_ids=[1], with_lead=EventsWithLead(
        event_ids=frozenset(), lead_ids=frozenset(), type_names=frozenset(), campaign_ids=frozenset()))
    assert TouchpointPending.objects.count() == 1


def test_a_sender_without_with_lead_notes_the_events_leads(queued):
    lead = LeadFactory()
    events = [touch(lead, "email", T0), touch(lead, "paid_search", T0 + timedelta(hours=2)),
              EventFactory(lead=None, occurred_at=T0)]
    with CaptureQueriesContext(connection) as ctx:
        receivers.on_events_ingested(sender=None, event_ids=[e.pk for e in events])
    assert len(ctx.captured_queries) == 1  # INSERT ... SELECT
    assert list(TouchpointPending.objects.values_list("lead_id", flat=True)) == [lead.pk]
    tasks.touchpoints_woken()
    assert Touchpoint.objects.filter(lead=lead).count() == 2


def test_a_lead_noted_while_a_run_goes_on_is_refreshed_by_the_next_run(queued, monkeypatch):
    lead = LeadFactory()
    first = touch(lead, "email", T0)
    announce([first])
    real = tasks.attribution_refresh_leads
    late = []

    def refresh_then_a_capture_commits(*, lead_ids):
        counts = real(lead_ids=lead_ids)
        if not late:  # a capture of the same lead commits after the run read its events
            late.append(touch(lead, "paid_search", T0 + timedelta(hours=3)))
            announce(late)
        return counts

    monkeypatch.setattr(tasks, "attribution_refresh_leads", refresh_then_a_capture_commits)
    tasks.touchpoints_woken()
    # Taken by the same run's next batch or by the next run: never left out.
    tasks.touchpoints_woken()
    assert set(Touchpoint.objects.filter(lead=lead).values_list("event_id", flat=True)) == {first.pk, late[0].pk}
    assert not TouchpointPending.objects.exists()


def test_a_failed_run_keeps_the_leads_for_the_next(queued, monkeypatch):
    lead = LeadFactory()
    event = touch(lead, "email", T0)
    announce([event])

    def fail(*, lead_ids):
        raise RuntimeError("database went away")

    monkeypatch.setattr(tasks, "attribution_refresh_leads", fail)
    with pytest.raises(RuntimeError):
        tasks.touchpoints_woken()
    assert TouchpointPending.objects.filter(lead_id=lead.pk).exists()
    monkeypatch.undo()
    tasks.touchpoints_woken()  # the schedule's sweep
    assert Touchpoint.objects.filter(event_id=event.pk).exists()


def test_the_sweep_is_scheduled_on_the_bulk_cluster():
    from attribution.schedules import SCHEDULES

    sweep = next(p for p in SCHEDULES if p.func == "attribution.tasks.touchpoints_woken")
    assert sweep.minutes == 1 and sweep.bulk


def test_a_woken_run_gathers_the_captures_of_its_window(queued, settings, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    """The run waits its gather window with the wake-up mark still set: a
    capture committed meanwhile wakes no task of its own, and its lead is
    refreshed by this run."""
    settings.MARTECH_ATTRIBUTION = {**settings.MARTECH_ATTRIBUTION, "TOUCHPOINTS_GATHER_SECONDS": 0.5}
    first, second = LeadFactory(), LeadFactory()
    events = [touch(first, "email", T0)]
    with django_capture_on_commit_callbacks(execute=True):
        announce(events)
    assert len(queued) == 1
    waits: list[float] = []

    def meanwhile(seconds):  # a capture commits during the wait
        waits.append(seconds)
        events.append(touch(second, "paid_search", T0 + timedelta(minutes=5)))
        with django_capture_on_commit_callbacks(execute=True):
            announce(events[1:])

    monkeypatch.setattr("time.sleep", meanwhile)
    result = tasks.touchpoints_woken()
    assert waits == [0.5]
    assert len(queued) == 1  # the second capture woke nothing: this run was gathering
    assert result["leads"] == 2
    assert set(Touchpoint.objects.values_list("event_id", flat=True)) == {e.pk for e in events}
    assert not TouchpointPending.objects.exists()
