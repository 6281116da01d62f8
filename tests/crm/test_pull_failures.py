"""Pulled records that fail: kept per record (PullFailure), fetched again in
batch by the next pulls of their type, dead after MAX_ATTEMPTS, shown and
retried in the admin. Against the emulators over HTTP."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.utils import timezone

from martech.crm import services, tasks
from martech.crm.models import FieldMapping, PullFailure, SyncRun
from martech.crm.services import _errors_summary, failures, links_pull, outbox_drain, pull_changes
from martech.models import Lead, SalesTask

pytestmark = pytest.mark.django_db
BATCH_READ_TASKS = ("POST", "/crm/v3/objects/tasks/batch/read")


def _due_now():
    PullFailure.objects.filter(status="pending").update(next_attempt_at=timezone.now())


@pytest.fixture
def slow_backoff(settings):
    """A backoff of minutes (the emulator fixtures shorten it for the HTTP
    retries): a failure is not due again within the test unless made so."""
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_BASE": 1.0}


def _calls(hubspot, start: int) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in hubspot.requests[start:]]


# --- HubSpot: a task pulled before its contact ----------------------------------

def test_task_pulled_before_its_contact_is_recorded_then_created_by_the_retry(task_mappings, hubspot,
                                                                             slow_backoff):
    contact = hubspot.put_contact({"email": "ann@example.org", "firstname": "Ann"})
    made = hubspot.put("tasks", {"hs_task_subject": "Call Ann", "hs_task_status": "NOT_STARTED",
                                 "hs_timestamp": "2026-12-03T15:00:00Z"})
    hubspot.associate("tasks", made["id"], "contacts", contact["id"])

    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.pulled, run.failed, run.retried) == (0, 1, 0)
    assert run.error.startswith(f"{made['id']}: ") and "'lead'" in run.error
    failure = PullFailure.objects.get()
    assert (failure.object, failure.remote_id, failure.status, failure.attempts) == ("task", made["id"], "pending", 1)
    assert "lead" in failure.error and "no contact" in failure.error
    assert failure.next_attempt_at > timezone.now() + dt.timedelta(seconds=50)  # BACKOFF_BASE minutes
    assert not SalesTask.objects.exists()

    # Not due yet: the next pull leaves it alone (and the task did not change in HubSpot).
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.retried, run.failed, run.api_calls) == (0, 0, 1)

    assert pull_changes(connection=task_mappings, obj="contact").pulled == 1
    _due_now()
    start = len(hubspot.requests)
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.retried, run.recovered, run.pulled, run.failed, run.error) == (1, 1, 1, 0, "")
    # One batch read, one association read, then the incremental search: no read per record.
    assert _calls(hubspot, start) == [BATCH_READ_TASKS, ("POST", "/crm/v4/associations/tasks/contacts/batch/read"),
                                      ("POST", "/crm/v3/objects/tasks/search")]
    assert run.api_calls == 3
    task = SalesTask.objects.get()
    assert (task.subject, task.lead.email, task.hubspot_id) == ("Call Ann", "ann@example.org", made["id"])
    failure.refresh_from_db()
    assert (failure.status, failure.resolved_at is not None) == ("resolved", True)

    # Nothing left to retry; a full pull takes the task again without a second one.
    run = pull_changes(connection=task_mappings, obj="task", full=True)
    assert (run.retried, run.failed) == (0, 0)
    assert SalesTask.objects.count() == 1 and PullFailure.objects.count() == 1


def test_retry_reads_many_failures_in_one_call(task_mappings, hubspot, slow_backoff):
    made = [hubspot.put("tasks", {"hs_task_subject": f"T{i}", "hs_timestamp": "2026-12-03T15:00:00Z"})
            for i in range(3)]
    assert pull_changes(connection=task_mappings, obj="task").failed == 3
    _due_now()
    start = len(hubspot.requests)
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.retried, run.recovered, run.failed) == (3, 0, 3)
    assert _calls(hubspot, start).count(BATCH_READ_TASKS) == 1 and run.api_calls == 3
    (_, _, body) = next(r for r in hubspot.requests[start:] if (r[0], r[1]) == BATCH_READ_TASKS)
    assert sorted(i["id"] for i in body["inputs"]) == sorted(m["id"] for m in made)
    assert set(PullFailure.objects.values_list("attempts", flat=True)) == {2}


def test_retried_record_deleted_in_the_crm_is_resolved_with_why(task_mappings, hubspot, slow_backoff):
    made = hubspot.put("tasks", {"hs_task_subject": "Gone", "hs_timestamp": "2026-12-03T15:00:00Z"})
    pull_changes(connection=task_mappings, obj="task")
    del hubspot.tasks[made["id"]]
    _due_now()
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.retried, run.recovered, run.failed) == (1, 0, 0)
    failure = PullFailure.objects.get()
    assert failure.status == "resolved" and failure.error.startswith("No longer in the CRM. Last error: {'lead'")


# --- every failure kept, once per record ----------------------------------------

def test_two_failures_in_one_run_keep_both_errors_and_a_rerun_adds_no_row(connection, hubspot, slow_backoff):
    connection.mappings.create(local_field="properties.employees", remote_field="numemployees", kind="number")
    bad = [hubspot.put_contact({"email": f"bad{i}@example.org", "numemployees": f"many{i}"}) for i in range(2)]
    hubspot.put_contact({"email": "good@example.org", "numemployees": "12"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed) == (1, 2)
    for record in bad:
        assert f"{record['id']}: " in run.error
    assert "many0" in run.error and "many1" in run.error
    rows = {f.remote_id: f for f in PullFailure.objects.all()}
    assert set(rows) == {r["id"] for r in bad}
    assert all("properties.employees" in f.error and "not a number" in f.error for f in rows.values())

    # Pulled again (full): the same rows, one more attempt each.
    run = pull_changes(connection=connection, full=True)
    assert run.failed == 2 and PullFailure.objects.count() == 2
    assert set(PullFailure.objects.values_list("attempts", flat=True)) == {2}
    # Changed in HubSpot and still wrong: the same row, the newest error.
    hubspot.put_contact({"email": "bad0@example.org", "numemployees": "lots"})
    run = pull_changes(connection=connection)
    assert run.failed == 1 and PullFailure.objects.count() == 2
    row = PullFailure.objects.get(remote_id=bad[0]["id"])
    assert row.attempts == 3 and "lots" in row.error
    # Fixed in HubSpot: the incremental pull resolves it, no retry needed.
    hubspot.put_contact({"email": "bad0@example.org", "numemployees": "40"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed, run.retried, run.recovered) == (1, 0, 0, 0)
    row.refresh_from_db()
    assert row.status == "resolved"
    assert Lead.objects.get(email="bad0@example.org").properties["employees"] == "40"


def test_run_error_summary_keeps_every_failure_it_can_and_counts_the_rest():
    errors = [f"{i:04d}: {{'x': ['{'bad ' * 20}']}}" for i in range(100)]
    text = _errors_summary(errors)
    assert len(text) <= 2000 and text.startswith("0000: ")
    shown = text.count("'x'")
    assert text.endswith(f"; ... and {100 - shown} more (see pull failures)") and shown > 10
    assert _errors_summary(["a", "b"]) == "a; b"


# --- Salesforce: an invalid value, dead after N attempts, retried from the admin ---

@pytest.fixture
def sf_employees(sf_connection, salesforce, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "MAX_ATTEMPTS": 3, "BACKOFF_BASE": 1.0}
    # A custom field of the org (a text field holding a count, so "many" can be in it).
    salesforce.add_field("Lead", "Employees__c", label="Employees")
    salesforce.add_field("Contact", "Employees__c", label="Employees")
    sf_connection.mappings.create(local_field="properties.employees", remote_field="Employees__c", kind="number",
                                  direction="pull")
    return sf_connection


def test_invalid_salesforce_value_is_retried_then_dead_and_the_admin_brings_it_back(
        sf_employees, salesforce, client, marketing_ops, analyst, monkeypatch, django_capture_on_commit_callbacks):
    lead = salesforce.put("Lead", {"LastName": "Ray", "Company": "Acme", "Email": "ray@example.org",
                                   "Employees__c": "many"})
    run = pull_changes(connection=sf_employees)
    assert run.failed == 1 and lead["Id"] in run.error
    failure = PullFailure.objects.get()
    assert (failure.object, failure.remote_id, failure.attempts) == ("contact", lead["Id"], 1)
    queries: list[str] = []
    query = salesforce.query
    monkeypatch.setattr(salesforce, "query", lambda soql, version: queries.append(soql) or query(soql, version))
    for attempt in (2, 3):
        _due_now()
        del queries[:]
        run = pull_changes(connection=sf_employees)
        # The failure by id (one SOQL), then Leads and Contacts changed since the cursor.
        assert (run.retried, run.recovered, run.failed, run.api_calls) == (1, 0, 1, 3)
        assert [q for q in queries if "Id IN" in q] == [queries[0]] and f"Id IN ('{lead['Id']}')" in queries[0]
        failure.refresh_from_db()
        assert failure.attempts == attempt
    assert failure.status == "dead"
    PullFailure.objects.update(next_attempt_at=timezone.now() - dt.timedelta(hours=1))
    run = pull_changes(connection=sf_employees)
    assert (run.retried, run.failed) == (0, 0)  # dead: no longer retried by the pulls
    assert not Lead.objects.exists()

    # The health page and the list show it with the CRM's error text.
    client.force_login(marketing_ops)
    health = client.get(f"/admin/crm/connection/{sf_employees.pk}/health/")
    assert (health.context["health"]["pull_failures_dead"], health.context["health"]["pull_failures_pending"]) == (1, 0)
    assert health.context["health"]["pull_failures"] == [
        {"object": "contact", "label": "Contact / Lead", "pending": 0, "dead": 1}]
    assert 'id="pull-failures"' in health.content.decode()
    url = "/admin/crm/pullfailure/"
    page = client.get(url, {"status__exact": "dead", "connection__id__exact": sf_employees.pk, "object": "contact"})
    html = page.content.decode()
    assert page.status_code == 200 and lead["Id"] in html and "properties.employees" in html and "many" in html

    queued: list[tuple[int, str]] = []
    monkeypatch.setattr(failures, "_enqueue_pull", lambda c, k: queued.append((c, k)))
    # Analysts look, they do not retry.
    client.force_login(analyst)
    client.post(url, {"action": "retry_pull_failures", "_selected_action": [failure.pk], "apply": "1"})
    failure.refresh_from_db()
    assert failure.status == "dead" and not queued
    client.force_login(marketing_ops)
    confirm = client.post(url, {"action": "retry_pull_failures", "_selected_action": [failure.pk]})
    assert confirm.status_code == 200 and b"Yes, retry" in confirm.content
    failure.refresh_from_db()
    assert failure.status == "dead"  # nothing before the confirmation
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url, {"action": "retry_pull_failures", "_selected_action": [failure.pk], "apply": "1"})
    failure.refresh_from_db()
    assert (failure.status, failure.attempts) == ("pending", 0) and failure.next_attempt_at <= timezone.now()
    assert queued == [(sf_employees.pk, "contact")]
    assert LogEntry.objects.filter(object_id=str(failure.pk), change_message="Retried pull failure").exists()

    # Ops correct the mapping (the CRM's values are free text); the queued pull applies it.
    FieldMapping.objects.filter(remote_field="Employees__c").update(kind="text")
    assert tasks.pull_one(sf_employees.pk, "contact") == 1
    run = SyncRun.objects.filter(kind="pull", object="contact").latest("pk")
    assert (run.retried, run.recovered, run.failed) == (1, 1, 0)
    assert Lead.objects.get(email="ray@example.org").properties["employees"] == "many"
    failure.refresh_from_db()
    assert failure.status == "resolved"


def test_a_refused_fetch_counts_an_attempt_and_the_pull_goes_on(sf_employees, salesforce):
    """A failure the CRM will not even read (here an id Salesforce refuses)
    moves to dead like any other, and never holds back the type's pulls."""
    PullFailure.objects.create(connection=sf_employees, object="contact", remote_id="not-an-id", error="x")
    salesforce.put("Lead", {"LastName": "Ray", "Company": "Acme", "Email": "ray@example.org"})
    run = pull_changes(connection=sf_employees)
    assert (run.retried, run.failed, run.pulled) == (1, 1, 1)
    assert "fetching 1 earlier failure(s) again: 'not-an-id' is not a Salesforce Lead id" in run.error
    failure = PullFailure.objects.get()
    assert (failure.attempts, failure.status) == (2, "pending") and "not a Salesforce Lead id" in failure.error
    assert Lead.objects.filter(email="ray@example.org").exists()


# --- links ----------------------------------------------------------------------

def test_failed_campaign_member_is_fetched_by_id_once_its_campaign_is_here(sf_connection, salesforce, slow_backoff):
    from martech.crm.types import SALESFORCE_CAMPAIGN_MAPPINGS
    from martech.models import Event
    from martech.services.leads import lead_upsert

    from .conftest import _map

    _map(sf_connection, "campaign", SALESFORCE_CAMPAIGN_MAPPINGS)
    ann, _ = lead_upsert(data={"email": "ann@example.org", "last_name": "Lee"}, source="test")
    outbox_drain(connection=sf_connection)
    ann.refresh_from_db()
    campaign = salesforce.put("Campaign", {"Name": "Not pulled yet"})
    member = salesforce.put("CampaignMember", {"CampaignId": campaign["Id"], "LeadId": ann.salesforce_lead_id})
    run = links_pull(connection=sf_connection, link="campaign_member")
    assert (run.pulled, run.failed) == (0, 1)
    failure = PullFailure.objects.get()
    assert (failure.object, failure.remote_id, failure.status) == ("campaign_member", member["Id"], "pending")
    assert "is not here yet (pull campaign first)" in failure.error

    assert pull_changes(connection=sf_connection, obj="campaign").pulled == 1
    _due_now()
    run = links_pull(connection=sf_connection, link="campaign_member")
    assert (run.retried, run.recovered, run.pulled, run.failed) == (1, 1, 1, 0)
    assert run.api_calls == 2  # the member by id, then the members changed since the cursor
    assert Event.objects.filter(event_type__name="campaign_member_added", lead=ann).count() == 1
    failure.refresh_from_db()
    assert failure.status == "resolved"
    # "Retry now"'s task pulls a link type by its key too: nothing left to retry.
    assert services.pull_one(connection=sf_connection, key="campaign_member").retried == 0


def test_crm_sync_reports_the_retries(task_mappings, hubspot, capsys, slow_backoff):
    contact = hubspot.put_contact({"email": "ann@example.org"})
    made = hubspot.put("tasks", {"hs_task_subject": "Call", "hs_timestamp": "2026-12-03T15:00:00Z"})
    hubspot.associate("tasks", made["id"], "contacts", contact["id"])
    pull_changes(connection=task_mappings, obj="task")
    _due_now()
    call_command("crm_sync", "--provider", "hubspot", "--no-push")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_object = {line.get("object"): line for line in lines if line["kind"] == "pull"}
    # Contacts are pulled before tasks (the registry's order), so the retried task finds its lead.
    assert (by_object["task"]["retried"], by_object["task"]["recovered"], by_object["task"]["failed"]) == (1, 1, 0)
    assert by_object["contact"]["retried"] == 0
    assert SalesTask.objects.count() == 1
