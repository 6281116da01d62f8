"""A pulled page and its position commit together: a pull killed after a
page's writes and before its position was stored leaves neither, so the
next pull applies that page once, not twice. Salesforce REST pages (the
same steps as HubSpot's search windows) and a Bulk API 2.0 job, HubSpot's
list endpoint for a full import; over HTTP through the real clients."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from martech.crm.models import SyncCursor
from martech.crm.services import pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

AT = dt.datetime(2026, 11, 30, 3, 0, 0, tzinfo=dt.timezone.utc)


class Killed(BaseException):
    """Stands for the process being killed (not an error the pull records)."""


@pytest.fixture
def pull_watch(monkeypatch):
    """Every record the pull's pages wrote (by remote id, counted once the
    page's transaction is committed), and a switch that kills the pull when its
    ``n``-th page, its writes done, notes its failures and position."""
    from martech.crm import services
    from martech.crm.services import pull

    real_apply, real_settle = services.pulled_apply_page, pull._pull_failures_settle
    state = {"counts": Counter(), "kill_at": 0, "settles": 0}

    def apply(**kwargs):
        results = real_apply(**kwargs)  # (its transaction committed)
        state["counts"].update(p.remote_id for p in kwargs["page"])
        return results

    def settle(*args, **kwargs):
        state["settles"] += 1
        if state["kill_at"] and state["settles"] == state["kill_at"]:
            raise Killed("killed between a page's writes and its position")
        return real_settle(*args, **kwargs)

    def kill_at(n: int) -> None:
        state["kill_at"], state["settles"] = n, 0

    monkeypatch.setattr(pull, "pulled_apply_page", apply)
    monkeypatch.setattr(pull, "_pull_failures_settle", settle)
    state["kill"] = kill_at
    return state


def _once(counts: Counter, n: int) -> None:
    assert len(counts) == n and set(counts.values()) == {1}, Counter(counts.values())


def _sf_leads(salesforce, n: int) -> None:
    for i in range(n):
        salesforce.put("Lead", {"Email": f"c{i}@example.org", "LastName": f"C{i}", "Company": "Commit"},
                       at=AT + dt.timedelta(seconds=i))


@pytest.mark.parametrize("threshold", [10_000, 100], ids=["rest", "bulk"])
def test_a_salesforce_pull_killed_before_its_position_applies_the_page_once(sf_connection, salesforce, settings,
                                                                            pull_watch, threshold):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": threshold}
    _sf_leads(salesforce, 500)
    pull_watch["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=threshold == 100)
    # The first page is committed with its position; the second's writes went with it.
    assert Lead.objects.filter(email__startswith="c").count() == 200
    first = set(Lead.objects.filter(email__startswith="c").values_list("salesforce_lead_id", flat=True))
    pull_watch["kill"](0)
    pull_watch["counts"].clear()
    run = pull_changes(connection=sf_connection)
    # The rest, each once; none of the committed page again (a page committed
    # without its position would come again: 200 more written, as "skipped").
    assert (run.pulled, run.skipped, run.failed, run.error) == (300, 0, 0, "")
    _once(pull_watch["counts"], 300)
    assert not first & set(pull_watch["counts"])
    assert Lead.objects.filter(email__startswith="c").count() == 500
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value.startswith("2026-11-30T03:08:19") and cursor.resume == {}


def test_a_hubspot_full_import_killed_before_its_position_applies_the_page_once(connection, hubspot, pull_watch):
    for i in range(250):
        hubspot.put("contacts", {"email": f"h{i}@example.org", "firstname": f"H{i}"},
                    at=AT + dt.timedelta(seconds=i))
    pull_watch["kill"](2)
    with pytest.raises(Killed):
        pull_changes(connection=connection, full=True)
    # List pages of 100: the first committed with its ``after``, the second not at all.
    assert Lead.objects.filter(email__startswith="h").count() == 100
    pull_watch["kill"](0)
    pull_watch["counts"].clear()
    run = pull_changes(connection=connection, full=True)
    assert (run.pulled, run.skipped, run.failed, run.error) == (150, 0, 0, "")
    _once(pull_watch["counts"], 150)
    assert Lead.objects.filter(email__startswith="h").count() == 250
    assert "list" not in SyncCursor.objects.get(connection=connection, object="contact").resume
