"""Deals deleted on either side stay deleted, over HTTP against the emulators.

- Deleted here: the deal's CRM copy is deleted through the outbox (HubSpot
  batch archive, Salesforce Collections delete) and a tombstone keeps every
  pull (incremental, full, webhook) from creating it again; a connection that
  only pulls deals keeps its copy, and the tombstone alone holds.
- Deleted (archived) in the CRM: HubSpot's ``archived=true`` list and
  Salesforce's Get Deleted bring the deletion, and the deal goes here with
  its credits and its part of the rollup.
"""
from __future__ import annotations

import datetime as dt
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum

from attribution.computation import ALL_MODELS, attribution_compute, rollup_refresh
from attribution.models import AttributionCredit, AttributionRollup, Opportunity, OpportunityDeletion
from attribution.services import opportunity_change_stage, opportunity_delete, opportunity_set_contact, \
    opportunity_upsert, stage_for
from attribution.touchpoints import touchpoints_rebuild
from martech.crm.models import FieldMapping, OutboxItem, PushState, WebhookReceipt
from martech.crm.services import deleted_keys, deletions_pull, outbox_drain, pull_changes, webhook_process
from martech.services.leads import lead_upsert
from tests.factories import EventFactory

from .test_salesforce_links import _as_contacts, sf_links  # noqa: F401

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 2, 2, 9, 0, tzinfo=dt.timezone.utc)
ARCHIVE = ("POST", "/crm/v3/objects/deals/batch/archive")
V = "/services/data/v59.0"


def _won_deal_with_credits(email="buyer@acme.com", amount="700.00"):
    lead, _ = lead_upsert(data={"email": email, "last_name": "Buyer"}, source="test")
    for i, channel in enumerate(["email", "paid_search"]):
        EventFactory(lead=lead, occurred_at=T0 + timedelta(hours=i), channel=channel, utm_source="x")
    touchpoints_rebuild(lead_ids=[lead.pk])
    deal, _ = opportunity_upsert(data={"name": "Acme", "amount": Decimal(amount), "created_at": T0 + timedelta(days=5)},
                                 source="test")
    opportunity_set_contact(opportunity=deal, lead=lead, is_primary=True, source="test")
    opportunity_change_stage(opportunity=deal, to_stage=stage_for(pipeline=deal.pipeline, key="closed_won"),
                             source="test", at=T0 + timedelta(days=20))
    attribution_compute(opportunity_ids=[deal.pk])
    assert AttributionCredit.objects.filter(opportunity=deal).exists()
    return deal


def _rollup_matches_credits() -> None:
    """The rollup the incremental delete left equals one rebuilt from the credits that remain."""
    fields = ("model", "basis", "day", "channel", "campaign_id", "credit", "currency")
    before = sorted(AttributionRollup.objects.values_list(*fields), key=str)
    rollup_refresh(models=list(ALL_MODELS))
    assert before == sorted(AttributionRollup.objects.values_list(*fields), key=str)


# --- HubSpot -------------------------------------------------------------------

def test_deal_deleted_here_is_archived_in_hubspot_and_never_pulled_back(deal_mappings, hubspot):
    deal = _won_deal_with_credits()
    other = _won_deal_with_credits("other@acme.com", amount="10.00")
    assert outbox_drain(connection=deal_mappings).failed == 0
    deal.refresh_from_db()
    remote_id = deal.hubspot_id
    assert hubspot.deals[remote_id]["properties"]["dealname"] == "Acme"

    result = opportunity_delete(opportunity=deal, source="api", actor=None)
    assert result["opportunities"] == 1 and result["credits"] > 0 and result["crm_deletes"] == 1
    row = OpportunityDeletion.objects.get()
    assert (row.connection, row.remote_id, row.opportunity_id, row.name, row.amount, row.currency, row.status) == (
        deal_mappings, remote_id, deal.pk, "Acme", Decimal("700.00"), "USD", OpportunityDeletion.Status.PENDING)
    assert not PushState.objects.filter(object="deal", local_id=deal.pk).exists()
    assert not AttributionCredit.objects.filter(opportunity_id=deal.pk).exists()
    _rollup_matches_credits()

    # A salesperson edits it in HubSpot before the drain: the pull does not create it again.
    hubspot.put("deals", {"dealname": "Acme (edited)"}, object_id=remote_id)
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.failed, run.error) == (0, "")
    assert not Opportunity.objects.filter(hubspot_id=remote_id).exists()
    # Nor does a webhook naming it.
    receipt = WebhookReceipt.objects.create(provider="hubspot", event_id="77", payload={
        "eventId": 77, "subscriptionType": "deal.propertyChange", "objectId": int(remote_id)})
    webhook_process(receipt_ids=[receipt.pk])
    assert not Opportunity.objects.filter(hubspot_id=remote_id).exists()

    hubspot.calls.clear()
    run = outbox_drain(connection=deal_mappings)
    assert (run.pushed, run.failed, run.api_calls) == (1, 0, 1)
    assert hubspot.calls[ARCHIVE] == 1
    assert remote_id not in hubspot.deals and remote_id in hubspot.archived["deals"]
    other.refresh_from_db()
    assert other.hubspot_id in hubspot.deals  # the other deal is untouched
    row.refresh_from_db()
    assert row.status == OpportunityDeletion.Status.DONE and row.done_at is not None
    # A full pull does not bring it back either (it is archived there now), and nothing more is sent.
    pull_changes(connection=deal_mappings, obj="deal", full=True)
    assert list(Opportunity.objects.values_list("pk", flat=True)) == [other.pk]
    assert outbox_drain(connection=deal_mappings).api_calls == 0
    # Our own deletion comes back in HubSpot's archived list: nothing here changes.
    run = deletions_pull(connection=deal_mappings, key="deal")
    assert (run.pulled, run.failed, run.error) == (0, 0, "")
    assert list(Opportunity.objects.values_list("pk", flat=True)) == [other.pk]


def test_deal_archived_in_hubspot_is_deleted_here_with_credits_and_rollup(deal_mappings, hubspot):
    deal = _won_deal_with_credits()
    keep = _won_deal_with_credits("keep@acme.com", amount="10.00")
    outbox_drain(connection=deal_mappings)
    deal.refresh_from_db()
    keep.refresh_from_db()
    assert deleted_keys(connection=deal_mappings, keys=["company", "contact", "deal"]) == ["deal"]

    hubspot.calls.clear()
    hubspot.archive("deals", deal.hubspot_id)
    run = deletions_pull(connection=deal_mappings, key="deal")
    assert (run.object, run.pulled, run.skipped, run.failed, run.error) == ("del:deal", 1, 0, 0, "")
    assert run.api_calls == 1
    assert hubspot.calls[("GET", "/crm/v3/objects/deals")] == 1
    assert not Opportunity.objects.filter(pk=deal.pk).exists()
    assert not AttributionCredit.objects.filter(opportunity_id=deal.pk).exists()
    assert AttributionCredit.objects.filter(opportunity=keep).exists()
    _rollup_matches_credits()
    assert AttributionRollup.objects.filter(model="linear", basis="won").aggregate(
        total=Sum("credit"))["total"] == Decimal("10.00")
    # Deleted there: no delete is sent back; it is recorded as deleted in the CRM.
    assert not OutboxItem.objects.filter(object="deal_deletion").exists()
    assert OpportunityDeletion.objects.get().status == OpportunityDeletion.Status.REMOTE
    # Rerun: the cursor is the archive time; the same deletion is not applied twice.
    again = deletions_pull(connection=deal_mappings, key="deal")
    assert (again.pulled, again.failed) == (0, 0)
    assert Opportunity.objects.filter(pk=keep.pk).exists()
    # A salesperson restores it from HubSpot's recycling bin: no tombstone, so it comes back.
    hubspot.restore("deals", deal.hubspot_id)
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert run.failed == 0, run.error
    assert Opportunity.objects.count() == 2  # the kept deal, and this one again
    back = Opportunity.objects.get(hubspot_id=deal.hubspot_id)
    assert (back.name, back.amount, back.stage.key) == ("Acme", Decimal("700.00"), "closed_won")


def test_archived_list_pages_and_cursor(deal_mappings, hubspot):
    """HubSpot filters the archived list by nothing: every page is read, and
    only archives at or after the cursor are applied."""
    deals = []
    for i in range(3):
        d, _ = opportunity_upsert(data={"name": f"D{i}", "amount": Decimal("5")}, source="test")
        deals.append(d)
    outbox_drain(connection=deal_mappings)
    for d in deals:
        d.refresh_from_db()
    old = dt.datetime.now(dt.timezone.utc) - timedelta(days=2)
    hubspot.archive("deals", deals[0].hubspot_id, at=old)
    from martech.crm.models import SyncCursor

    SyncCursor.objects.create(connection=deal_mappings, object="del:deal",
                              value=(old + timedelta(hours=1)).isoformat())
    for d in deals[1:]:
        hubspot.archive("deals", d.hubspot_id)
    from martech.crm.connectors.hubspot import HubSpotConnector

    connector = HubSpotConnector(deal_mappings)
    page = connector.deleted_since("deal", (old + timedelta(hours=1)).isoformat())
    assert [r for r, _ in page.records] == [deals[1].hubspot_id, deals[2].hubspot_id]
    run = deletions_pull(connection=deal_mappings, key="deal")
    assert run.pulled == 2
    # The one archived before the cursor was not read as new: it stays here.
    assert list(Opportunity.objects.values_list("pk", flat=True)) == [deals[0].pk]


def test_pull_only_connection_keeps_its_copy_and_the_tombstone_holds(deal_mappings, hubspot):
    deal = _won_deal_with_credits()
    outbox_drain(connection=deal_mappings)
    deal.refresh_from_db()
    FieldMapping.objects.filter(connection=deal_mappings, object="deal").update(direction="pull")
    result = opportunity_delete(opportunity=deal, source="admin:ops", actor=None)
    assert result["crm_deletes"] == 0
    assert OpportunityDeletion.objects.get().status == OpportunityDeletion.Status.KEPT
    assert not OutboxItem.objects.filter(object="deal_deletion").exists()
    hubspot.put("deals", {"dealname": "Still in HubSpot"}, object_id=deal.hubspot_id)
    run = pull_changes(connection=deal_mappings, obj="deal", full=True)
    assert run.failed == 0
    assert not Opportunity.objects.exists()
    assert deal.hubspot_id in hubspot.deals


def test_deal_never_pushed_leaves_no_tombstone(deal_mappings, hubspot):
    deal, _ = opportunity_upsert(data={"name": "Local only", "amount": Decimal("5")}, source="test")
    assert OutboxItem.objects.filter(object="deal", local_id=deal.pk, status="pending").exists()
    assert opportunity_delete(opportunity=deal, source="api")["crm_deletes"] == 0
    assert not OpportunityDeletion.objects.exists()
    # Its queued push went with it: the drain has nothing to dead-letter.
    run = outbox_drain(connection=deal_mappings)
    assert (run.failed, run.api_calls) == (0, 0)
    assert not hubspot.deals


# --- Salesforce ----------------------------------------------------------------

def _minutes_ago(n: int) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=n)


def test_deal_deleted_here_is_deleted_in_salesforce(sf_links, salesforce):  # noqa: F811
    deal, _ = opportunity_upsert(data={"name": "Acme renewal", "amount": Decimal("100")}, source="test")
    gone, _ = opportunity_upsert(data={"name": "Gone already", "amount": Decimal("5")}, source="test")
    assert outbox_drain(connection=sf_links).failed == 0
    deal.refresh_from_db()
    gone.refresh_from_db()
    assert deal.salesforce_id in salesforce.records["Opportunity"]
    # One of them a salesperson deletes in Salesforce before our delete goes.
    salesforce.delete(gone.salesforce_id)
    assert opportunity_delete(opportunity=deal, source="api")["crm_deletes"] == 1
    assert opportunity_delete(opportunity=gone, source="api")["crm_deletes"] == 1
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed, run.api_calls) == (2, 0, 1)  # one Collections delete for both
    assert salesforce.calls[("DELETE", f"{V}/composite/sobjects")] == 1
    assert deal.salesforce_id not in salesforce.records["Opportunity"]
    assert deal.salesforce_id in salesforce.recycled["Opportunity"]
    assert set(OpportunityDeletion.objects.values_list("status", flat=True)) == {OpportunityDeletion.Status.DONE}
    # Salesforce's Get Deleted lists our own delete: nothing here to remove.
    run = deletions_pull(connection=sf_links, key="deal")
    assert (run.pulled, run.failed) == (0, 0)


def test_deal_deleted_in_salesforce_is_deleted_here(sf_links, salesforce, settings):  # noqa: F811
    _as_contacts(settings)  # contact roles name Contacts
    deal = _won_deal_with_credits()
    keep = _won_deal_with_credits("keep@acme.com", amount="10.00")
    run = outbox_drain(connection=sf_links)
    assert run.failed == 0, run.error
    deal.refresh_from_db()
    assert deal.salesforce_id and salesforce.records["OpportunityContactRole"]
    salesforce.delete(deal.salesforce_id, at=_minutes_ago(5))
    run = deletions_pull(connection=sf_links, key="deal")
    assert (run.object, run.pulled, run.failed, run.error) == ("del:deal", 1, 0, "")
    assert salesforce.calls[("GET", f"{V}/sobjects/Opportunity/deleted/")] == 1
    assert list(Opportunity.objects.values_list("pk", flat=True)) == [keep.pk]
    assert not AttributionCredit.objects.filter(opportunity_id=deal.pk).exists()
    _rollup_matches_credits()
    assert not OutboxItem.objects.filter(object="deal_deletion").exists()
    # queryAll still finds it (IsDeleted): a full pull reads live records only and does not bring it back.
    pull_changes(connection=sf_links, obj="deal", full=True)
    assert list(Opportunity.objects.values_list("pk", flat=True)) == [keep.pk]


def test_a_delete_salesforce_cannot_take_stays_queued_with_the_reason(sf_links, salesforce):  # noqa: F811
    # A deal given, by hand, the id of an Account: the delete names it and is not sent.
    deal, _ = opportunity_upsert(data={"name": "Wrong id", "amount": Decimal("5"),
                                       "salesforce_id": "001000000000000AAA"}, source="test")
    assert opportunity_delete(opportunity=deal, source="api")["crm_deletes"] == 1
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed, run.api_calls) == (0, 1, 0)
    item = OutboxItem.objects.get(object="deal_deletion")
    assert item.status == "pending" and item.attempts == 1
    assert "deal 001000000000000AAA (Wrong id): not a Salesforce Opportunity id" in item.last_error
    assert OpportunityDeletion.objects.get().status == OpportunityDeletion.Status.PENDING


def test_hubspot_deal_deletion_webhook_deletes_it_here_at_once(deal_mappings, hubspot):
    deal = _won_deal_with_credits()
    outbox_drain(connection=deal_mappings)
    deal.refresh_from_db()
    hubspot.archive("deals", deal.hubspot_id)
    hubspot.calls.clear()
    receipt = WebhookReceipt.objects.create(provider="hubspot", event_id="88", payload={
        "eventId": 88, "subscriptionType": "deal.deletion", "objectId": int(deal.hubspot_id),
        "occurredAt": 1796000000000})
    assert webhook_process(receipt_ids=[receipt.pk]) == 1
    receipt.refresh_from_db()
    assert receipt.error == "" and receipt.processed_at
    assert not Opportunity.objects.filter(pk=deal.pk).exists()
    assert not AttributionCredit.objects.filter(opportunity_id=deal.pk).exists()
    _rollup_matches_credits()
    assert sum(hubspot.calls.values()) == 0  # nothing to fetch
    # Delivered again (HubSpot retries): nothing more happens.
    again = WebhookReceipt.objects.create(provider="hubspot", event_id="89", payload=receipt.payload)
    webhook_process(receipt_ids=[again.pk])
    again.refresh_from_db()
    assert again.error == "" and OpportunityDeletion.objects.count() == 1
