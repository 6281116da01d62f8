"""Sales tasks: follow-ups for sales, made by the SQL handoff, nurture steps,
routing or by hand. The CRM sync pushes them through the task hook."""
from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from martech import hooks, signals
from martech.models import Lead, SalesTask


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
) -> tuple[SalesTask, bool]:
    """Create the task for ``key`` once. A retry with the same key returns the
    existing task and ``created=False``; nothing is written twice."""
    if not key:
        raise ValidationError({"key": ["An idempotency key is required."]})
    if not subject.strip():
        raise ValidationError({"subject": ["Give the task a subject."]})
    existing = SalesTask.objects.filter(key=key).first()
    if existing:
        return existing, False
    task = SalesTask(
        key=key[:200], lead=lead, owner=owner, subject=subject.strip()[:255], description=description,
        due_at=due_at, source=source[:100],
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
