"""Removals made in the CRM reach us: Salesforce deletions (Get Deleted,
per object with its own cursor) and HubSpot association removals, over HTTP
against the emulators."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from attribution.models import OpportunityContactRole
from attribution.services import opportunity_set_contact, opportunity_set_contacts, opportunity_upsert
from martech.crm.models import OutboxItem, PushState, SyncCursor, WebhookReceipt
from martech.crm.services import deletions_pull, links_pull, outbox_drain, pull_changes, webhook_process
from martech.services.leads import lead_upsert

from .test_salesforce_links import _as_contacts, _campaign, _deal_with_roles, _lead, sf_links  # noqa: F401

pytestmark = pytest.mark.django_db
V = "/services/data/v59.0"


def _minutes_ago(n: int) -> dt.datetime:
    # Get Deleted answers to the minute, up to the current one: a deletion is dated before it.
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=n)


def _get_deleted_calls(salesforce, sobject: str) -> int:
    return salesforce.calls[("GET", f"{V}/sobjects/{sobject}/deleted/")]


# --- Salesforce -----------------------------------------------------------------

def test_member_deleted_in_salesforce_is_marked_removed_and_its_touch_kept(sf_links, salesforce):  # noqa: F811
    from attribution.models import Touchpoint
    from attribution.touchpoints import touchpoints_rebuild
    from martech.crm.types import _campaign_members
    from martech.models import Event

    ann = _lead("ann@example.org")
    campaign = _campaign()
    outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    campaign.refresh_from_db()
    member = salesforce.put("CampaignMember", {"CampaignId": campaign.salesforce_id, "LeadId": ann.salesforce_lead_id,
                                               "Status": "Responded"})
    assert links_pull(connection=sf_links, link="campaign_member").pulled == 1
    event = Event.objects.get(client_event_id=f"crm:salesforce:{member['Id']}")
    touchpoints_rebuild(lead_ids=[ann.pk])
    assert _campaign_members(campaign) == {"contact": [ann.pk]}

    deleted_at = _minutes_ago(5)
    salesforce.delete(member["Id"], at=deleted_at)
    run = deletions_pull(connection=sf_links, key="campaign_member")
    assert (run.object, run.pulled, run.skipped, run.failed, run.error) == ("del:campaign_member", 1, 0, 0, "")
    # One Get Deleted, one queryAll for the deleted member's campaign and person.
    assert run.api_calls == 2 and _get_deleted_calls(salesforce, "CampaignMember") == 1
    assert salesforce.calls[("GET", f"{V}/queryAll/")] == 1
    # The touch stays (attribution history), marked removed; Ann is no longer a member here.
    event.refresh_from_db()
    assert dt.datetime.fromisoformat(event.properties["removed_at"]) == deleted_at.replace(
        microsecond=deleted_at.microsecond // 1000 * 1000)
    assert (event.properties["member_id"], event.campaign_id, event.lead_id) == (member["Id"], campaign.pk, ann.pk)
    assert Touchpoint.objects.filter(event=event).exists()
    assert _campaign_members(campaign) == {"contact": []}
    # The campaign's next push does not create the member again.
    OutboxItem.objects.create(connection=sf_links, object="campaign", local_id=campaign.pk)
    run = outbox_drain(connection=sf_links)
    assert run.failed == 0 and salesforce.records["CampaignMember"] == {}

    # Rerun: the cursor moved to Salesforce's latestDateCovered; nothing more is applied.
    cursor = SyncCursor.objects.get(connection=sf_links, object="del:campaign_member").value
    assert cursor and cursor > member["SystemModstamp"][:16]
    again = deletions_pull(connection=sf_links, key="campaign_member")
    assert (again.pulled, again.failed) == (0, 0)
    assert again.api_calls <= 1  # none within the same minute (Salesforce wants more than a minute)
    assert Event.objects.get(pk=event.pk).properties["removed_at"] == event.properties["removed_at"]


def test_role_deleted_in_salesforce_is_removed_here_and_not_created_again(sf_links, salesforce,  # noqa: F811
                                                                           settings):
    _as_contacts(settings)
    ann, bob = _lead("ann@example.org"), _lead("bob@example.org", "Bo")
    opportunity = _deal_with_roles([{"lead": ann, "role": "Decision Maker", "is_primary": True},
                                    {"lead": bob, "role": "Influencer"}])
    assert outbox_drain(connection=sf_links).failed == 0
    bob.refresh_from_db()
    (bob_role,) = salesforce.find("OpportunityContactRole", ContactId=bob.salesforce_contact_id)
    salesforce.delete(bob_role["Id"], at=_minutes_ago(3))

    run = deletions_pull(connection=sf_links, key="contact_role")
    assert (run.pulled, run.skipped, run.failed, run.error) == (1, 0, 0, "")
    roles = {r.lead_id: (r.role, r.is_primary) for r in OpportunityContactRole.objects.filter(opportunity=opportunity)}
    assert roles == {ann.pk: ("Decision Maker", True)}
    state = PushState.objects.get(connection=sf_links, object="deal", local_id=opportunity.pk)
    assert set(state.links["contact_role"]) == {ann.refresh_from_db() or ann.salesforce_contact_id}
    # Pulled from Salesforce: not queued back.
    assert not OutboxItem.objects.filter(object="deal", status="pending").exists()

    # The deal's next push (an edit here) does not create Bob's role again.
    opportunity_upsert(opportunity=opportunity, data={"amount": Decimal("300")}, source="test")
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    assert [r["ContactId"] for r in salesforce.records["OpportunityContactRole"].values()] == [
        ann.salesforce_contact_id]
    # A role pull and a second deletions run change nothing.
    links_pull(connection=sf_links, link="contact_role", full=True)
    assert deletions_pull(connection=sf_links, key="contact_role").pulled == 0
    assert OpportunityContactRole.objects.filter(opportunity=opportunity).count() == 1


def test_role_added_here_and_not_pushed_survives_a_deletion_run(sf_links, salesforce, settings):  # noqa: F811
    _as_contacts(settings)
    ann, cy = _lead("ann@example.org"), _lead("cy@example.org", "Cy")
    opportunity = _deal_with_roles([{"lead": ann, "is_primary": True}])
    outbox_drain(connection=sf_links)
    # Sales deletes Ann's role; here Cy is added meanwhile (not pushed yet).
    (ann_role,) = salesforce.records["OpportunityContactRole"].values()
    salesforce.delete(ann_role["Id"], at=_minutes_ago(2))
    opportunity_set_contact(opportunity=opportunity, lead=cy, role="Evaluator", source="test")
    run = deletions_pull(connection=sf_links, key="contact_role")
    assert run.pulled == 1
    assert list(OpportunityContactRole.objects.filter(opportunity=opportunity).values_list("lead_id", flat=True)) \
        == [cy.pk]
    run = outbox_drain(connection=sf_links)
    assert run.failed == 0
    cy.refresh_from_db()
    assert [r["ContactId"] for r in salesforce.records["OpportunityContactRole"].values()] == [
        cy.salesforce_contact_id]


def test_lead_deleted_in_salesforce_is_recorded_and_kept(sf_links, salesforce, caplog):  # noqa: F811
    from martech.crm.tasks import pull_all
    from martech.models import Lead

    ann = _lead("ann@example.org")
    outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    lead_id = ann.salesforce_lead_id
    assert lead_id.startswith("00Q")
    salesforce.delete(lead_id, at=_minutes_ago(4))

    out = pull_all()
    assert out["salesforce:del:contact"] == 1
    ann = Lead.objects.get(pk=ann.pk)  # kept: the marketing record outlives the CRM's
    assert ann.salesforce_lead_id is None
    state = PushState.objects.get(connection=sf_links, object="contact", local_id=ann.pk)
    assert (state.remote_id, state.payload_hash) == ("", "")
    run = sf_links.runs.get(object="del:contact")
    assert (run.pulled, run.skipped, run.failed, run.error) == (1, 0, 0, "")
    # Get Deleted once per sObject the leads live in, both with the same window.
    assert run.api_calls == 2
    assert (_get_deleted_calls(salesforce, "Lead"), _get_deleted_calls(salesforce, "Contact")) == (1, 1)
    assert f"Contact / Lead {lead_id}" in caplog.text and f"#{ann.pk} is kept here" in caplog.text
    assert not OutboxItem.objects.filter(object="contact", status="pending").exists()

    # Rerun: the cursor advanced; the deletion is not applied twice.
    cursor = SyncCursor.objects.get(connection=sf_links, object="del:contact").value
    assert cursor.endswith(":00.000+0000")  # Salesforce's latestDateCovered, to the minute
    assert deletions_pull(connection=sf_links, key="contact").pulled == 0
    assert SyncCursor.objects.get(connection=sf_links, object="del:contact").value >= cursor

    # A change here pushes it again: a new Lead (upserted by our id), its id stored.
    lead_upsert(data={"email": "ann@example.org", "first_name": "Ann"}, source="test")
    assert outbox_drain(connection=sf_links).pushed == 1
    ann.refresh_from_db()
    assert ann.salesforce_lead_id and ann.salesforce_lead_id != lead_id


def test_get_deleted_emulated_with_salesforce_shape_and_rules(sf_links, salesforce):  # noqa: F811
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    from martech.crm.connectors.salesforce import SalesforceConnector

    sf = SalesforceConnector(sf_links).sf
    lead = salesforce.put("Lead", {"LastName": "Lee", "Company": "Acme"})
    at = _minutes_ago(10).replace(second=30, microsecond=0)
    salesforce.delete(lead["Id"], at=at)
    end = _minutes_ago(0)
    answer = sf.Lead.deleted(at - dt.timedelta(minutes=5), end)
    assert answer["deletedRecords"] == [{"id": lead["Id"], "deletedDate": at.strftime("%Y-%m-%dT%H:%M:%S.000+0000")}]
    assert answer["latestDateCovered"] == end.strftime("%Y-%m-%dT%H:%M:00.000+0000")
    assert set(answer) == {"deletedRecords", "earliestDateAvailable", "latestDateCovered"}
    # Seconds are ignored: a window of one minute or less is refused, and so is one older than the log.
    for start, stop in [(end - dt.timedelta(seconds=50), end), (end - dt.timedelta(days=20), end)]:
        with pytest.raises(SalesforceMalformedRequest) as caught:
            sf.Lead.deleted(start, stop)
        assert caught.value.content[0]["errorCode"] == "INVALID_REPLICATION_DATE"


# --- HubSpot --------------------------------------------------------------------

def _hs_deal(deal_mappings, hubspot, roles, account=None):
    opportunity, _ = opportunity_upsert(data={"name": "Big deal", "amount": Decimal("10"), "stage": "qualification",
                                              **({"account": account} if account else {})}, source="test")
    opportunity_set_contacts(opportunity=opportunity, contacts=roles, source="test")
    assert outbox_drain(connection=deal_mappings).failed == 0
    return opportunity, hubspot.find("deals", str(opportunity.pk))["id"]


def test_contact_removed_from_a_deal_in_hubspot_loses_its_role_here(deal_mappings, hubspot):
    keep, _ = lead_upsert(data={"email": "keep@acme.com"}, source="test")
    drop, _ = lead_upsert(data={"email": "drop@acme.com"}, source="test")
    late, _ = lead_upsert(data={"email": "late@acme.com"}, source="test")
    opportunity, deal_id = _hs_deal(deal_mappings, hubspot, [{"lead": keep, "is_primary": True}, {"lead": drop}])
    keep_id, drop_id = hubspot.find("contacts", "keep@acme.com")["id"], hubspot.find("contacts", "drop@acme.com")["id"]
    # A role added here and not pushed yet; HubSpot does not have it and it must stay.
    opportunity_set_contact(opportunity=opportunity, lead=late, source="test")
    hubspot.dissociate("deals", deal_id, "contacts", drop_id)
    hubspot.put("deals", {"dealname": "Big deal"}, object_id=deal_id)

    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    assert set(OpportunityContactRole.objects.filter(opportunity=opportunity).values_list("lead_id", flat=True)) \
        == {keep.pk, late.pk}
    assert PushState.objects.get(object="deal", local_id=opportunity.pk).associations["contact"] == [keep_id]
    # The pending push still sends Late's role, and does not put Drop back.
    assert outbox_drain(connection=deal_mappings).failed == 0
    late_id = hubspot.find("contacts", "late@acme.com")["id"]
    assert hubspot.associated("deals", deal_id, "contacts") == {keep_id, late_id}


def test_company_removed_from_a_deal_in_hubspot_clears_its_account(deal_mappings, hubspot):
    from martech.services.accounts import account_upsert

    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    lead, _ = lead_upsert(data={"email": "buyer@acme.com"}, source="test")
    opportunity, deal_id = _hs_deal(deal_mappings, hubspot, [{"lead": lead, "is_primary": True}], account=account)
    company_id = hubspot.find("companies", "acme.com")["id"]
    hubspot.dissociate("deals", deal_id, "companies", company_id)
    hubspot.put("deals", {"dealname": "Big deal"}, object_id=deal_id)

    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    opportunity.refresh_from_db()
    assert opportunity.account is None
    assert OpportunityContactRole.objects.filter(opportunity=opportunity).count() == 1  # contacts untouched
    assert "company" not in PushState.objects.get(object="deal", local_id=opportunity.pk).associations
    # Both sides agree: nothing to send back.
    assert not OutboxItem.objects.filter(object="deal", status="pending").exists()
    assert hubspot.associated("deals", deal_id, "companies") == set()


@pytest.mark.parametrize("direction", ["DEAL_TO_CONTACT", "CONTACT_TO_DEAL"])
def test_association_change_webhook_removes_the_role(deal_mappings, hubspot, direction):
    keep, _ = lead_upsert(data={"email": "keep@acme.com"}, source="test")
    drop, _ = lead_upsert(data={"email": "drop@acme.com"}, source="test")
    opportunity, deal_id = _hs_deal(deal_mappings, hubspot, [{"lead": keep, "is_primary": True}, {"lead": drop}])
    drop_id = hubspot.find("contacts", "drop@acme.com")["id"]
    # Removed in HubSpot; the deal's last-modified date does not move (the webhook brings it).
    hubspot.dissociate("deals", deal_id, "contacts", drop_id)
    ends = (deal_id, drop_id) if direction == "DEAL_TO_CONTACT" else (drop_id, deal_id)
    receipt = WebhookReceipt.objects.create(provider="hubspot", event_id="77", payload={
        "eventId": 77, "subscriptionType": "deal.associationChange", "fromObjectId": int(ends[0]),
        "toObjectId": int(ends[1]), "associationType": direction, "associationRemoved": True,
        "isPrimaryAssociation": False, "occurredAt": 1})
    assert webhook_process(receipt_ids=[receipt.pk]) == 1
    receipt.refresh_from_db()
    assert receipt.error == ""
    assert list(OpportunityContactRole.objects.filter(opportunity=opportunity).values_list("lead_id", flat=True)) \
        == [keep.pk]


def test_role_deleted_and_made_again_in_salesforce_stays(sf_links, salesforce, settings):  # noqa: F811
    _as_contacts(settings)
    ann = _lead("ann@example.org")
    opportunity = _deal_with_roles([{"lead": ann, "role": "Decision Maker", "is_primary": True}])
    outbox_drain(connection=sf_links)
    (old,) = salesforce.records["OpportunityContactRole"].values()
    salesforce.delete(old["Id"], at=_minutes_ago(3))
    salesforce.put("OpportunityContactRole", {"OpportunityId": old["OpportunityId"], "ContactId": old["ContactId"],
                                              "Role": "Economic Buyer", "IsPrimary": True})
    assert links_pull(connection=sf_links, link="contact_role").pulled == 1
    run = deletions_pull(connection=sf_links, key="contact_role")
    assert (run.pulled, run.skipped, run.failed) == (0, 1, 0)
    (role,) = OpportunityContactRole.objects.filter(opportunity=opportunity)
    assert (role.lead_id, role.role, role.is_primary) == (ann.pk, "Economic Buyer", True)
