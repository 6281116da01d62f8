"""A Salesforce full pull killed mid-way and run again, on the REST path, on
the Bulk API 2.0 path, and across the switch from one to the other (the
rerun's backlog from where the REST pull stopped is over
MARTECH_CRM["SF_BULK_THRESHOLD"]): every record applied exactly once,
nothing lost, and no REST resume position left behind for a later full pull
to start from. On the emulator over HTTP (TLS), through the real client."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import SyncCursor
from martech.crm.services import pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

AT = dt.datetime(2026, 11, 30, 3, 0, 0, tzinfo=dt.timezone.utc)


class Killed(BaseException):
    """Stands for the process being killed (not an error the pull records)."""


def _leads(salesforce, n: int, *, start: int = 0) -> None:
    # One second each: the REST pull's position moves page by page.
    for i in range(start, start + n):
        salesforce.put("Lead", {"Email": f"k{i}@example.org", "LastName": f"K{i}", "Company": "Kill"},
                       at=AT + dt.timedelta(seconds=i))


@pytest.fixture
def applied(monkeypatch):
    """Every record a page applied (by remote id), and a switch to kill the
    pull while it applies its ``kill_at``-th page (counted from the switch)."""
    from martech.crm import services
    from martech.crm.services import pull

    real = services.pulled_apply_page
    state = {"counts": Counter(), "kill_at": 0, "pages": 0}

    def apply(**kwargs):
        state["pages"] += 1
        if state["kill_at"] and state["pages"] == state["kill_at"]:
            raise Killed(f"killed while applying page {state['pages']}")
        results = real(**kwargs)
        state["counts"].update(p.remote_id for p in kwargs["page"])
        return results

    def kill_at(n: int) -> None:
        state["kill_at"], state["pages"] = n, 0

    monkeypatch.setattr(pull, "pulled_apply_page", apply)
    state["kill"] = kill_at
    return state


def _connector(sf_connection) -> SalesforceConnector:
    connector = SalesforceConnector(sf_connection)
    connector.bulk_page = 300  # Bulk result sets of 300 rows
    return connector


def _cursor(sf_connection) -> SyncCursor:
    return SyncCursor.objects.get(connection=sf_connection, object="contact")


def _jobs(salesforce) -> int:
    return sum(n for (m, path), n in salesforce.calls.items() if m == "POST" and path.endswith("/jobs/query"))


def test_a_killed_rest_full_pull_resumes_at_its_next_page(sf_connection, salesforce, settings, applied):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 1_000}
    _leads(salesforce, 500)
    applied["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert Lead.objects.filter(email__startswith="k").count() == 200
    assert "rescan" in _cursor(sf_connection).resume
    applied["kill"](0)
    run = pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert (run.pulled, run.failed, run.error) == (300, 0, "")
    assert len(applied["counts"]) == 500 and set(applied["counts"].values()) == {1}
    assert _jobs(salesforce) == 0
    cursor = _cursor(sf_connection)
    assert "rescan" not in cursor.resume and cursor.value.startswith("2026-11-30T03:08:19")


def test_a_killed_bulk_full_pull_resumes_its_job(sf_connection, salesforce, settings, applied):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 100}
    _leads(salesforce, 500)
    applied["kill"](3)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    # Pages of 200 and the 100 left of the first result set of 300 committed.
    assert Lead.objects.filter(email__startswith="k").count() == 300
    assert "bulk" in _cursor(sf_connection).resume
    applied["kill"](0)
    run = pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert (run.pulled, run.failed, run.error) == (200, 0, "")
    assert len(applied["counts"]) == 500 and set(applied["counts"].values()) == {1}
    cursor = _cursor(sf_connection)
    assert cursor.resume == {} and cursor.value.startswith("2026-11-30T03:08:19")


def test_a_killed_rest_full_pull_that_goes_on_through_bulk(sf_connection, salesforce, settings, applied):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 300}
    _leads(salesforce, 250)
    # Under the threshold: REST, killed while applying its second page (the first, 200, committed).
    applied["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert Lead.objects.filter(email__startswith="k").count() == 200 and _jobs(salesforce) == 0
    # Meanwhile 400 more change: from where the REST pull stopped the backlog is 450, over 300.
    _leads(salesforce, 400, start=250)
    # The rerun goes through Bulk from that position (not from the start), killed again mid-way ...
    applied["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert _jobs(salesforce) == 1
    resume = _cursor(sf_connection).resume
    assert "bulk" in resume and "rescan" not in resume
    # ... and resumed: the job goes on (no new Lead job), each record applied once in all.
    applied["kill"](0)
    run = pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert (run.failed, run.error) == (0, "")
    assert _jobs(salesforce) == 2  # the Contact job only
    assert len(applied["counts"]) == 650 and set(applied["counts"].values()) == {1}
    assert Lead.objects.filter(email__startswith="k").exclude(salesforce_lead_id=None).count() == 650
    cursor = _cursor(sf_connection)
    assert cursor.resume == {} and cursor.value.startswith("2026-11-30T03:10:49")

    # A later full pull (on REST: under a higher threshold) reads every record
    # again from the beginning, not from a REST position the switch left behind.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 10_000}
    applied["counts"].clear()
    run = pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert (run.failed, run.error) == (0, "")
    assert len(applied["counts"]) == 650 and set(applied["counts"].values()) == {1}
    assert _cursor(sf_connection).resume == {}


def test_a_full_pull_does_not_go_on_with_an_incremental_backfill(sf_connection, salesforce, settings, applied):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 100}
    _leads(salesforce, 300)
    # An incremental pull from nothing: a backfill (from the cursor), killed on its second page.
    applied["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, connector=_connector(sf_connection))
    assert "bulk" in _cursor(sf_connection).resume and not _cursor(sf_connection).resume["bulk"].get("full")
    # A full pull reads every record from the beginning through a job of its own
    # (that backfill's range is inside it), not only what the backfill had left.
    applied["kill"](0)
    applied["counts"].clear()
    run = pull_changes(connection=sf_connection, full=True, connector=_connector(sf_connection))
    assert (run.pulled + run.skipped, run.failed, run.error) == (300, 0, "")
    assert len(applied["counts"]) == 300 and set(applied["counts"].values()) == {1}
    assert Lead.objects.filter(email__startswith="k").count() == 300
    cursor = _cursor(sf_connection)
    assert cursor.resume == {} and cursor.value.startswith("2026-11-30T03:04:59")
