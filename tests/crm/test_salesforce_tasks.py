"""Sales tasks pushed to Salesforce as Task (WhoId = the lead's Lead or
Contact), upserted by Martech_Id__c; a Task closed in Salesforce completes
ours. The same registered "task" type as HubSpot's, with Salesforce mappings."""
from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from martech.crm.models import CrmOwner, FieldMapping, OutboxItem
from martech.crm.services import outbox_drain, payload_preview, pull_changes
from martech.crm.types import SALESFORCE_TASK_MAPPINGS
from martech.models import SalesTask
from martech.services.leads import lead_upsert
from martech.services.tasks import task_complete, task_create

pytestmark = pytest.mark.django_db
UPSERT_TASK = ("PATCH", "/services/data/v59.0/composite/sobjects/Task/Martech_Id__c")


@pytest.fixture
def sf_tasks(sf_connection):
    for local, remote, kind, extra in SALESFORCE_TASK_MAPPINGS:
        mapping = FieldMapping(connection=sf_connection, object="task", local_field=local, remote_field=remote,
                               kind=kind, **extra)
        mapping.full_clean()
        mapping.save()
    return sf_connection


def _task(key="t1", email="lead@example.org", **extra):
    lead, _ = lead_upsert(data={"email": email, "first_name": "Lee", "last_name": "Ray"}, source="test")
    task, _ = task_create(key=key, lead=lead, subject="Call back", description="Asked for pricing",
                          source="test", **extra)
    return task


def _due_now():
    OutboxItem.objects.filter(status="pending").update(next_attempt_at=timezone.now())


def test_task_pushed_with_who_id_owner_and_external_id(sf_tasks, salesforce):
    user = get_user_model().objects.create_user(username="rep", email="rep@example.org")
    CrmOwner.objects.create(connection=sf_tasks, remote_id="005000000000000009", email="rep@example.org",
                            is_active=True)
    due = dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.timezone.utc)
    task = _task(due_at=due, owner=user)
    run = outbox_drain(connection=sf_tasks)
    assert (run.pushed, run.failed) == (2, 0)  # the lead first (its Lead id is the WhoId), then the task
    (lead_record,) = salesforce.records["Lead"].values()
    (record,) = salesforce.records["Task"].values()
    assert record["Id"].startswith("00T")
    assert (record["WhoId"], record["Subject"], record["Description"], record["ActivityDate"], record["Status"],
            record["OwnerId"], record["Martech_Id__c"]) == (
        lead_record["Id"], "Call back", "Asked for pricing", "2026-12-03", "Not Started", "005000000000000009",
        str(task.pk))
    assert record["IsClosed"] is False
    task.refresh_from_db()
    assert task.salesforce_id == record["Id"]
    # The admin preview shows the same body the drain sent.
    body = payload_preview(connection=sf_tasks, obj="task", instance=task)
    (row,) = body["body"]["records"]
    assert row["WhoId"] == lead_record["Id"] and row["Id"] == record["Id"] and row["attributes"]["type"] == "Task"


def test_retried_task_batch_after_lost_answer_makes_no_duplicate(sf_tasks, salesforce, sf_no_sleep):
    task = _task()
    assert outbox_drain(connection=sf_tasks, max_items=1).pushed == 1  # the lead only
    salesforce.lose_answers = 1  # Salesforce creates the Task, the answer is lost (503): retried
    run = outbox_drain(connection=sf_tasks)
    assert (run.pushed, run.api_calls) == (1, 2) and len(sf_no_sleep) == 1
    assert salesforce.calls[UPSERT_TASK] == 2
    assert len(salesforce.records["Task"]) == 1  # upserted by Martech_Id__c: found, not made again
    task.refresh_from_db()
    assert task.salesforce_id == next(iter(salesforce.records["Task"]))


def test_task_for_a_contact_goes_with_the_contact_id(sf_tasks, salesforce):
    contact = salesforce.put("Contact", {"LastName": "Ray", "Email": "lead@example.org"})
    lead, _ = lead_upsert(data={"email": "lead@example.org", "salesforce_contact_id": contact["Id"]},
                          source="crm:salesforce")
    task, _ = task_create(key="c1", lead=lead, subject="Demo", source="test")
    outbox_drain(connection=sf_tasks)
    (record,) = salesforce.records["Task"].values()
    assert record["WhoId"] == contact["Id"]
    assert not salesforce.records["Lead"]


def test_task_closed_in_salesforce_completes_ours_once(sf_tasks, salesforce, django_capture_on_commit_callbacks,
                                                       task_completions):
    task = _task()
    outbox_drain(connection=sf_tasks)
    pull_changes(connection=sf_tasks, obj="task")  # our own push comes back unchanged
    task.refresh_from_db()
    assert task.status == SalesTask.Status.OPEN
    salesforce.put("Task", {"Id": task.salesforce_id, "Status": "Completed"})
    # Another integration's Task about no person (no WhoId): out of the pull's scope, not even read.
    salesforce.put("Task", {"Subject": "Someone else's", "Status": "Completed"})
    with django_capture_on_commit_callbacks(execute=True):
        run = pull_changes(connection=sf_tasks, obj="task")
    assert (run.pulled, run.skipped, run.failed) == (1, 0, 0) and run.error == ""
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE and task.completed_at
    assert SalesTask.objects.count() == 1
    assert task_completions == [(task.pk, "crm:salesforce")]
    assert not OutboxItem.objects.filter(object="task", status="pending").exists()  # not pushed back
    completed_at = task.completed_at
    pull_changes(connection=sf_tasks, obj="task", full=True)
    task.refresh_from_db()
    assert task.completed_at == completed_at


def test_org_specific_closed_status_counts_as_completed(sf_tasks, salesforce):
    """IsClosed decides, not the status's name (orgs add closed statuses)."""
    salesforce.closed_task_statuses.add("Closed - Done")
    task = _task()
    outbox_drain(connection=sf_tasks)
    task.refresh_from_db()
    salesforce.put("Task", {"Id": task.salesforce_id, "Status": "Closed - Done"})
    assert salesforce.records["Task"][task.salesforce_id]["IsClosed"] is True
    run = pull_changes(connection=sf_tasks, obj="task")
    assert run.failed == 0, run.error
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE


def test_task_completed_here_is_pushed_as_completed(sf_tasks, salesforce):
    task = _task()
    outbox_drain(connection=sf_tasks)
    task_complete(task=task, source="admin")
    assert outbox_drain(connection=sf_tasks).pushed == 1
    (record,) = salesforce.records["Task"].values()
    assert (record["Status"], record["IsClosed"]) == ("Completed", True)
    assert salesforce.calls[("PATCH", "/services/data/v59.0/composite/sobjects")] >= 1  # by Id the second time


def test_emulator_task_rules(sf_tasks, salesforce):
    """IsClosed is read-only (that record is refused with
    INVALID_FIELD_FOR_INSERT_UPDATE, as Salesforce answers per record); a
    WhoId that is not a Lead or Contact is refused for that record alone."""
    from martech.crm.connectors.salesforce import SalesforceConnector

    account = salesforce.put("Account", {"Name": "Acme"})
    sf = SalesforceConnector(sf_tasks).sf
    path = "composite/sobjects/Task/Martech_Id__c"
    (refused,) = sf.restful(path, method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "Martech_Id__c": "x", "IsClosed": True}]})
    assert refused["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert refused["errors"][0]["fields"] == ["IsClosed"]
    (answer,) = sf.restful(path, method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "Martech_Id__c": "x", "WhoId": account["Id"]}]})
    assert answer["success"] is False and answer["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert not salesforce.records["Task"]


def test_task_made_in_salesforce_becomes_a_local_task_once(sf_tasks, salesforce, django_user_model):
    from routing.models import Rep

    contact = salesforce.put("Contact", {"LastName": "Ray", "Email": "ray@example.org"})
    lead, _ = lead_upsert(data={"email": "ray@example.org", "salesforce_contact_id": contact["Id"]},
                          source="crm:salesforce")
    rep_user = django_user_model.objects.create(username="sam", email="sam@example.org")
    Rep.objects.create(name="Sam", email="sam@example.org", user=rep_user, salesforce_user_id="005000000000000077")
    made = salesforce.put("Task", {"WhoId": contact["Id"], "Subject": "Renewal call", "Description": "Q1 renewal",
                                   "ActivityDate": "2026-12-03", "Status": "Not Started",
                                   "OwnerId": "005000000000000077"})
    run = pull_changes(connection=sf_tasks, obj="task")
    assert (run.pulled, run.failed) == (1, 0), run.error
    task = SalesTask.objects.get()
    assert (task.subject, task.description, task.status, task.lead, task.owner, task.salesforce_id) == (
        "Renewal call", "Q1 renewal", SalesTask.Status.OPEN, lead, rep_user, made["Id"])  # owner through the rep
    assert task.due_at == dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)  # a Salesforce date: that UTC day
    assert not OutboxItem.objects.filter(object="task", status="pending").exists()  # not sent back
    run = pull_changes(connection=sf_tasks, obj="task", full=True)
    assert run.failed == 0 and SalesTask.objects.count() == 1
    # A Task whose WhoId is a Lead we do not know: a recorded error naming the lead.
    stranger = salesforce.put("Lead", {"LastName": "X", "Company": "Y", "Email": "x@example.org"})
    salesforce.put("Task", {"WhoId": stranger["Id"], "Subject": "Who?", "Status": "Not Started"})
    run = pull_changes(connection=sf_tasks, obj="task")
    assert (run.pulled, run.failed) == (0, 1) and "'lead'" in run.error
    assert SalesTask.objects.count() == 1
