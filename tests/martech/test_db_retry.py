"""martech.db: a transaction the database aborted for a concurrent one runs
again, a bounded number of times, at the transaction boundary only; and the
API views, admin writes and tasks that use it."""
from __future__ import annotations

import threading

import pytest
from django.contrib.admin.sites import site
from django.db import IntegrityError, OperationalError, connections, transaction

from martech import db
from martech.models import Lead, LifecycleStage
from tests.factories import LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)


class _DriverError(Exception):
    """Stands for psycopg's error, which carries the SQLSTATE."""

    def __init__(self, sqlstate: str):
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def conflict(sqlstate: str = "40P01") -> OperationalError:
    """What Django raises for a psycopg DeadlockDetected: its own error, the driver's as the cause."""
    try:
        raise OperationalError("deadlock detected") from _DriverError(sqlstate)
    except OperationalError as exc:
        return exc


class Flaky:
    """Raises ``errors`` in turn, then returns "done"; counts the calls."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(db.time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize(("error", "expected"), [
    (conflict("40P01"), True),  # deadlock_detected
    (conflict("40001"), True),  # serialization_failure
    (conflict("55P03"), True),  # lock_not_available
    (conflict("23505"), False),  # unique_violation is not a conflict to retry
    (OperationalError("database is locked"), False),
])
def test_conflicts_are_known_by_their_sqlstate(error, expected):
    assert db.is_conflict(error) is expected


@pytest.mark.django_db(transaction=True)
def test_a_conflict_runs_the_transaction_again_after_a_random_wait(waits):
    fn = Flaky(conflict(), conflict("40001"))
    resets = []
    assert db.run_in_transaction(fn, on_retry=lambda: resets.append(1)) == "done"
    assert (fn.calls, len(resets), len(waits)) == (3, 2, 2)
    # Jittered within a bound that doubles per attempt.
    assert 0 <= waits[0] <= db.JITTER and 0 <= waits[1] <= db.JITTER * 2


@pytest.mark.django_db(transaction=True)
def test_retries_are_bounded(waits):
    fn = Flaky(*[conflict() for _ in range(db.ATTEMPTS + 2)])
    with pytest.raises(OperationalError):
        db.run_in_transaction(fn)
    assert fn.calls == db.ATTEMPTS


@pytest.mark.django_db(transaction=True)
def test_other_errors_are_not_retried(waits):
    fn = Flaky(IntegrityError("duplicate key"))
    with pytest.raises(IntegrityError):
        db.run_in_transaction(fn)
    assert fn.calls == 1 and waits == []


@pytest.mark.django_db(transaction=True)
def test_never_retried_inside_an_outer_transaction(waits):
    fn = Flaky(conflict())
    with pytest.raises(OperationalError):
        with transaction.atomic():
            db.run_in_transaction(fn)
    inner = Flaky(conflict())
    with pytest.raises(OperationalError):
        with transaction.atomic():
            db.retry_on_conflict(inner)()
    assert fn.calls == inner.calls == 1 and waits == []


@pytest.mark.django_db(transaction=True)
def test_the_failed_attempt_is_rolled_back(waits, reference_data):
    attempts = []

    def write():
        lead = LeadFactory(email=f"try{len(attempts)}@example.org")
        attempts.append(lead.pk)
        if len(attempts) == 1:
            raise conflict()
        return lead

    lead = db.run_in_transaction(write)
    assert list(Lead.objects.values_list("email", flat=True)) == [lead.email] == ["try1@example.org"]


@pytest.mark.django_db(transaction=True)
def test_an_api_write_that_hit_a_deadlock_answers_200(token_api, monkeypatch, waits, reference_data):
    from martech.api import views

    lead = LeadFactory(first_name="Old")
    upsert = views.lead_upsert
    flaky = Flaky(conflict())

    def once_deadlocked(**kwargs):
        flaky()  # raises the first time, as PostgreSQL aborting the transaction would
        return upsert(**kwargs)

    monkeypatch.setattr(views, "lead_upsert", once_deadlocked)
    res = token_api("leads:read", "leads:write").patch(f"/api/v1/leads/{lead.pk}", {"first_name": "New"},
                                                       format="json")
    assert res.status_code == 200, res.content
    assert (flaky.calls, Lead.objects.get(pk=lead.pk).first_name) == (2, "New")


@pytest.mark.django_db(transaction=True)
def test_an_admin_save_that_hit_a_deadlock_is_saved(superuser, client, monkeypatch, waits, reference_data):
    from martech.crm.models import Connection, FieldMapping

    connection = Connection.objects.create(provider="hubspot", name="HubSpot")
    admin = site._registry[FieldMapping]
    save = type(admin).save_model
    flaky = Flaky(conflict())

    def once_deadlocked(self, request, obj, form, change):
        flaky()
        return save(self, request, obj, form, change)

    monkeypatch.setattr(type(admin), "save_model", once_deadlocked)
    client.force_login(superuser)
    res = client.post("/admin/crm/fieldmapping/add/", {
        "connection": connection.pk, "object": "contact", "local_field": "first_name", "remote_field": "firstname",
        "direction": "both", "kind": "text", "value_map": "{}", "default": "", "system_of_record": "local"})
    assert res.status_code == 302, res.content[:2000]
    assert flaky.calls == 2
    assert FieldMapping.objects.filter(remote_field="firstname").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_task_that_hit_a_deadlock_runs_again(monkeypatch, waits):
    from martech.crm import services, tasks
    from martech.crm.models import Connection

    Connection.objects.create(provider="hubspot", name="HubSpot")
    drain = Flaky(conflict())

    class Run:
        pushed = 3

    monkeypatch.setattr(services, "outbox_drain", lambda **kwargs: drain() and Run())
    assert tasks.drain_outbox() == {"hubspot": 3}
    assert drain.calls == 2


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_detected_and_both_transactions_commit(reference_data):
    """Two transactions lock two stages in opposite orders: PostgreSQL aborts
    one with DeadlockDetected, which runs again and commits."""
    a, b = LifecycleStage.objects.order_by("pk")[:2]
    barrier = threading.Barrier(2)
    calls = {"ab": 0, "ba": 0}
    errors: list[BaseException] = []

    def lock_both(name: str, first: int, second: int) -> None:
        def work():
            calls[name] += 1
            LifecycleStage.objects.select_for_update().get(pk=first)
            if calls[name] == 1:
                barrier.wait(timeout=10)  # both hold their first row
            LifecycleStage.objects.select_for_update().get(pk=second)

        try:
            db.run_in_transaction(work)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lock_both, args=("ab", a.pk, b.pk)),
               threading.Thread(target=lock_both, args=("ba", b.pk, a.pk))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(calls.values()) == [1, 2]  # one of them was aborted once, and ran again
