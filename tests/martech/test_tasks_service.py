import pytest
from django.core.exceptions import ValidationError

from martech import hooks
from martech.models import SalesTask
from martech.services.tasks import task_complete, task_create
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


def test_create_is_idempotent_by_key_and_calls_task_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(hooks, "_task_hooks", [lambda **kw: seen.append(kw)])
    lead = LeadFactory()
    task, created = task_create(key="handoff:1", lead=lead, subject=" Call back ", source="handoff")
    again, created_again = task_create(key="handoff:1", lead=lead, subject="Other", source="handoff")
    assert (created, created_again) == (True, False) and again.pk == task.pk
    assert SalesTask.objects.get().subject == "Call back"
    assert len(seen) == 1 and seen[0]["created"] and seen[0]["ids"] == [task.pk]


def test_blank_key_or_subject_is_refused_by_field():
    lead = LeadFactory()
    with pytest.raises(ValidationError) as exc:
        task_create(key="", lead=lead, subject="x", source="t")
    assert "key" in exc.value.message_dict
    with pytest.raises(ValidationError) as exc:
        task_create(key="k", lead=lead, subject="  ", source="t")
    assert "subject" in exc.value.message_dict


def test_complete_once_and_announce(django_capture_on_commit_callbacks, task_completions):
    task, _ = task_create(key="k", lead=LeadFactory(), subject="Call", source="t")
    with django_capture_on_commit_callbacks(execute=True):
        assert task_complete(task=task, source="crm") is True
    with django_capture_on_commit_callbacks(execute=True):
        assert task_complete(task=task, source="crm") is False
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE and task.completed_at and task_completions == [(task.pk, "crm")]


def test_providers():
    assert hooks.call("nobody_provides_this", x=1) is None
    hooks.provide("test_double", lambda *, x: x * 2)
    try:
        assert hooks.call("test_double", x=21) == 42
    finally:
        hooks._providers.pop("test_double")
