"""Push through the outbox: first what both connectors do alike, each on its
emulator (the ``crm`` fixture: HubSpot over HTTP, Salesforce over HTTPS),
then HubSpot's own behaviour. Salesforce's own is in test_salesforce_push.py."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from martech import hooks
from martech.crm.models import CrmOwner, OutboxItem, PushState, SyncRun
from martech.crm.services import PayloadBuilder, dead_letter_retry, outbox_drain, owners_pull
from martech.models import Lead
from martech.services.leads import lead_change_stage, lead_set_owner, lead_upsert

pytestmark = pytest.mark.django_db


def _lead(email="ann@example.org", **data):
    lead, _ = lead_upsert(data={"email": email, "first_name": "Ann", "last_name": "Lee", **data}, source="test")
    return lead


# --- Both connectors --------------------------------------------------------


def test_push_state_lost_a_full_resend_finds_the_same_records(crm):
    # A retry of the same push (say the answer was lost, or the push state with
    # it): the upsert by email (HubSpot) or by Martech_Id__c (Salesforce) updates, never adds.
    for i in range(3):
        _lead(email=f"r{i}@example.org")
    assert outbox_drain(connection=crm.connection).pushed == 3
    PushState.objects.all().delete()
    for lead in Lead.objects.all():
        OutboxItem.objects.create(connection=crm.connection, object="contact", local_id=lead.pk)
    run = outbox_drain(connection=crm.connection)
    assert run.pushed == 3
    assert len(crm.people()) == 3


def test_twenty_percent_5xx_still_delivers_everything(crm, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 8}
    crm.emulator.error_rate = 0.2
    count = 3 * crm.batch_size
    for i in range(count):
        _lead(email=f"f{i}@example.org")
    run = outbox_drain(connection=crm.connection)
    assert (run.pushed, run.failed) == (count, 0)
    assert len(crm.people()) == count
    assert crm.sleeps and all(0 <= s <= 2.0 for s in crm.sleeps)  # jittered backoff, capped
    assert run.api_calls == 3 + len(crm.sleeps)


def test_exhausted_retries_keep_items_then_dead_letter_then_replay(crm, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 1, "MAX_ATTEMPTS": 2}
    lead = _lead()
    crm.emulator.error_rate = 1.0
    outbox_drain(connection=crm.connection)
    item = OutboxItem.objects.get(local_id=lead.pk)
    assert item.status == "pending" and item.attempts == 1 and "503" in item.last_error
    OutboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    outbox_drain(connection=crm.connection)
    item.refresh_from_db()
    assert item.status == "dead" and item.attempts == 2
    assert crm.unavailable_code in item.last_error  # the CRM's own error text
    crm.connection.refresh_from_db()
    assert "503" in crm.connection.last_error
    crm.emulator.error_rate = 0.0
    assert dead_letter_retry(items=[item], actor="ops") == 1
    run = outbox_drain(connection=crm.connection)
    assert run.pushed == 1 and len(crm.people()) == 1
    item.refresh_from_db()
    assert item.status == "done"


def test_required_field_empty_is_refused_by_name(crm):
    crm.connection.mappings.filter(local_field="job_title").update(required=True)
    lead = _lead()
    run = outbox_drain(connection=crm.connection)
    item = OutboxItem.objects.get(local_id=lead.pk)
    assert run.failed == 1 and item.status == "dead"
    assert item.last_error == f"job_title is required by the mapping to {crm.remote_field('job_title')} but is empty"
    assert crm.upsert_calls() == 0


def test_default_value_fills_empty_field(crm):
    crm.connection.mappings.filter(local_field="job_title").update(default="Unknown")
    _lead()
    outbox_drain(connection=crm.connection)
    assert crm.person("ann@example.org")[crm.remote_field("job_title")] == "Unknown"


def test_sync_run_is_recorded(crm):
    _lead()
    outbox_drain(connection=crm.connection)
    run = SyncRun.objects.get(kind="push")
    assert run.finished_at and run.pushed == 1 and run.api_calls == 1
    crm.connection.refresh_from_db()
    assert crm.connection.api_calls_used == 1


def test_at_the_daily_allowance_nothing_is_sent(crm):
    _lead()
    conn = crm.connection
    conn.daily_api_limit, conn.api_calls_used, conn.api_calls_day = 10, 10, timezone.now().date()
    conn.save()
    run = outbox_drain(connection=conn)
    assert run.pushed == 0 and "allowance" in run.error
    assert crm.upsert_calls() == 0 and crm.emulator.write_calls() == 0


@pytest.mark.parametrize("retry_after", [1, 7])
def test_429_with_a_short_retry_after_is_waited_out_in_the_call(crm, settings, retry_after):
    # Salesforce sends Retry-After; HubSpot documents none, and one sent anyway
    # (below IN_CALL_RETRY_AFTER_MAX, 10 s) is honoured inside the call too.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_MAX": 60.0}
    _lead()
    crm.emulator.burst_429, crm.emulator.retry_after = 2, retry_after
    run = outbox_drain(connection=crm.connection)
    assert run.pushed == 1
    assert crm.sleeps == [float(retry_after)] * 2
    assert run.api_calls == 3


def test_near_the_allowance_one_small_batch_per_run(crm):
    for i in range(250):
        _lead(email=f"s{i}@example.org")
    conn = crm.connection
    conn.daily_api_limit, conn.api_calls_used = 100, 95  # past SLOWDOWN_AT (90 %)
    conn.api_calls_day = timezone.now().date()
    conn.save()
    run = outbox_drain(connection=conn)
    assert run.pushed == 100 and crm.upsert_calls() == 1
    assert OutboxItem.objects.filter(status="pending").count() == 150


# --- HubSpot ----------------------------------------------------------------


def test_change_is_queued_in_the_same_transaction(connection):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            _lead()
            assert OutboxItem.objects.filter(status="pending").count() == 1
            raise RuntimeError("roll back")
    assert OutboxItem.objects.count() == 0  # rolled back with the write


def test_unmapped_field_change_is_not_queued(connection):
    lead = _lead()
    OutboxItem.objects.all().delete()
    lead_upsert(data={"email": lead.email, "region": "CA"}, source="test")  # region is not mapped
    assert OutboxItem.objects.count() == 0
    lead_upsert(data={"email": lead.email, "job_title": "CTO"}, source="test")
    assert OutboxItem.objects.count() == 1


def test_push_creates_contact_and_skips_unchanged_payload(connection, hubspot):
    lead = _lead(job_title="CMO")
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed, run.api_calls) == (1, 0, 1)
    contact = hubspot.contacts[hubspot.by_email["ann@example.org"]]
    assert contact["properties"]["firstname"] == "Ann"
    assert contact["properties"]["jobtitle"] == "CMO"
    assert contact["properties"]["lifecyclestage"] == "lead"
    lead.refresh_from_db()
    assert lead.hubspot_id == contact["id"]
    assert OutboxItem.objects.get().status == "done"
    assert hubspot.checked >= 1

    # An edit that changes nothing in the payload is queued but not sent.
    OutboxItem.objects.create(connection=connection, object="contact", local_id=lead.pk)
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.skipped, run.api_calls) == (0, 1, 0)

    lead_change_stage(lead=lead, to_stage="mql", reason="test", source="test")
    run = outbox_drain(connection=connection)
    assert run.pushed == 1
    assert contact["properties"]["lifecyclestage"] == "marketingqualifiedlead"
    assert len(hubspot.contacts) == 1


def test_pushed_id_is_not_echoed(connection, hubspot):
    _lead()
    outbox_drain(connection=connection)
    # Storing the HubSpot id (source crm:hubspot) queued nothing new.
    assert not OutboxItem.objects.filter(status="pending").exists()


def test_batches_of_100_and_one_bad_record(connection, hubspot, settings):
    # A refused or deferred record is due again after BACKOFF_BASE * 60 s: keep it out of this drain on a slow machine.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_BASE": 1.0}
    for i in range(150):
        _lead(email=f"p{i}@example.org")
    # HubSpot refuses this one (emulated INVALID_EMAIL); our own check lets it through.
    bad = Lead.objects.get(email="p7@example.org")
    Lead.objects.filter(pk=bad.pk).update(email="p7@example")
    run = outbox_drain(connection=connection)
    assert hubspot.calls[("POST", "/crm/v3/objects/contacts/batch/upsert")] == 2
    assert (run.pushed, run.failed) == (149, 1)
    item = OutboxItem.objects.get(local_id=bad.pk)
    assert item.status == "pending" and item.attempts == 1 and "INVALID_EMAIL" in item.last_error
    assert len(hubspot.contacts) == 149




def test_429_with_a_long_retry_after_pauses_instead_of_waiting(connection, hubspot, no_sleep, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_MAX": 60.0}
    _lead()
    hubspot.burst_429, hubspot.retry_after = 1, 30  # above IN_CALL_RETRY_AFTER_MAX (10 s)
    run = outbox_drain(connection=connection)
    assert no_sleep == [] and run.pushed == 0 and "paused until" in run.error
    connection.refresh_from_db()
    item = OutboxItem.objects.get()
    assert item.attempts == 0 and item.next_attempt_at == connection.paused_until
    # Retry-After's 30 s from the moment of the answer, within the run.
    assert run.started_at + dt.timedelta(seconds=30) <= connection.paused_until
    assert connection.paused_until <= run.finished_at + dt.timedelta(seconds=30)


def test_owner_from_provider_else_by_email_else_not_sent(connection, hubspot, monkeypatch, django_user_model):
    hubspot.add_owner(owner_id="77", email="rep@example.com", first_name="R", last_name="Ep")
    assert owners_pull(connection=connection) == 1
    assert CrmOwner.objects.get().remote_id == "77"
    rep = django_user_model.objects.create(username="rep", email="rep@example.com")
    lead = _lead()
    outbox_drain(connection=connection)
    assert "hubspot_owner_id" not in hubspot.contacts[hubspot.by_email[lead.email]]["properties"]  # no owner yet
    lead_set_owner(lead=lead, owner=rep, reason="test", source="test")
    outbox_drain(connection=connection)
    # Matched by the owner's email against the pulled HubSpot owners.
    assert hubspot.contacts[hubspot.by_email[lead.email]]["properties"]["hubspot_owner_id"] == "77"
    lead.refresh_from_db()
    monkeypatch.setitem(hooks._providers, "crm_owner_id", lambda *, lead_id, provider: "99")
    assert PayloadBuilder(connection).payload(lead)["hubspot_owner_id"] == "99"
    monkeypatch.delitem(hooks._providers, "crm_owner_id")
    Lead.objects.filter(pk=lead.pk).update(owner=None)
    lead.refresh_from_db()
    assert "hubspot_owner_id" not in PayloadBuilder(connection).payload(lead)


def test_the_first_push_carrying_an_owner_is_stamped_once(connection, hubspot, django_user_model):
    """PushState.owner_pushed_at: when the CRM first took the lead's owner
    (the speed-to-lead report's "owner in the CRM")."""
    hubspot.add_owner(owner_id="77", email="rep@example.com", first_name="R", last_name="Ep")
    hubspot.add_owner(owner_id="78", email="rep2@example.com", first_name="R", last_name="Two")
    owners_pull(connection=connection)
    rep = django_user_model.objects.create(username="rep", email="rep@example.com")
    other = django_user_model.objects.create(username="rep2", email="rep2@example.com")
    lead = _lead()
    outbox_drain(connection=connection)
    state = PushState.objects.get(object="contact", local_id=lead.pk)
    assert state.remote_id and state.owner_pushed_at is None  # pushed, without an owner
    lead_set_owner(lead=lead, owner=rep, reason="test", source="test")
    before = dt.datetime.now(dt.timezone.utc)
    outbox_drain(connection=connection)
    state.refresh_from_db()
    first = state.owner_pushed_at
    assert first is not None and first >= before
    # A later owner change (a reassignment) and other edits keep the first time.
    lead_set_owner(lead=lead, owner=other, reason="test", source="test")
    outbox_drain(connection=connection)
    state.refresh_from_db()
    assert hubspot.contacts[state.remote_id]["properties"]["hubspot_owner_id"] == "78"
    assert state.owner_pushed_at == first


def test_an_owner_pushed_before_the_stamp_was_kept_stays_unknown(connection, hubspot, django_user_model):
    hubspot.add_owner(owner_id="77", email="rep@example.com", first_name="R", last_name="Ep")
    owners_pull(connection=connection)
    lead = _lead()
    lead_set_owner(lead=lead, owner=django_user_model.objects.create(username="rep", email="rep@example.com"),
                   reason="test", source="test")
    outbox_drain(connection=connection)
    PushState.objects.filter(local_id=lead.pk).update(owner_pushed_at=None)  # as pushed before the column
    lead_upsert(data={"email": lead.email, "job_title": "CTO"}, source="test")
    outbox_drain(connection=connection)
    assert PushState.objects.get(object="contact", local_id=lead.pk).owner_pushed_at is None
