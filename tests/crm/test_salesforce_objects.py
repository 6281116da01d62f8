"""Accounts and opportunities through the object registry to Salesforce
Account and Opportunity, over HTTPS."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from martech.crm import objects
from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import FieldMapping, OutboxItem
from martech.crm.services import outbox_drain, payload_preview, pull_changes
from martech.models import Account
from martech.services.accounts import account_upsert

pytestmark = pytest.mark.django_db
# Our default pipeline's stage keys -> Salesforce's standard StageName values.
SF_STAGES = {"prospecting": "Prospecting", "qualification": "Qualification", "proposal": "Proposal/Price Quote",
             "negotiation": "Negotiation/Review", "closed_won": "Closed Won", "closed_lost": "Closed Lost"}


@pytest.fixture
def sf_objects(sf_connection):
    for obj, local, remote, kind, extra in [
        ("company", "name", "Name", "text", {}),
        ("company", "domain", "Website", "text", {}),
        ("company", "industry", "Industry", "text", {"system_of_record": "remote"}),
        ("company", "employee_count", "NumberOfEmployees", "number", {}),
        ("deal", "name", "Name", "text", {}),
        ("deal", "amount", "Amount", "number", {}),
        ("deal", "closed_at", "CloseDate", "date", {"default": "2099-12-31", "direction": "push"}),
        ("deal", "stage", "StageName", "picklist", {"value_map": SF_STAGES}),
    ]:
        FieldMapping.objects.create(connection=sf_connection, object=obj, local_field=local, remote_field=remote,
                                    kind=kind, **extra)
    return sf_connection


def test_salesforce_declares_contact_company_campaign_deal_task():
    declared = [o.key for o in objects.synced_by(SalesforceConnector.__new__(SalesforceConnector))]
    # Accounts before the leads, campaigns and deals that point at them; segment mirrors (lists),
    # deals deleted here, then erasures (privacy: a person's record deleted there) last.
    assert declared == ["company", "contact", "campaign", "deal", "task", "list", "deal_deletion", "erasure"]


def test_account_push_and_pull(sf_objects, salesforce):
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com", "employee_count": 120}, source="test")
    run = outbox_drain(connection=sf_objects)
    assert (run.pushed, run.failed) == (1, 0)
    (record,) = salesforce.records["Account"].values()
    assert (record["Name"], record["Website"], record["NumberOfEmployees"]) == ("Acme", "acme.com", "120")
    assert record["Martech_Id__c"] == str(account.pk)
    account.refresh_from_db()
    assert account.salesforce_id == record["Id"] and record["Id"].startswith("001")
    # Sales edits the industry in Salesforce; an Account made there comes in too.
    salesforce.put("Account", {"Id": record["Id"], "Industry": "Retail"})
    salesforce.put("Account", {"Name": "Globex", "Website": "globex.com"})
    run = pull_changes(connection=sf_objects, obj="company")
    assert (run.pulled, run.failed) == (2, 0)
    account.refresh_from_db()
    assert account.industry == "Retail"
    assert Account.objects.get(domain="globex.com").salesforce_id.startswith("001")


def test_opportunity_push_with_account_and_pull_back(sf_objects, salesforce):
    from attribution.models import Opportunity
    from attribution.services import opportunity_upsert

    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    # The default pipeline's first stage (open), so no closed_at: CloseDate takes the mapping's default.
    opportunity, _ = opportunity_upsert(data={"name": "Acme renewal", "amount": Decimal("1200.50"),
                                              "account": account}, source="test")
    assert opportunity.closed_at is None
    assert OutboxItem.objects.filter(object="deal", status="pending").count() == 1
    run = outbox_drain(connection=sf_objects)
    assert (run.pushed, run.failed) == (2, 0)  # the Account first, then the Opportunity pointing at it
    (acct,) = salesforce.records["Account"].values()
    (opp,) = salesforce.records["Opportunity"].values()
    assert (opp["Name"], opp["Amount"], opp["CloseDate"], opp["AccountId"]) == ("Acme renewal", "1200.5",
                                                                                "2099-12-31", acct["Id"])
    assert opp["StageName"] == "Prospecting"
    opportunity.refresh_from_db()
    assert opportunity.salesforce_id == opp["Id"]
    preview = payload_preview(connection=sf_objects, obj="deal", instance=opportunity)
    assert preview["path"] == "/services/data/v59.0/composite/sobjects"  # known now: updated by Id
    assert preview["body"]["records"][0]["AccountId"] == acct["Id"]
    salesforce.put("Opportunity", {"Id": opp["Id"], "Amount": "5000", "StageName": "Negotiation/Review"}, at=dt.datetime.now(dt.timezone.utc)
                   + dt.timedelta(seconds=5))
    sf_objects.conflict_rule = "most_recent"
    sf_objects.save()
    run = pull_changes(connection=sf_objects, obj="deal")
    assert run.pulled == 1, run.error
    opportunity.refresh_from_db()
    assert opportunity.amount == Decimal("5000")
    assert opportunity.stage.key == "negotiation"  # through the picklist value map, via opportunity_change_stage
    assert Opportunity.objects.count() == 1
    # An Opportunity made in Salesforce on that Account comes in linked to our account (AccountId).
    salesforce.put("Opportunity", {"Name": "Upsell", "StageName": "Prospecting", "CloseDate": "2027-01-31",
                                   "AccountId": acct["Id"], "Amount": "10"})
    run = pull_changes(connection=sf_objects, obj="deal", full=True)  # the edit above was stamped 5 s ahead
    assert (run.pulled, run.failed) == (2, 0), run.error  # both Opportunities again (full), no new duplicate
    assert Opportunity.objects.count() == 2
    assert Opportunity.objects.get(name="Upsell").account == account


@pytest.fixture
def sf_campaigns(sf_connection):
    for local, remote, kind, extra in [("name", "Name", "text", {}), ("start_date", "StartDate", "date", {}),
                                       ("budget", "BudgetedCost", "number", {})]:
        FieldMapping.objects.create(connection=sf_connection, object="campaign", local_field=local,
                                    remote_field=remote, kind=kind, **extra)
    return sf_connection


def _touch(lead, campaign, n=1):
    from django.utils import timezone

    from martech.models import Event, EventType

    event_type, _ = EventType.objects.get_or_create(name="page_view")
    for i in range(n):
        Event.objects.create(client_event_id=f"{lead.pk}-{campaign.pk}-{i}", event_type=event_type, lead=lead,
                             campaign=campaign, occurred_at=timezone.now())


def test_campaign_and_members_push(sf_campaigns, salesforce):
    from martech.models import Campaign
    from martech.services.campaigns import campaign_save
    from martech.services.leads import lead_upsert

    ann, _ = lead_upsert(data={"email": "ann@example.org", "last_name": "Lee"}, source="test")
    bob, _ = lead_upsert(data={"email": "bob@example.org", "last_name": "Bo"}, source="test")
    outbox_drain(connection=sf_campaigns)  # the leads reach Salesforce first
    ann.refresh_from_db()
    bob.refresh_from_db()
    campaign = campaign_save(campaign=Campaign(name="Spring webinar", utm_campaign="spring",
                                               budget=Decimal("2500.00")), source="test")
    assert OutboxItem.objects.filter(object="campaign", local_id=campaign.pk, status="pending").exists()
    _touch(ann, campaign, n=2)
    _touch(bob, campaign)
    run = outbox_drain(connection=sf_campaigns)
    assert (run.pushed, run.failed) == (1, 0)
    (sf_campaign,) = salesforce.records["Campaign"].values()
    assert (sf_campaign["Name"], sf_campaign["BudgetedCost"]) == ("Spring webinar", "2500")
    members = salesforce.records["CampaignMember"].values()
    assert sorted((m["CampaignId"], m["LeadId"], m["Status"]) for m in members) == sorted(
        [(sf_campaign["Id"], ann.salesforce_lead_id, "Responded"), (sf_campaign["Id"], bob.salesforce_lead_id,
                                                                    "Responded")])
    campaign.refresh_from_db()
    assert campaign.salesforce_id == sf_campaign["Id"]
    assert salesforce.calls[("PATCH", "/services/data/v59.0/composite/sobjects/CampaignMember/Martech_Id__c")] == 1

    # Re-queued unchanged: nothing sent. A new member: the campaign and its members again, no duplicates.
    OutboxItem.objects.create(connection=sf_campaigns, object="campaign", local_id=campaign.pk)
    assert outbox_drain(connection=sf_campaigns).api_calls == 0
    cy, _ = lead_upsert(data={"email": "cy@example.org", "last_name": "Cy"}, source="test")
    outbox_drain(connection=sf_campaigns)
    _touch(cy, campaign)
    OutboxItem.objects.create(connection=sf_campaigns, object="campaign", local_id=campaign.pk)
    run = outbox_drain(connection=sf_campaigns)
    assert run.pushed == 1
    assert len(salesforce.records["CampaignMember"]) == 3 and len(salesforce.records["Campaign"]) == 1


def test_campaign_waits_for_members_not_in_salesforce_and_member_refusal(sf_campaigns, salesforce):
    from martech.models import Campaign
    from martech.services.campaigns import campaign_save
    from martech.services.leads import lead_upsert

    campaign = campaign_save(campaign=Campaign(name="Fair", utm_campaign="fair"), source="test")
    dee, _ = lead_upsert(data={"email": "dee@example.org", "last_name": "Dee"}, source="test")
    OutboxItem.objects.filter(object="contact").delete()  # dee is not in Salesforce and not queued
    _touch(dee, campaign)
    run = outbox_drain(connection=sf_campaigns)
    item = OutboxItem.objects.get(object="campaign", local_id=campaign.pk)
    assert item.status == "pending" and item.attempts == 1
    assert item.last_error == f"waiting for contact #{dee.pk} to be pushed first"
    # The waiting campaign queued dee, and the same drain pushed dee; the campaign waits its backoff.
    assert run.pushed == 1 and len(salesforce.records["Lead"]) == 1 and not salesforce.records["Campaign"]
    OutboxItem.objects.filter(pk=item.pk).update(next_attempt_at=item.created_at)
    run = outbox_drain(connection=sf_campaigns)
    assert run.pushed == 1 and len(salesforce.records["CampaignMember"]) == 1
    # Salesforce refuses a member (its Lead was deleted there): the campaign carries the error and retries.
    from martech.crm.models import PushState

    dee.refresh_from_db()
    salesforce.delete(dee.salesforce_lead_id)  # its CampaignMember goes with it, as in Salesforce
    PushState.objects.filter(object="campaign").delete()  # so the campaign is sent again
    OutboxItem.objects.create(connection=sf_campaigns, object="campaign", local_id=campaign.pk)
    run = outbox_drain(connection=sf_campaigns)
    assert run.failed == 1
    item = OutboxItem.objects.get(object="campaign", status="pending")
    assert item.last_error == (f"CampaignMember {dee.salesforce_lead_id}: INVALID_CROSS_REFERENCE_KEY: "
                               "invalid cross reference id (LeadId)")


def test_campaign_pull(sf_campaigns, salesforce):
    from martech.models import Campaign

    salesforce.put("Campaign", {"Name": "Made in Salesforce", "StartDate": "2026-12-01", "BudgetedCost": "900"})
    run = pull_changes(connection=sf_campaigns, obj="campaign")
    assert (run.pulled, run.failed) == (1, 0), run.error
    campaign = Campaign.objects.get(name="Made in Salesforce")
    assert campaign.start_date == dt.date(2026, 12, 1) and campaign.budget == Decimal("900")
    assert campaign.salesforce_id.startswith("701")
    assert not OutboxItem.objects.filter(object="campaign").exists()  # pulled, not echoed back


def test_new_touch_through_ingest_queues_its_campaign(sf_campaigns, salesforce, scoring_inline,
                                                     django_capture_on_commit_callbacks):
    """A touch that makes a new member queues the campaign (no edit, no full
    sync needed); a touch from a lead already a member is queued and then
    skipped by the hash, with no CRM call. The batch's capture task queues
    it (run inline here, as scoring's tasks are)."""
    from django.utils import timezone

    from martech.models import Campaign, EventType
    from martech.services.campaigns import campaign_save
    from martech.services.ingest import events_ingest
    from martech.services.leads import lead_upsert

    EventType.objects.get_or_create(name="webinar_joined")
    ann, _ = lead_upsert(data={"email": "ann@example.org", "last_name": "Lee"}, source="test")
    campaign = campaign_save(campaign=Campaign(name="Spring webinar", utm_campaign="spring"), source="test")
    outbox_drain(connection=sf_campaigns)  # Ann and the campaign, no members yet
    assert not salesforce.records["CampaignMember"]
    assert not OutboxItem.objects.filter(status="pending").exists()

    def touch(mid):
        with django_capture_on_commit_callbacks(execute=True):
            result = events_ingest(items=[{"type": "track", "event": "webinar_joined", "messageId": mid,
                                           "timestamp": timezone.now().isoformat(),
                                           "traits": {"email": "ann@example.org"},
                                           "context": {"campaign": {"name": "spring", "source": "newsletter",
                                                                    "medium": "email"}}}], source="test")
        assert result.event_ids

    touch("m1")
    assert OutboxItem.objects.filter(object="campaign", local_id=campaign.pk, status="pending").exists()
    run = outbox_drain(connection=sf_campaigns)
    assert run.pushed == 1
    ann.refresh_from_db()
    campaign.refresh_from_db()
    (member,) = salesforce.records["CampaignMember"].values()
    assert (member["LeadId"], member["CampaignId"]) == (ann.salesforce_lead_id, campaign.salesforce_id)

    touch("m2")  # Ann again: already a member
    assert OutboxItem.objects.filter(object="campaign", local_id=campaign.pk, status="pending").exists()
    run = outbox_drain(connection=sf_campaigns)
    assert (run.pushed, run.skipped, run.api_calls) == (0, 1, 0)
