"""A full Salesforce pull asks the REST query first: it goes through Bulk
API 2.0 only when the first page's ``totalSize`` exceeds
MARTECH_CRM["SF_BULK_THRESHOLD"], so a small org's full pull costs what an
incremental one does. On the emulator over HTTP (TLS), through the real
client, counting the calls the emulator answered."""
from __future__ import annotations

import datetime as dt

import pytest

from martech.crm.models import SyncCursor
from martech.crm.services import pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

AT = dt.datetime(2026, 11, 30, 3, 0, 0, tzinfo=dt.timezone.utc)


def _calls(salesforce) -> dict[str, int]:
    """The emulator's answered calls by kind (the OAuth token endpoint aside)."""
    out = {"query": 0, "query_more": 0, "jobs": 0, "other": 0}
    for (method, path), n in salesforce.calls.items():
        if "/oauth2/" in path:
            continue
        if "/jobs/" in path:
            out["jobs"] += n
        elif method == "GET" and path.endswith("/query/"):
            out["query"] += n
        elif method == "GET" and "/query/" in path:
            out["query_more"] += n
        else:
            out["other"] += n
    return out


def test_a_one_record_full_pull_costs_what_an_incremental_pull_does(sf_connection, salesforce):
    salesforce.put("Lead", {"Email": "one@example.org", "LastName": "One", "Company": "Solo"}, at=AT)
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.failed, run.error) == (1, 0, "")
    # One REST query per sObject a lead pull reads (Lead, Contact), no Bulk job.
    assert _calls(salesforce) == {"query": 2, "query_more": 0, "jobs": 0, "other": 0}
    assert run.api_calls == 2
    assert Lead.objects.get(email="one@example.org").salesforce_lead_id
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value.startswith("2026-11-30T03:00:00") and "bulk" not in cursor.resume

    # The same org pulled incrementally: the same two calls, nothing applied again.
    before = dict(salesforce.calls)
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.skipped, run.api_calls) == (0, 0, 2)
    assert sum(salesforce.calls.values()) - sum(before.values()) == 2


def test_a_full_pull_over_the_threshold_still_goes_through_bulk(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 50}
    for i in range(60):
        salesforce.put("Lead", {"Email": f"many{i}@example.org", "LastName": f"M{i}", "Company": "Many"},
                       at=AT + dt.timedelta(seconds=i))
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.failed, run.error) == (60, 0, "")
    calls = _calls(salesforce)
    # The first REST page of each sObject told the backlog (60 > 50); the records came by Bulk jobs.
    assert calls["query"] == 2 and calls["query_more"] == 0
    assert sum(n for (m, p), n in salesforce.calls.items() if m == "POST" and p.endswith("/jobs/query")) == 2
    assert Lead.objects.filter(email__startswith="many").exclude(salesforce_lead_id=None).count() == 60


def test_a_full_pull_at_the_threshold_stays_on_rest(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 60}
    for i in range(60):
        salesforce.put("Lead", {"Email": f"edge{i}@example.org", "LastName": f"E{i}", "Company": "Edge"},
                       at=AT + dt.timedelta(seconds=i))
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.failed, run.error) == (60, 0, "")
    assert _calls(salesforce)["jobs"] == 0
