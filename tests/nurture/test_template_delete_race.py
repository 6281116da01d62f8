"""A template deleted while a workflow save names it, on PostgreSQL with two
connections: whichever takes the template's row first wins, and the other is
refused with a reason. A draft never names a template that is gone."""
from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction

from nurture.models import EmailTemplate, Workflow
from nurture.services import email_template_delete, workflow_save
from tests.nurture.test_email_templates import make_template, template_flow

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def _wait_for_a_blocked_backend(timeout: float = 10.0) -> None:
    """Until another connection waits on a row lock (so the race is real)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")
            if cur.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError("no connection ever waited on the template's row")


def _in_thread(fn, outcome: dict, key: str) -> threading.Thread:
    def run():
        try:
            outcome[key] = fn()
        except Exception as exc:  # the outcome is asserted by the test
            outcome[key] = exc
        finally:
            connections.close_all()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_delete_waits_for_the_save_that_names_the_template_and_is_refused():
    t = make_template()
    held, release, outcome = threading.Event(), threading.Event(), {}

    def save():
        with transaction.atomic():
            workflow_save(workflow=Workflow(name="Names it", definition=template_flow(t.pk)))
            held.set()
            release.wait(10)

    saver = _in_thread(save, outcome, "save")
    assert held.wait(10)
    deleter = _in_thread(lambda: email_template_delete(template=t), outcome, "delete")
    _wait_for_a_blocked_backend()
    release.set()
    saver.join(10), deleter.join(10)
    assert outcome["save"] is None
    assert isinstance(outcome["delete"], ValidationError)
    assert "Names it" in str(outcome["delete"])
    assert EmailTemplate.objects.filter(pk=t.pk).exists()


def test_a_save_waits_for_the_delete_and_is_refused_naming_the_template():
    t = make_template()
    pk = t.pk  # the delete clears t.pk
    held, release, outcome = threading.Event(), threading.Event(), {}

    def delete():
        with transaction.atomic():
            email_template_delete(template=t)
            held.set()
            release.wait(10)

    deleter = _in_thread(delete, outcome, "delete")
    assert held.wait(10)
    saver = _in_thread(lambda: workflow_save(workflow=Workflow(name="Names it", definition=template_flow(pk))),
                       outcome, "save")
    _wait_for_a_blocked_backend()
    release.set()
    deleter.join(10), saver.join(10)
    assert outcome["delete"] is None
    assert isinstance(outcome["save"], ValidationError)
    assert f"e1.template: no email template with id {pk}." in str(outcome["save"])
    assert not Workflow.objects.filter(name="Names it").exists()
