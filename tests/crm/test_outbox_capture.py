"""A capture's outbox rows (martech.crm.outbox, ``coalesced``): written in
the transaction of each change, held until the capture's task ends, then
due at once and their drains woken once: the CRM gets the new lead once per
connection, scored and owned. A task that dies leaves them held, due a
minute later or when the capture sweep runs it again. Transactions
really committed, as in the worker."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from martech.crm import outbox
from martech.crm.models import Connection, FieldMapping, OutboxItem
from martech.models import Lead
from tests.martech.test_capture_task import _local_cache, demo_form, post, scored_routing  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reference_data", "scoring_inline")]


def _connections() -> list[Connection]:
    out = []
    for provider, owner in (("hubspot", "hubspot_owner_id"), ("salesforce", "OwnerId")):
        conn = Connection.objects.create(provider=provider, name=provider, is_active=True)
        FieldMapping.objects.create(connection=conn, local_field="email", remote_field="email", kind="text")
        FieldMapping.objects.create(connection=conn, local_field="owner", remote_field=owner, kind="text",
                                    direction="push")
        out.append(conn)
    return out


def _outbox_writes(ctx) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries
            if '"crm_outboxitem"' in q["sql"].split("(")[0] and q["sql"].split()[0] in ("INSERT", "UPDATE")]


@pytest.fixture
def form_capture(demo_form, scored_routing, monkeypatch):
    """Two connections; the capture's task and the drains' wake-ups recorded, not run."""
    conns = _connections()
    tasks: list[tuple] = []
    woken: list[str] = []
    monkeypatch.setattr("martech.services.capture.task_enqueue", lambda func, *args, **kw: tasks.append(args))
    monkeypatch.setattr("martech.taskqueue.wake",
                        lambda func, *args, key, cluster=None: woken.append(key) or True)
    return conns, tasks, woken


def _drains(woken: list[str]) -> list[str]:
    return sorted(k for k in woken if k.startswith("crm.drain:"))


def test_a_forms_rows_are_held_until_its_task_ends_then_due_and_woken_once(form_capture):
    from martech.tasks import capture_process

    conns, tasks, woken = form_capture
    with CaptureQueriesContext(connection) as ctx:
        post({"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    # The request: one statement for the new lead on both connections (two
    # before: the lead, then its stage, in the same transaction).
    assert len(_outbox_writes(ctx)) == 1, _outbox_writes(ctx)
    rows = list(OutboxItem.objects.filter(object="contact", local_id=lead.pk))
    assert sorted(r.connection_id for r in rows) == sorted(c.pk for c in conns)
    hold = timedelta(seconds=outbox.HOLD_SECONDS)
    # Held: no drain takes them before the task scored and routed the lead, and none was woken.
    assert all(r.next_attempt_at > timezone.now() + hold - timedelta(seconds=30) for r in rows)
    assert _drains(woken) == []

    (args,) = tasks
    capture_process(*args)
    pending = OutboxItem.objects.filter(status="pending", object="contact", local_id=lead.pk)
    # Still one row per connection (its version bumped by the task's writes), due now.
    assert pending.count() == 2
    assert all(r.next_attempt_at <= timezone.now() for r in pending)
    assert not OutboxItem.objects.filter(status="pending", next_attempt_at__gt=timezone.now()).exists()
    # The drains woken once per connection, at the task's end.
    assert _drains(woken) == sorted(f"crm.drain:{c.pk}" for c in conns)


def test_a_task_that_dies_leaves_its_rows_held_and_its_rerun_releases_them(form_capture, monkeypatch):
    """The process dies after the task's writes committed, before its end
    (the release is never run): the rows are kept, held a minute (then any
    drain takes them); the capture sweep runs the task again, and its end
    makes them due (the rows of the capture's leads, whatever it changes)."""
    from martech.tasks import capture_process

    conns, tasks, woken = form_capture
    post({"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")
    (args,) = tasks
    release = outbox._release
    monkeypatch.setattr(outbox, "_release", lambda block: 0)  # dies before its end
    capture_process(*args)
    held = OutboxItem.objects.filter(status="pending", object="contact", local_id=lead.pk)
    assert held.count() == 2 and all(r.next_attempt_at > timezone.now() for r in held)
    assert _drains(woken) == []

    monkeypatch.setattr(outbox, "_release", release)
    capture_process(*args)  # the sweep's run: nothing changes any more
    assert all(r.next_attempt_at <= timezone.now() for r in held.all())
    assert _drains(woken) == sorted(f"crm.drain:{c.pk}" for c in conns)


def test_a_task_that_raises_releases_what_it_committed(form_capture, monkeypatch):
    from martech.tasks import capture_process

    conns, tasks, woken = form_capture
    post({"email": "vp@example.com", "title": "VP Sales"})
    lead = Lead.objects.get(email="vp@example.com")

    def boom(**kwargs):
        raise RuntimeError("lifecycle down")

    monkeypatch.setattr("martech.scoring.services.lifecycle_apply", boom)
    (args,) = tasks
    with pytest.raises(RuntimeError):
        capture_process(*args)
    pending = OutboxItem.objects.filter(status="pending", object="contact", local_id=lead.pk)
    assert pending.count() == 2 and all(r.next_attempt_at <= timezone.now() for r in pending)
    assert _drains(woken) == sorted(f"crm.drain:{c.pk}" for c in conns)


def test_the_release_takes_its_rows_in_the_outbox_key_order_and_runs_again_on_a_deadlock(monkeypatch):
    """Two connections' held rows of two leads: one statement makes them due,
    its rows locked in (connection, object, local id) order, enqueue's; a
    deadlock (the database aborting it for a concurrent writer) runs it again."""
    from tests.martech.test_db_retry import conflict

    conns = _connections()
    a, b = (Lead.objects.create(email=f"{n}@example.org").pk for n in "ab")
    OutboxItem.objects.all().delete()
    outbox.enqueue([(c.pk, "contact", pk) for c in conns for pk in (b, a)], hold=True)
    assert not OutboxItem.objects.filter(next_attempt_at__lte=timezone.now()).exists()  # held
    calls: list[str] = []

    def deadlock_once(execute, sql, params, many, context):
        if sql.startswith("UPDATE") and "crm_outboxitem" in sql and not calls:
            calls.append(sql)
            raise conflict("40P01")  # what Django raises for psycopg's DeadlockDetected
        return execute(sql, params, many, context)

    monkeypatch.setattr("martech.db.time.sleep", lambda s: None)
    monkeypatch.setattr("martech.taskqueue.wake", lambda func, *args, key, cluster=None: True)
    with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(deadlock_once):
        assert outbox._release(outbox._Block(lead_ids=(a, b))) == 4
    # The first attempt aborted (PostgreSQL's driver records no text for it), then run again.
    statement = [q["sql"] for q in ctx.captured_queries if q["sql"] and q["sql"].startswith("UPDATE")][-1]
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    assert statement.endswith(f"ORDER BY connection_id, object, local_id{lock})"), statement
    assert len(calls) == 1 and OutboxItem.objects.filter(next_attempt_at__lte=timezone.now()).count() == 4
