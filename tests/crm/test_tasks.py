"""Sales tasks pushed to HubSpot as tasks; a task completed in HubSpot
completes ours (and routing hears task_completed)."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from martech import signals
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


def test_task_completed_in_hubspot_completes_ours_once(task_mappings, hubspot, django_capture_on_commit_callbacks):
    task = _task()
    outbox_drain(connection=task_mappings)
    pull_changes(connection=task_mappings, obj="task")  # our own push comes back unchanged
    task.refresh_from_db()
    assert task.status == SalesTask.Status.OPEN
    heard = []

    def receiver(sender, task, source, **kwargs):
        heard.append((task.pk, source))

    signals.task_completed.connect(receiver)
    try:
        hubspot.put("tasks", {"hs_task_status": "COMPLETED"}, object_id=task.hubspot_id)
        # A task created in HubSpot with no contact we know: a recorded error, not a task and not a crash.
        orphan = hubspot.put("tasks", {"hs_task_subject": "Someone else's", "hs_task_status": "COMPLETED",
                                       "hs_timestamp": "2026-01-01T00:00:00Z"})
        with django_capture_on_commit_callbacks(execute=True):
            run = pull_changes(connection=task_mappings, obj="task")
    finally:
        signals.task_completed.disconnect(receiver)
    assert (run.pulled, run.skipped, run.failed) == (1, 0, 1)
    assert run.error.startswith(f"{orphan['id']}: ") and "'lead'" in run.error and "no contact" in run.error
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE and task.completed_at
    assert SalesTask.objects.count() == 1
    assert heard == [(task.pk, "crm:hubspot")]  # routing counts it as the first touch
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
