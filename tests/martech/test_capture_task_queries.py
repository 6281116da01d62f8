"""The capture task's queries, with its transactions really committed (a
transactional test): what runs after each commit (the stage's
announcement, the SQL handoff, wake-ups) runs inside the task, as in a
worker."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from martech.models import Event, Lead
from martech.scoring.models import Handoff
from tests.martech.test_capture_task import _local_cache, demo_form, post, scored_routing  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reference_data", "scoring_inline")]


def test_the_capture_task_reads_the_configuration_once(demo_form, scored_routing, monkeypatch):
    """Every receiver's cache check read the configuration's tokens: 7 reads
    a form here (10 in the demo). The task holds one snapshot; its queries
    are bounded. (Its wake-ups, once per key: the coalescing tests in
    test_capture_task.py.)"""
    from martech.crm.models import Connection, FieldMapping
    from martech.tasks import capture_process

    for provider, owner in (("hubspot", "hubspot_owner_id"), ("salesforce", "OwnerId")):
        conn = Connection.objects.create(provider=provider, name=provider, is_active=True)
        FieldMapping.objects.create(connection=conn, local_field="email", remote_field="email", kind="text")
        FieldMapping.objects.create(connection=conn, local_field="owner", remote_field=owner, kind="text",
                                    direction="push")
    captured: list[tuple] = []
    monkeypatch.setattr("martech.services.capture.task_enqueue", lambda func, *args, **kw: captured.append(args))
    post({"email": "vp@example.com", "title": "VP Sales"})
    (args,) = captured
    lead = Lead.objects.get(email="vp@example.com")
    assert args[:2] == ([lead.pk], [Event.objects.get(lead=lead).pk])
    with CaptureQueriesContext(connection) as ctx:
        capture_process(*args)
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert Handoff.objects.filter(lead=lead).count() == 1
    tokens = [q for q in sqls if q.startswith('SELECT key, token FROM "martech_configversion"')]
    assert len(tokens) == 1, tokens
    # PostgreSQL 72, SQLite 78 (77 and 81 before the snapshot; 71 and 75
    # before the CRM outbox rows were held until the task's end: its one
    # UPDATE making the request's rows due, and on SQLite the two drain
    # wake-ups, django-q2's ORM broker rows, that the request sent before).
    assert len(sqls) <= 79, len(sqls)

