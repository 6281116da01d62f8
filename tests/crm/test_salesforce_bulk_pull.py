"""Large Salesforce backfills through Bulk API 2.0 query jobs: the
emulator's documented job states, CSV result sets with Sforce-Locator and
Sforce-NumberOfRecords, refusals; the connector's use of them through
simple-salesforce's bulk2 client for a full pull or a backlog over
MARTECH_CRM["SF_BULK_THRESHOLD"], with the cursor's tie rule and a killed
backfill resuming its job. Over HTTP (TLS) through the real client."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import requests

from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import SyncCursor
from martech.crm.services import pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

SECOND = dt.datetime(2026, 11, 30, 3, 0, 0, tzinfo=dt.timezone.utc)
STAMP = "2026-11-30T03:00:00.000+0000"


class Killed(BaseException):
    """Stands for the process being killed (not an error the pull records)."""


def _leads(salesforce, n: int, *, start: int = 0, at=SECOND) -> None:
    for i in range(start, start + n):
        salesforce.put("Lead", {"Email": f"b{i}@example.org", "LastName": f"B{i}", "Company": "Mass"}, at=at)


def _query_more(salesforce) -> int:
    """REST query pages after the first (GET query/<locator>)."""
    return sum(n for (m, path), n in salesforce.calls.items() if m == "GET" and "/query/" in path
               and not path.endswith("/query/") and "/jobs/" not in path)


def _job_creations(salesforce) -> int:
    return sum(n for (m, path), n in salesforce.calls.items() if m == "POST" and path.endswith("/jobs/query"))


def _rest_queries(salesforce) -> int:
    """REST query first pages (GET query/?q=)."""
    return sum(n for (m, path), n in salesforce.calls.items() if m == "GET" and path.endswith("/query/"))


# --- the emulator follows the documented API -----------------------------------

def _api(salesforce, method: str, path: str, version: str = "59.0", **kwargs) -> requests.Response:
    from django.conf import settings

    conf = settings.MARTECH_CRM
    return requests.request(method, f"{conf['SALESFORCE_URL']}/services/data/v{version}/{path}",
                            headers={"Authorization": f"Bearer {conf['SALESFORCE_ACCESS_TOKEN']}"},
                            verify=conf["SALESFORCE_CA_CERT"], timeout=10, **kwargs)


def test_emulator_query_job_states_result_sets_and_refusals(salesforce):
    _leads(salesforce, 5)
    refused = _api(salesforce, "POST", "jobs/query",
                   json={"operation": "query", "query": "SELECT Id FROM Lead ORDER BY SystemModstamp"})
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "INVALIDJOB"
    job = _api(salesforce, "POST", "jobs/query",
               json={"operation": "query", "query": "SELECT Id, Email, SystemModstamp FROM Lead"}).json()
    assert job["state"] == "UploadComplete" and job["id"].startswith("750")
    # Results exist only once the job is complete.
    early = _api(salesforce, "GET", f"jobs/query/{job['id']}/results")
    assert early.status_code == 400
    assert _api(salesforce, "GET", f"jobs/query/{job['id']}").json()["state"] == "InProgress"
    assert _api(salesforce, "GET", f"jobs/query/{job['id']}").json()["state"] == "JobComplete"
    # Another API version than the job's: 409.
    assert _api(salesforce, "GET", f"jobs/query/{job['id']}/results", version="58.0").status_code == 409
    first = _api(salesforce, "GET", f"jobs/query/{job['id']}/results", params={"maxRecords": 3})
    assert first.headers["Sforce-NumberOfRecords"] == "3"
    lines = first.text.splitlines()
    assert lines[0] == '"Id","Email","SystemModstamp"' and len(lines) == 4
    assert lines[1].endswith('"2026-11-30T03:00:00.000Z"')  # Bulk's date-times end in Z
    second = _api(salesforce, "GET", f"jobs/query/{job['id']}/results",
                  params={"maxRecords": 3, "locator": first.headers["Sforce-Locator"]})
    assert second.headers["Sforce-NumberOfRecords"] == "2" and second.headers["Sforce-Locator"] == "null"
    # A locator can be read again while the job exists; not once it is deleted.
    again = _api(salesforce, "GET", f"jobs/query/{job['id']}/results",
                 params={"maxRecords": 3, "locator": first.headers["Sforce-Locator"]})
    assert again.text == second.text
    assert _api(salesforce, "DELETE", f"jobs/query/{job['id']}").status_code == 204
    assert _api(salesforce, "GET", f"jobs/query/{job['id']}/results").status_code == 404


# --- the connector and the pull --------------------------------------------------

def test_a_full_pull_reads_1200_leads_of_one_second_through_one_bulk_job(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 1_000}
    _leads(salesforce, 1_200, at=SECOND + dt.timedelta(milliseconds=300))
    salesforce.put("Contact", {"Email": "person@example.org", "LastName": "Person"}, at=SECOND)
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.failed, run.error) == (1_201, 0, "")
    assert Lead.objects.filter(email__startswith="b").exclude(salesforce_lead_id=None).count() == 1_200
    assert Lead.objects.get(email="person@example.org").salesforce_contact_id
    # One job per sObject (Lead, Contact), after the first REST page of each told the backlog; no page after it.
    assert _job_creations(salesforce) == 2 and _rest_queries(salesforce) == 2 and _query_more(salesforce) == 0
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value == STAMP and len(cursor.seen) == 1_201 and "bulk" not in cursor.resume
    # The incremental pull reads the second again and applies none of them ...
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.skipped, run.failed) == (0, 0, 0)
    # ... but a record written later in that same second is not lost.
    _leads(salesforce, 1, start=5_000, at=SECOND + dt.timedelta(milliseconds=900))
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.skipped) == (1, 0)
    assert Lead.objects.filter(email="b5000@example.org").exists()


def test_a_backlog_over_the_threshold_goes_through_bulk(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 1_000}
    salesforce.query_page_size = 500
    _leads(salesforce, 1_200)
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.failed, run.error) == (1_200, 0, "")
    # The first REST page of each sObject told the backlog (its totalSize); no page after it.
    assert _rest_queries(salesforce) == 2 and _query_more(salesforce) == 0
    assert _job_creations(salesforce) == 2
    # Under the threshold the REST query pages do it, with no job; the 1,200
    # ties at the cursor, applied before, do not count as backlog.
    _leads(salesforce, 30, start=2_000, at=SECOND + dt.timedelta(seconds=5))
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.failed) == (30, 0)
    assert _job_creations(salesforce) == 2


def test_a_killed_backfill_resumes_its_job_at_the_next_page(sf_connection, salesforce, monkeypatch, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 1_000}
    _leads(salesforce, 1_200)
    connector = SalesforceConnector(sf_connection)
    connector.bulk_page = 500  # result sets of 500: the 1,200 Leads take three
    from martech.crm import services
    from martech.crm.services import pull

    pages = {"n": 0}
    real_apply = services.pulled_apply_page

    def die_on_page_5(**kwargs):
        pages["n"] += 1
        if pages["n"] == 5:
            raise Killed("killed while applying page 5")
        return real_apply(**kwargs)

    monkeypatch.setattr(pull, "pulled_apply_page", die_on_page_5)
    with pytest.raises(Killed):
        pull_changes(connection=sf_connection, full=True, connector=connector)
    # Four pages committed (200, 200 and the 100 left of the first result
    # set, then 200 of the second); the position waits beside the cursor, which has not moved.
    assert Lead.objects.filter(email__startswith="b").count() == 700
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    token = json.loads(cursor.resume["bulk"]["token"])
    assert (token["target"], token["skip"]) == ("Lead", 200) and cursor.value == ""
    jobs = _job_creations(salesforce)

    monkeypatch.setattr(pull, "pulled_apply_page", real_apply)
    connector = SalesforceConnector(sf_connection)
    connector.bulk_page = 500
    run = pull_changes(connection=sf_connection, connector=connector)  # the scheduled pull goes on with it
    assert (run.pulled, run.failed, run.error) == (500, 0, "")
    assert Lead.objects.filter(email__startswith="b").count() == 1_200
    # The Lead job went on (no second Lead job); only the Contact job is new.
    assert _job_creations(salesforce) == jobs + 1
    cursor.refresh_from_db()
    assert cursor.value == STAMP and len(cursor.seen) == 1_200 and "bulk" not in cursor.resume


def test_a_failed_job_is_the_runs_error_and_the_cursor_stays(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SF_BULK_THRESHOLD": 5}
    _leads(salesforce, 10)
    salesforce.fail_next_query_job = True
    run = pull_changes(connection=sf_connection, full=True)
    assert "Bulk API" in run.error and run.pulled == 0
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value == "" and "bulk" not in (cursor.resume or {})
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.error) == (10, "")
