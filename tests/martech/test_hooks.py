"""Every lead and account write path calls the in-transaction hooks
(martech/hooks.py), once per batch, inside the writing transaction."""
import io

import pytest
from django.db import transaction

from martech import hooks
from martech.models import Lead
from martech.services.accounts import account_upsert
from martech.services.imports import lead_import_csv
from martech.services.ingest import events_ingest
from martech.services.leads import lead_change_stage, lead_merge, lead_upsert
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def record(*, ids, fields, created, source):
        seen.append({"ids": sorted(ids), "fields": fields, "created": created, "source": source,
                     "in_atomic": transaction.get_connection().in_atomic_block})

    monkeypatch.setattr(hooks, "_lead_hooks", [record])
    monkeypatch.setattr(hooks, "_account_hooks", [record])
    return seen


def test_upsert_create_update_and_unchanged(calls):
    lead, _ = lead_upsert(data={"email": "ann@example.org"}, source="test")
    created_call = calls[0]
    assert created_call["ids"] == [lead.pk] and created_call["created"] and "email" in created_call["fields"]
    assert created_call["in_atomic"]
    calls.clear()
    lead_upsert(data={"email": "ann@example.org", "job_title": "CTO"}, source="api:x")
    assert calls == [{"ids": [lead.pk], "fields": frozenset({"job_title"}), "created": False, "source": "api:x", "in_atomic": True}]
    calls.clear()
    lead_upsert(data={"email": "ann@example.org", "job_title": "CTO"}, source="api:x")
    assert calls == []


def test_stage_change_and_merge(calls):
    a, b = LeadFactory(), LeadFactory()
    lead_change_stage(lead=a, to_stage="mql", reason="test", source="rule")
    assert calls[-1]["fields"] == frozenset({"lifecycle_stage"}) and calls[-1]["ids"] == [a.pk]
    lead_merge(primary=a, duplicate=b)
    assert calls[-1]["ids"] == [a.pk] and "email" in calls[-1]["fields"]


def test_bulk_import_calls_once_per_kind(calls):
    LeadFactory(email="old@example.org", job_title="")
    csv_text = "email,job_title\nold@example.org,VP\nnew1@example.org,\nnew2@example.org,\n"
    report = lead_import_csv(file=io.BytesIO(csv_text.encode()))
    assert (report.created, report.updated) == (2, 1)
    created = [c for c in calls if c["created"]]
    updated = [c for c in calls if not c["created"]]
    assert len(created) == 1 and len(created[0]["ids"]) == 2
    assert updated[0]["ids"] == [Lead.objects.get(email="old@example.org").pk]
    assert "job_title" in updated[0]["fields"]


def test_event_touch_and_account(calls):
    lead = LeadFactory(email="t@example.org")
    calls.clear()
    events_ingest(
        items=[{"type": "track", "event": "page_view", "messageId": "m1", "properties": {"email": "t@example.org"},
                "timestamp": "2026-01-01T00:00:00Z", "context": {"campaign": {"source": "google", "medium": "cpc"}}}],
        source="test",
    )
    touch = [c for c in calls if "first_touch_at" in c["fields"]]
    assert touch and touch[0]["ids"] == [lead.pk]
    calls.clear()
    account, created = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="admin")
    assert calls == [{"ids": [account.pk], "fields": frozenset({"name", "domain"}), "created": True, "source": "admin", "in_atomic": True}]
