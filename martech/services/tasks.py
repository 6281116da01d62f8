"""Sales tasks: follow-ups for sales, made by the SQL handoff, nurture steps,
routing, by hand, or in the CRM (a task pulled that we never pushed). The CRM
sync pushes them through the task hook."""
from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from martech import hooks, signals
from martech.models import Lead, SalesTask


CRM_ID_FIELDS = frozenset({"hubspot_id", "salesforce_id"})
UPDATABLE = frozenset({"subject", "description", "due_at", "owner", "lead"})


@transaction.atomic
def task_create(
    *,
    key: str,
    lead: Lead,
    subject: str,
    source: str,
    owner=None,
    description: str = "",
    due_at: datetime | None = None,
    status: str = SalesTask.Status.OPEN,
    crm_ids: dict[str, str] | None = None,
) -> tuple[SalesTask, bool]:
    """Create the task for ``key`` once. A retry with the same key returns the
    existing task and ``created=False``; nothing is written twice.

    ``status`` open or cancelled (a done task is completed through
    ``task_complete``, which announces it); ``crm_ids`` the CRM's id of a
    task made there ({"hubspot_id": ...} or {"salesforce_id": ...})."""
    if not key:
        raise ValidationError({"key": ["An idempotency key is required."]})
    if not subject.strip():
        raise ValidationError({"subject": ["Give the task a subject."]})
    if status not in (SalesTask.Status.OPEN, SalesTask.Status.CANCELLED):
        raise ValidationError({"status": [f"A task is created open or cancelled, not {status!r}."]})
    crm_ids = crm_ids or {}
    unknown = sorted(set(crm_ids) - CRM_ID_FIELDS)
    if unknown:
        known = ", ".join(sorted(CRM_ID_FIELDS))
        raise ValidationError({unknown[0]: [f"Not a CRM id field of a task (known: {known})."]})
    existing = SalesTask.objects.filter(key=key).first()
    if existing:
        return existing, False
    task = SalesTask(
        key=key[:200], lead=lead, owner=owner, subject=subject.strip()[:255], description=description,
        due_at=due_at, source=source[:100], status=status, **crm_ids,
    )
    try:
        with transaction.atomic():
            task.save(force_insert=True)
    except IntegrityError:  # a concurrent call with the same key won
        return SalesTask.objects.get(key=key), False
    hooks.tasks_changed(ids=[task.pk], fields=["subject", "owner", "due_at", "status"], created=True, source=source)
    return task, True


@transaction.atomic
def task_complete(*, task: SalesTask, source: str, at: datetime | None = None) -> bool:
    """Mark a task done (from the admin, the API or a CRM pull). Announces
    ``task_completed`` after commit (routing counts it as a first touch).
    Completing a done task again changes nothing and returns False."""
    locked = SalesTask.objects.select_for_update().get(pk=task.pk)
    if locked.status == SalesTask.Status.DONE:
        return False
    when = at or timezone.now()
    SalesTask.objects.filter(pk=locked.pk).update(status=SalesTask.Status.DONE, completed_at=when, updated_at=timezone.now())
    task.status, task.completed_at = SalesTask.Status.DONE, when
    hooks.tasks_changed(ids=[task.pk], fields=["status", "completed_at"], source=source)
    transaction.on_commit(lambda: signals.task_completed.send(sender=SalesTask, task=task, source=source))
    return True


@transaction.atomic
def task_update(*, task: SalesTask, data: dict, source: str) -> list[str]:
    """Change a task's subject, description, due date, owner or lead (a new
    lead is a new CRM association: the push moves it). Writes and announces
    only the fields whose value changes; returns their names."""
    unknown = sorted(set(data) - UPDATABLE)
    if unknown:
        raise ValidationError({unknown[0]: [f"Not an editable task field (editable: {', '.join(sorted(UPDATABLE))})."]})
    if "subject" in data:
        if not str(data["subject"] or "").strip():
            raise ValidationError({"subject": ["Give the task a subject."]})
        data = {**data, "subject": str(data["subject"]).strip()[:255]}
    if "lead" in data and data["lead"] is None:
        raise ValidationError({"lead": ["A task belongs to a lead."]})
    locked = SalesTask.objects.select_for_update().get(pk=task.pk)
    changed = [name for name, value in data.items() if getattr(locked, name) != value]
    if not changed:
        return []
    for name in changed:
        setattr(locked, name, data[name])
        setattr(task, name, data[name])
    locked.save(update_fields=[*changed, "updated_at"])
    task.updated_at = locked.updated_at
    hooks.tasks_changed(ids=[task.pk], fields=changed, source=source)
    return changed
