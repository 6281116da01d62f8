"""No lost capture work (martech.services.capture): a form or an event batch
records its capture in its own transaction (one INSERT); the capture task
deletes the record when it is done; a record left past its lease (the task
lost: the process died before the enqueue, the broker was down or dropped
the task) is enqueued again by the sweep, a bounded number of times, then
kept for ops."""
from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import CapturePending, Event, EventType, Lead, StageTransition
from martech.scoring.models import Handoff
from martech.services import capture
from martech.tasks import capture_process, captures_sweep
from nurture.models import Enrollment
from routing.models import Assignment
from tests.factories import FormFactory, form_field
from tests.martech.test_capture_batches import _local_cache, scored_world  # noqa: F401 - the cache fixture
from tests.martech.test_capture_events import identify, make_client, post_batch, track

pytestmark = pytest.mark.django_db
CAPTURE = "martech.tasks.capture_process"
REAL_ENQUEUE = capture.task_enqueue


@pytest.fixture
def queued(monkeypatch):
    """(function, args, kwargs) of every task enqueued with django-q2 (nothing runs)."""
    calls: list[tuple[str, tuple, dict]] = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: calls.append((func, a, kw)))
    monkeypatch.setattr("attribution.receivers.async_task", lambda func, *a, **kw: calls.append((func, a, kw)))
    return calls


@pytest.fixture
def lost(monkeypatch):
    """The capture task's enqueue is lost (the broker dropped it): nothing runs."""
    dropped: list[tuple] = []
    monkeypatch.setattr(capture, "task_enqueue", lambda func, *a, **kw: dropped.append((func, a, kw)))
    return dropped


@pytest.fixture
def world():
    """The batch tests' world (scored_world), and a "demo" form that emits
    the demo request."""
    hot_rep, journey = scored_world()
    FormFactory(key="demo", event_type=EventType.objects.get(name="demo_requested"),
                fields=[form_field("email", "email", required=True), form_field("title", "job_title")])
    return hot_rep, journey


def post_form(email="vp@example.com", title="VP Sales"):
    return APIClient().post("/api/v1/capture/demo", {"email": email, "title": title}, format="json",
                            HTTP_USER_AGENT="test")


def lease_passed(**filters):
    """The rows' lease is over (as if MARTECH_CAPTURE_SWEEP_AFTER seconds went by)."""
    CapturePending.objects.filter(**filters).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))


def assert_done_once(lead, hot_rep, journey):
    assert (lead.total_score, lead.lifecycle_stage.key) == (80, "sql")
    (assignment,) = Assignment.objects.filter(lead=lead)
    assert (assignment.rep, assignment.rule_name) == (hot_rep, "Hot")  # routed after scoring
    (handoff,) = Handoff.objects.filter(lead=lead)
    assert handoff.owner == hot_rep.user
    assert StageTransition.objects.filter(lead=lead, to_stage__key="sql").count() == 1
    assert Enrollment.objects.filter(lead=lead, workflow=journey).count() == 1


def test_a_form_records_its_capture_with_one_insert_and_the_task_gets_its_id(
        world, queued, monkeypatch, django_capture_on_commit_callbacks):
    post_form("warm@example.com")  # the configuration caches' first reads
    counts = {}
    for n, record in enumerate((True, False)):
        if not record:
            monkeypatch.setattr(capture, "_pending_record", lambda args: None)
        queued.clear()
        with CaptureQueriesContext(connection) as ctx, django_capture_on_commit_callbacks(execute=True):
            assert post_form(f"p{n}@example.com").status_code in (200, 201, 202)
        counts[record] = [q["sql"] for q in ctx.captured_queries]
        assert [func for func, _, _ in queued] == [CAPTURE]
    # The request's queries rise by exactly one, the row's INSERT.
    assert len(counts[True]) == len(counts[False]) + 1, [q[:80] for q in counts[True]]
    assert len([q for q in counts[True] if 'INTO "martech_capturepending"' in q]) == 1
    lead = Lead.objects.get(email="p0@example.com")
    (pending,) = [p for p in CapturePending.objects.all() if p.lead_ids == [lead.pk]]
    assert pending.args() == ([lead.pk], list(Event.objects.filter(lead=lead).values_list("pk", flat=True)),
                              [lead.pk], list(StageTransition.objects.filter(lead=lead).values_list("pk", flat=True)),
                              "form:demo", "form")
    assert (pending.attempts, pending.next_attempt_at > timezone.now() + dt.timedelta(seconds=590)) == (0, True)


def test_the_task_deletes_its_row_and_a_task_for_a_row_gone_does_nothing(
        world, scoring_inline, monkeypatch, django_capture_on_commit_callbacks):
    hot_rep, journey = world
    runs = []
    real = capture.task_enqueue
    monkeypatch.setattr(capture, "task_enqueue", lambda func, *a, **kw: (runs.append((a, kw)), real(func, *a, **kw)))
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    ((args, kwargs),) = runs
    assert kwargs["pending_id"] and not CapturePending.objects.exists()
    lead = Lead.objects.get(email="vp@example.com")
    assert_done_once(lead, hot_rep, journey)
    # The same task again (the broker delivered it twice): its row is gone, one query and nothing done.
    with CaptureQueriesContext(connection) as ctx, django_capture_on_commit_callbacks(execute=True):
        capture_process(*args, pending_id=kwargs["pending_id"])
    assert len(ctx.captured_queries) == 1, [q["sql"] for q in ctx.captured_queries]
    assert_done_once(Lead.objects.get(pk=lead.pk), hot_rep, journey)


def test_a_task_run_twice_while_its_row_is_there_changes_nothing_more(
        world, scoring_inline, lost, django_capture_on_commit_callbacks):
    # The worker died after the capture's last step, before the row's delete: the sweep runs it again.
    hot_rep, journey = world
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    ((_, args, kwargs),) = lost
    (pending,) = CapturePending.objects.all()
    assert kwargs["pending_id"] == pending.pk
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            capture_process(*args)  # without the id: the row stays
    with django_capture_on_commit_callbacks(execute=True):
        capture_process(*args, pending_id=pending.pk)
    assert not CapturePending.objects.exists()
    assert_done_once(Lead.objects.get(email="vp@example.com"), hot_rep, journey)


def test_a_form_whose_task_was_lost_is_done_by_the_sweep(world, scoring_inline, lost, monkeypatch,
                                                        django_capture_on_commit_callbacks):
    hot_rep, journey = world
    with django_capture_on_commit_callbacks(execute=True):
        assert post_form().status_code in (200, 201, 202)
    lead = Lead.objects.get(email="vp@example.com")
    assert (lead.total_score, lead.lifecycle_stage.key) == (0, "lead")
    assert not Assignment.objects.exists() and not Enrollment.objects.exists()
    # A fresh row is not doubled: its task may still be queued.
    assert captures_sweep() == 0
    assert len(lost) == 1 and CapturePending.objects.get().attempts == 0
    lease_passed()
    monkeypatch.undo()  # the broker works again (and the task runs, inline here)
    with django_capture_on_commit_callbacks(execute=True):
        assert captures_sweep() == 1
    assert not CapturePending.objects.exists()
    assert_done_once(Lead.objects.get(pk=lead.pk), hot_rep, journey)
    assert captures_sweep() == 0


def test_an_event_batch_whose_task_was_lost_is_done_by_the_sweep(world, scoring_inline, lost,
                                                                 django_capture_on_commit_callbacks):
    hot_rep, journey = world
    api = make_client(["capture"])
    with django_capture_on_commit_callbacks(execute=True):
        res = post_batch(api, [identify("i1", "vp@x.com", anon="a1", title="VP Sales"),
                               identify("i2", "ic@x.com", anon="a2"),
                               track("t1", anonymousId="a1", minutes=1), track("t2", anonymousId="a2", minutes=1)])
    assert res.json()["accepted"] == 4
    (pending,) = CapturePending.objects.all()
    assert (pending.source, pending.reason, len(pending.lead_ids)) == ("api:site", "event", 2)
    lease_passed()
    lost.clear()
    assert captures_sweep() == 1
    ((_, args, kwargs),) = lost  # enqueued again, and lost again
    assert kwargs["pending_id"] == pending.pk and args == pending.args()
    pending.refresh_from_db()
    assert pending.attempts == 1
    # Its next try waits twice the lease.
    assert pending.next_attempt_at > timezone.now() + dt.timedelta(seconds=1190)
    with django_capture_on_commit_callbacks(execute=True):
        capture_process(*args, pending_id=kwargs["pending_id"])  # the worker runs it at last
    assert not CapturePending.objects.exists()
    assert_done_once(Lead.objects.get(email="vp@x.com"), hot_rep, journey)
    ic = Lead.objects.get(email="ic@x.com")
    assert Handoff.objects.filter(lead=ic).count() == 1
    assert Enrollment.objects.filter(lead=ic, workflow=journey).count() == 1


def test_the_request_answers_when_the_broker_is_down_and_the_sweep_enqueues_later(
        world, monkeypatch, caplog, django_capture_on_commit_callbacks):
    def down(func, *a, **kw):
        raise ConnectionError("broker down")

    monkeypatch.setattr("django_q.tasks.async_task", down)
    monkeypatch.setattr("attribution.receivers.async_task", down)
    with caplog.at_level(logging.ERROR, logger="martech.services.capture"), \
            django_capture_on_commit_callbacks(execute=True):
        assert post_form().status_code in (200, 201, 202)
    (pending,) = CapturePending.objects.all()
    assert "task not enqueued" in caplog.text
    lease_passed()
    # Still down at the sweep: the row waits for the next sweep, its attempt not counted.
    assert captures_sweep() == 0
    pending.refresh_from_db()
    assert pending.attempts == 0 and pending.next_attempt_at <= timezone.now()
    calls = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: calls.append((func, kw["pending_id"])))
    assert captures_sweep() == 1
    assert calls == [(CAPTURE, pending.pk)]


def test_attempts_exhausted_keep_the_row_for_ops(world, lost, caplog, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    (pending,) = CapturePending.objects.all()
    for attempt in range(1, capture.SWEEP_ATTEMPTS + 1):
        lease_passed()
        assert captures_sweep() == 1
        pending.refresh_from_db()
        assert pending.attempts == attempt
        assert pending.next_attempt_at > timezone.now() + dt.timedelta(seconds=600 * 2 ** attempt - 10)
    assert len(lost) == 1 + capture.SWEEP_ATTEMPTS
    lease_passed()
    with caplog.at_level(logging.ERROR, logger="martech.services.capture"):
        assert captures_sweep() == 0
    assert "did not finish after 5 attempts" in caplog.text
    pending.refresh_from_db()
    assert (pending.attempts, pending.next_attempt_at) == (capture.SWEEP_ATTEMPTS, None)
    assert captures_sweep() == 0 and len(lost) == 1 + capture.SWEEP_ATTEMPTS
    assert capture.pending_status() == {"waiting": 0, "overdue": 0, "given_up": 1}


def test_the_admin_lists_pending_captures_read_only(admin_client, world, lost, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    pending = CapturePending.objects.get()
    res = admin_client.get("/admin/martech/capturepending/")
    assert res.status_code == 200
    assert b"1 waiting, 0 overdue, 0 given up" in res.content
    assert admin_client.get(f"/admin/martech/capturepending/{pending.pk}/change/").status_code == 200
    assert admin_client.post(f"/admin/martech/capturepending/{pending.pk}/delete/", {"post": "yes"}).status_code == 403
    assert CapturePending.objects.filter(pk=pending.pk).exists()


def test_a_failing_task_keeps_its_error_on_the_row_and_raises(world, lost, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    ((func, args, kwargs),) = lost
    pending = CapturePending.objects.get()

    def fail(**kw):
        raise RuntimeError("scoring model 7 has no rules")

    monkeypatch.setattr(capture, "capture_process", fail)
    with pytest.raises(RuntimeError):
        capture_process(*args, pending_id=kwargs["pending_id"])
    pending.refresh_from_db()  # kept for the sweep, with the error for ops
    assert pending.last_error == "RuntimeError: scoring model 7 has no rules"


def test_ops_enqueue_a_given_up_capture_again_from_the_admin(admin_client, world, scoring_inline, lost, monkeypatch,
                                                            django_capture_on_commit_callbacks):
    hot_rep, journey = world
    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    pending = CapturePending.objects.get()
    CapturePending.objects.filter(pk=pending.pk).update(
        attempts=capture.SWEEP_ATTEMPTS, next_attempt_at=None, last_error="OperationalError: the database restarted")
    res = admin_client.get("/admin/martech/capturepending/")
    assert b"OperationalError: the database restarted" in res.content
    assert b"Enqueue the selected captures again now" in res.content
    # The task runs when enqueued now (the cause fixed).
    monkeypatch.setattr(capture, "task_enqueue", REAL_ENQUEUE)
    with django_capture_on_commit_callbacks(execute=True):
        res = admin_client.post("/admin/martech/capturepending/", {
            "action": "retry_now", "_selected_action": [pending.pk]}, follow=True)
    assert b"1 of 1 capture(s) enqueued again" in res.content
    assert not CapturePending.objects.exists()  # done, so deleted
    assert_done_once(Lead.objects.get(email="vp@example.com"), hot_rep, journey)


def test_the_retry_is_not_offered_without_the_change_permission(client, world, lost, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    from tests.factories import UserFactory

    with django_capture_on_commit_callbacks(execute=True):
        post_form()
    user = UserFactory(username="viewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_capturepending"))
    client.force_login(user)
    res = client.get("/admin/martech/capturepending/")
    assert res.status_code == 200 and b"Enqueue the selected captures again now" not in res.content
    pending = CapturePending.objects.get()
    CapturePending.objects.filter(pk=pending.pk).update(attempts=capture.SWEEP_ATTEMPTS, next_attempt_at=None)
    client.post("/admin/martech/capturepending/", {"action": "retry_now", "_selected_action": [pending.pk]})
    pending.refresh_from_db()
    assert (pending.attempts, pending.next_attempt_at, len(lost)) == (capture.SWEEP_ATTEMPTS, None, 1)  # not again


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_enqueue_each_row_once(reference_data, monkeypatch):
    past = timezone.now() - dt.timedelta(seconds=1)
    rows = CapturePending.objects.bulk_create([
        CapturePending(source="form:x", lead_ids=[i], next_attempt_at=past) for i in range(1, 6)])
    enqueued: list[int] = []
    monkeypatch.setattr(capture, "task_enqueue", lambda func, *a, **kw: enqueued.append(kw["pending_id"]))
    # Both sweeps have taken their rows (under their locks) before either marks them and commits.
    barrier = threading.Barrier(2)
    real_update = CapturePending.objects.bulk_update

    def update_after_both_took(objs, fields, **kw):
        barrier.wait(timeout=10)
        return real_update(objs, fields, **kw)

    monkeypatch.setattr(CapturePending.objects, "bulk_update", update_after_both_took)
    counts, errors = [], []

    def sweep():
        try:
            counts.append(capture.pending_sweep(limit=3))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # One sweep took three rows, the other skipped them and took the other two.
    assert sorted(counts) == [2, 3]
    assert sorted(enqueued) == sorted(r.pk for r in rows)
    assert set(CapturePending.objects.values_list("attempts", flat=True)) == {1}
