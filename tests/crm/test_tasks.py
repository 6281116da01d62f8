"""Sales tasks pushed to HubSpot as tasks; a task completed in HubSpot
completes ours (and routing hears task_completed)."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from martech.crm.models import OutboxItem
from martech.crm.services import outbox_drain, pull_changes
from martech.models import SalesTask
from martech.services.leads import lead_upsert
from martech.services.tasks import task_create

pytestmark = pytest.mark.django_db
TASK_UPSERT = ("POST", "/crm/v3/objects/tasks/batch/upsert")


def _task(key="t1", due_at=None, email="lead@example.org"):
    lead, _ = lead_upsert(data={"email": email, "first_name": "Lee"}, source="test")
    task, _ = task_create(key=key, lead=lead, subject="Call back", description="Asked for pricing", source="test",
                          due_at=due_at)
    return task


def test_task_is_pushed_with_its_contact(task_mappings, hubspot):
    due = timezone.now().replace(microsecond=0) + dt.timedelta(days=1)
    task = _task(due_at=due)
    run = outbox_drain(connection=task_mappings)
    assert (run.pushed, run.failed) == (2, 0)  # the lead's contact, then the task
    remote = hubspot.find("tasks", str(task.pk))
    props = remote["properties"]
    assert (props["hs_task_subject"], props["hs_task_body"], props["hs_task_status"]) == (
        "Call back", "Asked for pricing", "NOT_STARTED")
    assert props["hs_timestamp"] == due.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    contact_id = hubspot.find("contacts", "lead@example.org")["id"]
    assert hubspot.associated("tasks", remote["id"], "contacts") == {contact_id}
    task.refresh_from_db()
    assert task.hubspot_id == remote["id"]


def test_task_without_due_date_is_due_when_made(task_mappings, hubspot):
    task = _task()
    outbox_drain(connection=task_mappings)
    stamp = hubspot.find("tasks", str(task.pk))["properties"]["hs_timestamp"]
    assert stamp.startswith(task.created_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M"))


def test_task_completed_in_hubspot_completes_ours_once(task_mappings, hubspot, django_capture_on_commit_callbacks,
                                                      task_completions):
    task = _task()
    outbox_drain(connection=task_mappings)
    pull_changes(connection=task_mappings, obj="task")  # our own push comes back unchanged
    task.refresh_from_db()
    assert task.status == SalesTask.Status.OPEN
    hubspot.put("tasks", {"hs_task_status": "COMPLETED"}, object_id=task.hubspot_id)
    # A task created in HubSpot with no contact we know: a recorded error, not a task and not a crash.
    orphan = hubspot.put("tasks", {"hs_task_subject": "Someone else's", "hs_task_status": "COMPLETED",
                                   "hs_timestamp": "2026-01-01T00:00:00Z"})
    with django_capture_on_commit_callbacks(execute=True):
        run = pull_changes(connection=task_mappings, obj="task")
    assert (run.pulled, run.skipped, run.failed) == (1, 0, 1)
    assert run.error.startswith(f"{orphan['id']}: ") and "'lead'" in run.error and "no contact" in run.error
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE and task.completed_at
    assert SalesTask.objects.count() == 1
    assert task_completions == [(task.pk, "crm:hubspot")]  # routing counts it as the first touch
    # The completion came from HubSpot: not pushed back.
    assert not OutboxItem.objects.filter(object="task", status="pending").exists()
    # Pulled again (full): already done, nothing changes.
    completed_at = task.completed_at
    pull_changes(connection=task_mappings, obj="task", full=True)
    task.refresh_from_db()
    assert task.completed_at == completed_at


def test_task_completed_here_is_pushed_as_completed(task_mappings, hubspot):
    from martech.services.tasks import task_complete

    task = _task()
    outbox_drain(connection=task_mappings)
    task_complete(task=task, source="admin")
    assert outbox_drain(connection=task_mappings).pushed == 1
    assert hubspot.find("tasks", str(task.pk))["properties"]["hs_task_status"] == "COMPLETED"
    assert len(hubspot.tasks) == 1


def test_task_given_another_lead_moves_its_contact_in_hubspot(task_mappings, hubspot):
    from martech.services.tasks import task_update

    task = _task()
    outbox_drain(connection=task_mappings)
    task.refresh_from_db()
    task_id, old_contact = task.hubspot_id, hubspot.find("contacts", "lead@example.org")["id"]
    assert hubspot.associated("tasks", task_id, "contacts") == {old_contact}
    other, _ = lead_upsert(data={"email": "other@example.org"}, source="test")
    hubspot.calls.clear()
    assert task_update(task=task, data={"lead": other}, source="admin") == ["lead"]
    run = outbox_drain(connection=task_mappings)
    assert (run.pushed, run.failed) == (2, 0), run.error  # the new lead's contact, then the task
    new_contact = hubspot.find("contacts", "other@example.org")["id"]
    assert hubspot.associated("tasks", task_id, "contacts") == {new_contact}
    assert hubspot.associated("contacts", old_contact, "tasks") == set()
    assert (hubspot.calls[("POST", "/crm/v4/associations/tasks/contacts/batch/archive")],
            hubspot.calls[("POST", "/crm/v4/associations/tasks/contacts/batch/associate/default")],
            hubspot.calls[TASK_UPSERT]) == (1, 1, 1)
    assert len(hubspot.tasks) == 1


def test_task_made_in_hubspot_becomes_a_local_task_once(task_mappings, hubspot, django_user_model):
    from routing.models import Rep

    from martech.crm.services import owners_pull

    lead, _ = lead_upsert(data={"email": "lead@example.org", "first_name": "Lee"}, source="test")
    outbox_drain(connection=task_mappings)
    contact_id = hubspot.find("contacts", "lead@example.org")["id"]
    rep_user = django_user_model.objects.create(username="rep", email="rep@example.com")
    hubspot.add_owner(owner_id="88", email="rep@example.com")
    owners_pull(connection=task_mappings)
    assert Rep.objects.filter(user=rep_user).count() == 0  # no rep: the owner's email finds the user
    remote = hubspot.put("tasks", {"hs_task_subject": "Send the contract", "hs_task_body": "Legal asked",
                                   "hs_timestamp": "2026-12-03T15:00:00Z", "hs_task_status": "NOT_STARTED",
                                   "hubspot_owner_id": "88"})
    hubspot.associate("tasks", remote["id"], "contacts", contact_id)
    orphan = hubspot.put("tasks", {"hs_task_subject": "Stranger", "hs_timestamp": "2026-12-03T15:00:00Z",
                                   "hs_task_status": "NOT_STARTED"})
    hubspot.associate("tasks", orphan["id"], "contacts", "999999")  # a contact we do not have
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.pulled, run.failed) == (1, 1)
    assert run.error.startswith(f"{orphan['id']}: ") and "'lead'" in run.error
    task = SalesTask.objects.get()
    assert (task.subject, task.description, task.status, task.lead, task.owner, task.hubspot_id) == (
        "Send the contract", "Legal asked", SalesTask.Status.OPEN, lead, rep_user, remote["id"])
    assert task.due_at == dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.timezone.utc)
    assert task.source == "crm:hubspot"
    # It came from HubSpot: not pushed back as a second task.
    assert not OutboxItem.objects.filter(object="task", status="pending").exists()
    # Pulled again (full): still one task, nothing changed.
    run = pull_changes(connection=task_mappings, obj="task", full=True)
    assert run.pulled == 1 and SalesTask.objects.count() == 1
    assert outbox_drain(connection=task_mappings).api_calls == 0
    assert len(hubspot.tasks) == 2
    # Completed there later: completed here.
    hubspot.put("tasks", {"hs_task_status": "COMPLETED"}, object_id=remote["id"])
    pull_changes(connection=task_mappings, obj="task")
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE and SalesTask.objects.count() == 1


def test_subject_edited_in_hubspot_follows_unless_edited_here_too(task_mappings, hubspot):
    from martech.services.tasks import task_update

    task = _task(due_at=dt.datetime(2026, 12, 3, 15, 30, tzinfo=dt.timezone.utc))
    outbox_drain(connection=task_mappings)
    task.refresh_from_db()
    # Only HubSpot changed it: its subject comes in; the due date does not round-trip (left as ours).
    hubspot.put("tasks", {"hs_task_subject": "Call back (moved)", "hs_timestamp": "2026-12-04T00:00:00Z"},
                object_id=task.hubspot_id)
    run = pull_changes(connection=task_mappings, obj="task")
    assert (run.pulled, run.failed) == (1, 0), run.error
    task.refresh_from_db()
    assert task.subject == "Call back (moved)"
    assert task.due_at == dt.datetime(2026, 12, 3, 15, 30, tzinfo=dt.timezone.utc)
    # Both sides changed it: the subject's system of record is here, ours stays and is pushed.
    task_update(task=task, data={"subject": "Call back today"}, source="admin")
    hubspot.put("tasks", {"hs_task_subject": "Theirs"}, object_id=task.hubspot_id)
    pull_changes(connection=task_mappings, obj="task")
    task.refresh_from_db()
    assert task.subject == "Call back today"
    outbox_drain(connection=task_mappings)
    assert hubspot.find("tasks", str(task.pk))["properties"]["hs_task_subject"] == "Call back today"
