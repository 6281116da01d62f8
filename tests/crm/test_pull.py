"""Incremental pull: first what both connectors do alike, each on its
emulator (the ``crm`` fixture), conflicts included; then HubSpot's own
behaviour and the command. Salesforce's own is in test_salesforce_pull.py."""
from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from martech.crm.models import Connection, OutboxItem, SyncCursor
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Lead
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db


# --- Both connectors --------------------------------------------------------


def test_remote_only_change_to_a_locally_owned_field_is_taken(crm):
    # No conflict when only the CRM changed: even a field whose system of record is here is updated.
    crm.put_person({"email": "solo@example.org", "first_name": "Old"})
    pull_changes(connection=crm.connection)
    crm.put_person({"email": "solo@example.org", "first_name": "New"})
    run = pull_changes(connection=crm.connection)
    assert (run.pulled, run.skipped) == (1, 0)
    assert Lead.objects.get(email="solo@example.org").first_name == "New"
    # And the drain does not send the CRM's own values back.
    OutboxItem.objects.create(connection=crm.connection, object="contact",
                              local_id=Lead.objects.get(email="solo@example.org").pk)
    assert outbox_drain(connection=crm.connection).api_calls == 0


def test_dry_run_writes_nothing(crm):
    crm.put_person({"email": "dry@example.org"})
    run = pull_changes(connection=crm.connection, dry_run=True)
    assert run.pulled == 1
    assert not Lead.objects.exists()
    assert SyncCursor.objects.get().value == ""


def test_dry_run_command_writes_nothing(crm):
    crm.put_person({"email": "dry@example.org"})
    out = StringIO()
    call_command("crm_sync", provider=crm.provider, dry_run=True, stdout=out)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["provider"] == crm.provider and line["kind"] == "pull" and line["pulled"] == 1
    assert not Lead.objects.exists()
    assert SyncCursor.objects.get().value == ""


def _both_sides_changed(crm, *, remote_later: bool):
    lead, _ = lead_upsert(data={"email": "both@example.org", "first_name": "Local0", "last_name": "L",
                                "job_title": "Local0"}, source="test")
    outbox_drain(connection=crm.connection)
    pull_changes(connection=crm.connection)  # cursor past our own push
    lead_upsert(data={"email": "both@example.org", "first_name": "LocalNew", "job_title": "LocalNew"},
                source="test")
    lead.refresh_from_db()
    at = lead.updated_at + (dt.timedelta(seconds=5) if remote_later else -dt.timedelta(seconds=5))
    crm.put_person({"email": "both@example.org", "first_name": "RemoteNew", "job_title": "RemoteNew"}, at=at)
    run = pull_changes(connection=crm.connection, full=True)
    lead.refresh_from_db()
    return run, lead


@pytest.mark.parametrize("remote_later", [True, False])
def test_conflict_system_of_record_wins_per_field(crm, remote_later):
    run, lead = _both_sides_changed(crm, remote_later=remote_later)
    # first_name: system of record is here; job_title's is the CRM.
    assert lead.first_name == "LocalNew"
    assert lead.job_title == "RemoteNew"
    # Ours is still sent: the pull did not mark the local change as pushed.
    assert outbox_drain(connection=crm.connection).pushed == 1
    assert crm.person("both@example.org")[crm.remote_field("first_name")] == "LocalNew"


@pytest.mark.parametrize("remote_later", [True, False])
def test_conflict_most_recent_wins(crm, remote_later):
    crm.connection.conflict_rule = Connection.ConflictRule.MOST_RECENT
    crm.connection.save()
    run, lead = _both_sides_changed(crm, remote_later=remote_later)
    expected = "RemoteNew" if remote_later else "LocalNew"
    assert (lead.first_name, lead.job_title) == (expected, expected)
    assert run.skipped == (0 if remote_later else 1)


# --- HubSpot ----------------------------------------------------------------


def test_pull_creates_leads_through_dedupe_and_moves_cursor(connection, hubspot):
    hubspot.put_contact({"email": "New@Example.org", "firstname": "Nia", "jobtitle": "VP",
                         "lifecyclestage": "salesqualifiedlead"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed, run.api_calls) == (1, 0, 1)
    lead = Lead.objects.get(email="new@example.org")
    assert (lead.first_name, lead.job_title, lead.lifecycle_stage.key) == ("Nia", "VP", "sql")
    assert lead.hubspot_id == hubspot.by_email["new@example.org"]
    # Not echoed back: the pull's own write queued no push.
    assert not OutboxItem.objects.exists()
    cursor = SyncCursor.objects.get(connection=connection, object="contact")
    assert cursor.value
    # Nothing new: nothing pulled, the filter carried the cursor.
    run = pull_changes(connection=connection)
    assert run.pulled == 0
    method, path, body = hubspot.requests[-1]
    assert body["filterGroups"][0]["filters"][0] == {"propertyName": "lastmodifieddate", "operator": "GTE",
                                                     "value": cursor.value}
    # An edit in HubSpot comes through and updates the same lead.
    hubspot.put_contact({"email": "new@example.org", "jobtitle": "CEO"})
    assert pull_changes(connection=connection).pulled == 1
    assert Lead.objects.get(email="new@example.org").job_title == "CEO"
    assert Lead.objects.count() == 1


def test_pull_pages_through_results(connection, hubspot):
    for i in range(250):
        hubspot.put_contact({"email": f"c{i}@example.org", "firstname": f"C{i}"})
    run = pull_changes(connection=connection)
    assert run.pulled == 250 and run.api_calls == 2  # search pages of 200, HubSpot's most
    assert Lead.objects.count() == 250


def test_bad_pulled_value_is_counted_with_the_field(connection, hubspot):
    connection.mappings.create(local_field="properties.employees", remote_field="numemployees", kind="number")
    hubspot.put_contact({"email": "bad@example.org", "numemployees": "many"})
    hubspot.put_contact({"email": "good@example.org", "numemployees": "12"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed) == (1, 1)
    assert "properties.employees" in run.error and "not a number" in run.error
    assert Lead.objects.get(email="good@example.org").properties["employees"] == "12"


def test_crm_sync_command(connection, hubspot, capsys):
    lead_upsert(data={"email": "cmd@example.org", "first_name": "Cmd"}, source="test")
    hubspot.put_contact({"email": "remote@example.org", "firstname": "Rem"})
    call_command("crm_sync", "--provider", "hubspot")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["kind"] for line in lines] == ["push", "owners", "pull"]
    assert lines[0]["pushed"] == 1
    assert lines[2]["object"] == "contact" and lines[2]["pulled"] >= 1
    assert Lead.objects.filter(email="remote@example.org").exists()
    assert "cmd@example.org" in hubspot.by_email


def test_session_401_stops_connection(connection, hubspot, settings):
    # HubSpot private-app tokens are not renewable: a 401 stops the connection with a clear error.
    lead_upsert(data={"email": "x@example.org"}, source="test")
    hubspot.dispatch = lambda request: hubspot.error(401, "INVALID_AUTHENTICATION", "expired")
    run = outbox_drain(connection=connection)
    connection.refresh_from_db()
    assert "401" in connection.stopped_reason and run.error.startswith("Stopped")
    assert OutboxItem.objects.get().status == "pending"  # kept for when it is fixed
    assert outbox_drain(connection=connection).error == connection.stopped_reason
    assert timezone.now()
