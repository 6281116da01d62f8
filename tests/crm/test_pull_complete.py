"""Complete, restartable pulls: HubSpot's search behind its 10,000-result
cap (windows restarted at the last time seen, ties split by id), the list
endpoint for full imports, Salesforce's whole-second SystemModstamp read
inclusively with the ties kept beside the cursor, and a pull killed mid-way
resuming from its last committed page. Over HTTP through the real clients."""
from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command

from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.models import SyncCursor, SyncRun
from martech.crm.services import PULL_COMMIT_EVERY, pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

BASE = dt.datetime(2026, 1, 5, 9, 0, 0, tzinfo=dt.timezone.utc)


def _seed_contacts(hubspot, n: int, *, shared: range | list[range] = range(0), at=BASE) -> None:
    """``n`` contacts, one millisecond apart, except those in ``shared`` (a
    range or several), which all carry the first of their range's times (a
    mass update)."""
    groups = [shared] if isinstance(shared, range) else shared
    for i in range(n):
        ms = next((g.start for g in groups if i in g), i)
        hubspot.put("contacts", {"email": f"c{i}@example.org", "firstname": f"C{i}"},
                    at=at + dt.timedelta(milliseconds=ms))


def _searches(hubspot) -> list[dict]:
    return [body for method, path, body in hubspot.requests if path == "/crm/v3/objects/contacts/search"]


def test_contacts_behind_the_real_10000_cap_all_pulled_once(connection, hubspot):
    # 25,000 at HubSpot's own cap (bench/crm_sync.py pulls 100,000 the same way).
    # 600 contacts share one lastmodifieddate across the 10,000th result, and
    # 600 more across the last result of the second window (its 10,000th).
    n = 25_000
    _seed_contacts(hubspot, n, shared=[range(9_700, 10_300), range(19_400, 20_000)])
    run = pull_changes(connection=connection)
    assert run.error == ""
    # Every one applied exactly once: each application counts as pulled or skipped.
    assert (run.pulled, run.skipped, run.failed) == (n, 0, 0)
    assert Lead.objects.count() == n
    assert Lead.objects.exclude(hubspot_id="").count() == n
    searches = _searches(hubspot)
    # No page ever asked past the cap (the emulator answers 400 there, like HubSpot).
    assert all(int(b["after"]) + b["limit"] <= 10_000 for b in searches)
    # The windows restarted at the last time seen, inclusively: the second
    # window's 10,000th result falls inside the second tie, so it restarts
    # at that tie's time, and those of the tie read before are skipped by id.
    restarts = [b["filterGroups"][0]["filters"][0] for b in searches if b["after"] == "0" and b["filterGroups"]]
    assert restarts == [
        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": "2026-01-05T09:00:09.700Z"},
        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": "2026-01-05T09:00:19.400Z"},
    ]
    assert len(searches) <= n // 100 + 10  # the restarts cost a few pages more, not a second pass
    cursor = SyncCursor.objects.get(connection=connection, object="contact")
    assert cursor.value == "2026-01-05T09:00:24.999Z" and list(cursor.seen) == [hubspot.by_email["c24999@example.org"]]

    # The next pull reads the cursor's tie again and applies nothing: one search call.
    before = len(hubspot.requests)
    run = pull_changes(connection=connection)
    assert (run.pulled, run.skipped, run.api_calls) == (0, 0, 1)
    assert len(hubspot.requests) == before + 1


def test_more_records_in_one_millisecond_than_the_cap_are_read_by_id_ranges(connection, hubspot, monkeypatch):
    # A cap of 1,000 stands in for 10,000; 1,500 contacts share one millisecond.
    hubspot.search_cap = 1_000
    monkeypatch.setattr(HubSpotConnector, "search_cap", 1_000)
    _seed_contacts(hubspot, 2_500, shared=range(400, 1_900))
    run = pull_changes(connection=connection)
    assert run.error == ""
    assert (run.pulled, run.skipped) == (2_500, 0)
    assert Lead.objects.count() == 2_500
    by_id = [b for b in _searches(hubspot) if b["sorts"] == ["hs_object_id"]]
    assert by_id, "the tie larger than the cap was read by hs_object_id ranges"
    assert {f["operator"] for b in by_id for f in b["filterGroups"][0]["filters"]} == {"EQ", "GT"}
    assert all(int(b["after"]) + b["limit"] <= 1_000 for b in _searches(hubspot))


def test_a_late_record_at_the_cursors_millisecond_is_pulled_and_an_edit_of_a_tie_too(connection, hubspot):
    at = BASE + dt.timedelta(seconds=1)
    for i in range(3):
        hubspot.put("contacts", {"email": f"t{i}@example.org", "firstname": "T"}, at=at)
    assert pull_changes(connection=connection).pulled == 3
    # One more arrives with the same time (search's index caught up late), and
    # one of the three is edited without its time moving.
    hubspot.put("contacts", {"email": "late@example.org"}, at=at)
    hubspot.put("contacts", {"email": "t1@example.org", "firstname": "Edited"}, at=at)
    run = pull_changes(connection=connection)
    assert (run.pulled, run.skipped) == (2, 0)
    assert Lead.objects.get(email="t1@example.org").first_name == "Edited"
    assert pull_changes(connection=connection).pulled == 0


class Killed(BaseException):
    """Stands for the worker being killed: nothing after it runs in the pull.
    A BaseException, like the SystemExit of a stopped worker: the services'
    crash recording (``except Exception``) does not swallow it."""


def _kill_after(monkeypatch, method: str, calls: int) -> None:
    original = getattr(HubSpotConnector, method)
    count = {"n": 0}

    def wrapped(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise Killed(f"killed at call {count['n']}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HubSpotConnector, method, wrapped)


def test_a_pull_killed_after_page_k_resumes_at_page_k_plus_1(connection, hubspot, monkeypatch):
    _seed_contacts(hubspot, 1_000)
    k = 4
    with monkeypatch.context() as patch:
        _kill_after(patch, "_search", k)
        with pytest.raises(Killed):
            pull_changes(connection=connection)
    first = SyncRun.objects.get()
    assert first.pulled == k * PULL_COMMIT_EVERY == Lead.objects.count()
    cursor = SyncCursor.objects.get(connection=connection, object="contact")
    last = f"c{k * PULL_COMMIT_EVERY - 1}@example.org"
    assert cursor.value == hubspot.find("contacts", last)["properties"]["lastmodifieddate"]
    assert list(cursor.seen) == [hubspot.by_email[last]]

    start = len(hubspot.requests)
    run = pull_changes(connection=connection)
    # Started from page k's last record (inclusive, skipped as applied) and applied the rest once.
    first = next(body for _, path, body in hubspot.requests[start:] if path.endswith("/search"))
    assert first["filterGroups"][0]["filters"][0] == {"propertyName": "lastmodifieddate", "operator": "GTE",
                                                      "value": cursor.value}
    assert (run.pulled, run.skipped) == (1_000 - k * PULL_COMMIT_EVERY, 0)
    assert Lead.objects.count() == 1_000


def test_crm_sync_full_imports_past_the_cap_through_the_list_endpoint(connection, hubspot):
    # 11,000: past the search cap, which the list endpoint does not have.
    _seed_contacts(hubspot, 11_000, shared=range(9_700, 10_300))
    out = StringIO()
    call_command("crm_sync", "--provider", "hubspot", "--object", "contact", "--full", "--no-push", stdout=out)
    line = json.loads(out.getvalue().splitlines()[-1])
    assert (line["object"], line["pulled"], line["skipped"], line["error"]) == ("contact", 11_000, 0, "")
    assert Lead.objects.count() == 11_000
    assert not _searches(hubspot)  # no search, no cap: GET /crm/v3/objects/contacts pages
    lists = [p for m, p, _ in hubspot.requests if m == "GET" and p == "/crm/v3/objects/contacts"]
    assert len(lists) == 110 and line["api_calls"] == 110
    cursor = SyncCursor.objects.get(connection=connection, object="contact")
    # Done: nothing to resume, and the incremental pull takes over from the import's start.
    assert cursor.resume == {} and cursor.value > "2026-01-05T09:00:11"
    assert pull_changes(connection=connection).pulled == 0


def test_a_killed_full_import_resumes_at_its_next_page(connection, hubspot, monkeypatch):
    _seed_contacts(hubspot, 750)
    with monkeypatch.context() as patch:
        _kill_after(patch, "_read_associations", 3)  # called once per list page
        with pytest.raises(Killed):
            pull_changes(connection=connection, full=True)
    assert Lead.objects.count() == 300
    state = SyncCursor.objects.get(connection=connection, object="contact").resume["list"]
    assert state["after"] == hubspot.by_email["c299@example.org"]
    start = len(hubspot.requests)
    run = pull_changes(connection=connection, full=True)
    assert (run.pulled, run.skipped, run.api_calls) == (450, 0, 5)
    first_get = next(p for m, p, _ in hubspot.requests[start:] if m == "GET")
    assert first_get == "/crm/v3/objects/contacts"
    assert Lead.objects.count() == 750
    assert SyncCursor.objects.get(connection=connection, object="contact").resume == {}


# --- Salesforce ----------------------------------------------------------------

SECOND = dt.datetime(2026, 11, 30, 3, 0, 0, tzinfo=dt.timezone.utc)


def _leads(salesforce, n: int, *, start: int = 0, at=SECOND) -> None:
    for i in range(start, start + n):
        salesforce.put("Lead", {"Email": f"m{i}@example.org", "LastName": f"M{i}", "Company": "Mass"}, at=at)


def test_1200_salesforce_leads_in_one_second_all_pulled_and_not_again(sf_connection, salesforce):
    salesforce.query_page_size = 500  # the ties span pages
    # A mass update is under way when the pull runs: 1,152 written, then 48 more in the same second.
    _leads(salesforce, 1_152, at=SECOND + dt.timedelta(milliseconds=200))
    assert all(r["SystemModstamp"] == "2026-11-30T03:00:00.000+0000" for r in salesforce.find("Lead"))
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.failed) == (1_152, 0)
    _leads(salesforce, 48, start=1_152, at=SECOND + dt.timedelta(milliseconds=900))
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.skipped) == (48, 0)  # none of the 1,152 again, none of the 48 lost
    assert Lead.objects.filter(email__startswith="m").count() == 1_200
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value == "2026-11-30T03:00:00.000+0000" and len(cursor.seen) == 1_200
    # A second pull at the same second: nothing again.
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.skipped, run.failed) == (0, 0, 0)
