"""The connection health page tells the truth: a crashed run is a failed
run, the pause shows with its reason, per-object pushed/failed over 24 h,
the calls against the allowance with the CRM's own count, and dead letters
linked to their admin list and to their local records."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.models import OutboxItem
from martech.crm.selectors import connection_health
from martech.crm.services import connection_pause, outbox_drain
from martech.models import Lead
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db


def test_health_page_renders_the_truth(client, marketing_ops, connection, hubspot, monkeypatch):
    good, _ = lead_upsert(data={"email": "good@example.org"}, source="test")
    bad = Lead.objects.create(email="not-an-address")  # HubSpot refuses it: INVALID_EMAIL (207)
    OutboxItem.objects.create(connection=connection, object="contact", local_id=bad.pk)
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (1, 1) and "INVALID_EMAIL" in run.error
    assert run.by_object == {"contact": {"pushed": 1, "failed": 1}}

    # A push that crashes: a failed run, never a success.
    lead_upsert(data={"email": "later@example.org"}, source="test")

    def crash(self, obj, records):
        raise OSError("allowance file unreadable")

    monkeypatch.setattr(HubSpotConnector, "push_batch", crash)
    crashed = outbox_drain(connection=connection)
    assert crashed.error == "Crashed: OSError: allowance file unreadable" and crashed.finished_at
    OutboxItem.objects.filter(local_id=bad.pk).update(status="dead")
    until = connection_pause(connection=connection, until=timezone.now() + dt.timedelta(minutes=5),
                             reason="HubSpot 429 TEN_SECONDLY_ROLLING: You have reached your limit.")

    client.force_login(marketing_ops)
    page = client.get(f"/admin/crm/connection/{connection.pk}/health/")
    assert page.status_code == 200
    health = page.context["health"]
    assert (health["runs_24h"], health["runs_ok_24h"], health["runs_failed_24h"]) == (2, 0, 2)
    assert health["success_rate_24h"] == 0.0
    assert health["paused_until"] == until and "TEN_SECONDLY_ROLLING" in health["pause_reason"]
    assert health["last_failed_run"]["error"] == crashed.error
    assert health["backlog"] == 1 and health["oldest_age_seconds"] is not None and health["dead_letters"] == 1
    assert health["crm_calls_limit"] == 625_000 and health["crm_calls_used"] == 1  # HubSpot's daily headers
    assert health["api_calls_used"] == 1
    contact = next(row for row in health["by_object"] if row["object"] == "contact")
    assert (contact["pushed_24h"], contact["push_failed_24h"], contact["push_rate_24h"]) == (1, 1, 50.0)
    html = page.content.decode()
    assert "Paused until" in html and "TEN_SECONDLY_ROLLING" in html
    assert "Crashed: OSError: allowance file unreadable" in html
    assert "the CRM&#x27;s own count: 1 / 625000" in html or "the CRM's own count: 1 / 625000" in html
    assert f"/admin/crm/deadletter/?connection__id__exact={connection.pk}" in html
    assert "emulator-token" not in html

    # The dead letters of that connection link to the lead's own admin page.
    dead = client.get(f"/admin/crm/deadletter/?connection__id__exact={connection.pk}")
    assert dead.status_code == 200 and f"/admin/martech/lead/{bad.pk}/change/" in dead.content.decode()
    # The connection list shows the pause.
    listing = client.get("/admin/crm/connection/").content.decode()
    assert "until " in listing and "TEN_SECONDLY_ROLLING" in listing


def test_paused_runs_are_not_failures_and_a_spent_pause_is_lifted(connection, hubspot):
    lead_upsert(data={"email": "p@example.org"}, source="test")
    connection_pause(connection=connection, until=timezone.now() + dt.timedelta(minutes=1), reason="DAILY")
    skipped = outbox_drain(connection=connection)
    assert skipped.paused_until and skipped.error.startswith("Paused until")
    health = connection_health(connection=connection)
    assert (health["runs_24h"], health["runs_paused_24h"], health["success_rate_24h"]) == (0, 1, None)
    type(connection).objects.filter(pk=connection.pk).update(paused_until=timezone.now() - dt.timedelta(seconds=1))
    connection.refresh_from_db()
    run = outbox_drain(connection=connection)
    assert run.pushed == 1 and run.error == ""
    connection.refresh_from_db()
    assert (connection.paused_until, connection.pause_reason) == (None, "")
    assert connection_health(connection=connection)["success_rate_24h"] == 100.0
