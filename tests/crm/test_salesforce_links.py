"""Salesforce CampaignMember and OpportunityContactRole: the links of
campaigns and deals (martech.crm.objects.Link), pushed with their parent and
pulled by their own cursor, over HTTPS against the emulator."""
from __future__ import annotations

from decimal import Decimal

import pytest

from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import OutboxItem, PushState, SyncCursor
from martech.crm.services import links_pull, outbox_drain, payload_preview

from .conftest import _map

pytestmark = pytest.mark.django_db
V = "/services/data/v59.0"


@pytest.fixture
def sf_links(sf_connection):
    """Campaign and deal mappings from the registry's Salesforce defaults."""
    from attribution.crm_sync import SALESFORCE_MAPPINGS
    from martech.crm.types import SALESFORCE_CAMPAIGN_MAPPINGS

    _map(sf_connection, "campaign", SALESFORCE_CAMPAIGN_MAPPINGS)
    _map(sf_connection, "deal", [m for m in SALESFORCE_MAPPINGS if m[0] != "owner"])
    return sf_connection


def _lead(email, last_name="Lee"):
    from martech.services.leads import lead_upsert

    lead, _ = lead_upsert(data={"email": email, "last_name": last_name}, source="test")
    return lead


def _campaign(name="Spring webinar"):
    from martech.models import Campaign
    from martech.services.campaigns import campaign_save

    return campaign_save(campaign=Campaign(name=name, utm_campaign=name.lower().replace(" ", "-"),
                                           utm_source="newsletter", utm_medium="email", channel="email"),
                         source="test")


def _touch(lead, campaign, mid):
    from django.utils import timezone

    from martech.models import Event, EventType

    event_type, _ = EventType.objects.get_or_create(name="webinar_attended")
    Event.objects.create(client_event_id=mid, event_type=event_type, lead=lead, campaign=campaign,
                         occurred_at=timezone.now())


def _as_contacts(settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SALESFORCE_NEW_LEADS_AS": "Contact"}


# --- CampaignMember -------------------------------------------------------------

def test_member_added_in_salesforce_is_pulled_as_a_touch_once(sf_links, salesforce,
                                                              django_capture_on_commit_callbacks):
    from attribution.models import Touchpoint
    from attribution.touchpoints import touchpoints_rebuild
    from martech import signals
    from martech.models import Event, Lead

    ann = _lead("ann@example.org")
    campaign = _campaign()
    outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    campaign.refresh_from_db()
    assert campaign.salesforce_id and not salesforce.records["CampaignMember"]
    # Sales adds Ann (a Lead) as "Sent", and a Contact we have never seen as "Responded".
    sent = salesforce.put("CampaignMember", {"CampaignId": campaign.salesforce_id, "LeadId": ann.salesforce_lead_id,
                                             "Status": "Sent"})
    zed = salesforce.put("Contact", {"LastName": "Zed", "Email": "Zed@Example.org"})
    responded = salesforce.put("CampaignMember", {"CampaignId": campaign.salesforce_id, "ContactId": zed["Id"],
                                                  "Status": "Responded"})

    announced: list[int] = []

    def receiver(sender, event_ids, **kwargs):
        announced.extend(event_ids)

    signals.events_ingested.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run = links_pull(connection=sf_links, link="campaign_member")
    finally:
        signals.events_ingested.disconnect(receiver)
    assert (run.pulled, run.failed, run.error) == (2, 0, "")
    # One SOQL for the members, one for the Contact not here yet.
    assert run.api_calls == 2
    zed_lead = Lead.objects.get(email="zed@example.org")  # through lead_upsert, the capture dedupe path
    assert zed_lead.salesforce_contact_id == zed["Id"]
    events = {e.lead_id: e for e in Event.objects.filter(event_type__name="campaign_member_added")}
    assert set(events) == {ann.pk, zed_lead.pk}
    first = events[ann.pk]
    assert first.client_event_id == f"crm:salesforce:{sent['Id']}"
    assert (first.campaign_id, first.channel, first.utm_campaign) == (campaign.pk, "email", "spring-webinar")
    assert first.properties == {"member_id": sent["Id"], "status": "Sent", "has_responded": False}
    assert events[zed_lead.pk].properties["has_responded"] is True
    # Announced like ingested events, and a touch like any other: attribution builds its touchpoint.
    assert sorted(announced) == sorted(e.pk for e in events.values())
    touchpoints_rebuild(lead_ids=[ann.pk])
    assert Touchpoint.objects.filter(event=first, campaign=campaign, channel="email").exists()
    assert SyncCursor.objects.get(connection=sf_links, object="campaign_member").value == responded["SystemModstamp"]

    # Again: nothing new since the cursor; a full re-pull adds no event either.
    assert links_pull(connection=sf_links, link="campaign_member").pulled == 0
    assert links_pull(connection=sf_links, link="campaign_member", full=True).pulled == 2
    assert Event.objects.filter(event_type__name="campaign_member_added").count() == 2
    assert Lead.objects.count() == 2

    # Ann responds in Salesforce: the same event's state follows.
    salesforce.put("CampaignMember", {"Id": sent["Id"], "Status": "Responded"})
    assert links_pull(connection=sf_links, link="campaign_member").pulled == 1
    first.refresh_from_db()
    assert (first.properties["status"], first.properties["has_responded"]) == ("Responded", True)

    # The campaign's next push finds both members there: nothing written to CampaignMember.
    OutboxItem.objects.get_or_create(connection=sf_links, object="campaign", local_id=campaign.pk, status="pending")
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0), OutboxItem.objects.filter(object="campaign").values("last_error")
    assert len(salesforce.records["CampaignMember"]) == 2
    assert not any(path.startswith(f"{V}/composite/sobjects/CampaignMember") for _, path in salesforce.calls)


def test_pulled_member_of_unknown_campaign_is_a_per_record_error(sf_links, salesforce):
    ann = _lead("ann@example.org")
    outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    other = salesforce.put("Campaign", {"Name": "Not pulled yet"})
    member = salesforce.put("CampaignMember", {"CampaignId": other["Id"], "LeadId": ann.salesforce_lead_id})
    run = links_pull(connection=sf_links, link="campaign_member")
    assert (run.pulled, run.failed) == (0, 1)
    assert run.error == (f"Campaign member {member['Id']}: {{'campaign': ['Campaign (and its members) {other['Id']} "
                         "is not here yet (pull campaign first).']}")


def test_member_push_retried_after_a_lost_answer_creates_no_duplicate(sf_links, salesforce, settings, monkeypatch):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 0}
    ann = _lead("ann@example.org")
    campaign = _campaign()
    outbox_drain(connection=sf_links)
    _touch(ann, campaign, "t1")
    OutboxItem.objects.create(connection=sf_links, object="campaign", local_id=campaign.pk)
    # Salesforce writes the member and the answer is lost (a 503 after the write).
    route, lost = salesforce.route, []

    def losing_route(request, version, path):
        response = route(request, version, path)
        if path.startswith("composite/sobjects/CampaignMember") and not lost:
            lost.append(path)
            salesforce.lose_answers = 1
        return response

    monkeypatch.setattr(salesforce, "route", losing_route)
    run = outbox_drain(connection=sf_links)
    assert run.failed == 1 and lost
    assert len(salesforce.records["CampaignMember"]) == 1  # it was written
    item = OutboxItem.objects.get(object="campaign", local_id=campaign.pk, status="pending")
    OutboxItem.objects.filter(pk=item.pk).update(next_attempt_at=item.created_at)
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    # The retry matched the member by (CampaignId, LeadId) and wrote none.
    assert len(salesforce.records["CampaignMember"]) == 1
    assert salesforce.calls[("PATCH", f"{V}/composite/sobjects/CampaignMember/Martech_Id__c")] == 1


def test_member_made_in_salesforce_is_not_sent_again_and_responded_moves_status(sf_links, salesforce):
    ann = _lead("ann@example.org")
    campaign = _campaign()
    outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    campaign.refresh_from_db()
    # Sales added Ann as "Sent" (not pulled yet); here Ann attends: she responded.
    made = salesforce.put("CampaignMember", {"CampaignId": campaign.salesforce_id, "LeadId": ann.salesforce_lead_id,
                                             "Status": "Sent"})
    _touch(ann, campaign, "t1")
    OutboxItem.objects.create(connection=sf_links, object="campaign", local_id=campaign.pk)
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    (member,) = salesforce.records["CampaignMember"].values()
    assert member["Id"] == made["Id"]
    assert (member["Status"], member["HasResponded"]) == ("Responded", True)
    assert salesforce.calls[("PATCH", f"{V}/composite/sobjects/CampaignMember/Martech_Id__c")] == 0


def test_emulator_refuses_a_duplicate_member(sf_connection, salesforce):
    sf = SalesforceConnector(sf_connection).sf
    lead = salesforce.put("Lead", {"LastName": "Lee", "Company": "Acme"})
    campaign = salesforce.put("Campaign", {"Name": "Fair"})
    row = {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign["Id"], "LeadId": lead["Id"],
           "Status": "Sent"}
    first = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [row]})
    assert first[0]["success"] is True and first[0]["id"].startswith("00v")
    again = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [row]})
    assert again == [{"id": None, "success": False, "errors": [
        {"statusCode": "DUPLICATE_VALUE", "fields": [], "message": "Already a campaign member."}]}]
    # Also through an upsert under another external id.
    upsert = sf.restful("composite/sobjects/CampaignMember/Martech_Id__c", method="PATCH", json={
        "allOrNone": False, "records": [{**row, "Martech_Id__c": "9:x"}]})
    assert upsert[0]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    assert len(salesforce.records["CampaignMember"]) == 1
    (member,) = salesforce.records["CampaignMember"].values()
    assert member["HasResponded"] is False  # derived from Status


# --- OpportunityContactRole -----------------------------------------------------

def _deal_with_roles(roles):
    from attribution.services import opportunity_set_contacts, opportunity_upsert

    opportunity, _ = opportunity_upsert(data={"name": "Acme renewal", "amount": Decimal("100")}, source="test")
    opportunity_set_contacts(opportunity=opportunity, contacts=roles, source="test")
    return opportunity


def _roles(salesforce):
    return sorted((r["ContactId"], r["Role"], r["IsPrimary"]) for r in salesforce.records["OpportunityContactRole"]
                  .values())


def test_contact_roles_create_change_primary_and_remove(sf_links, salesforce, settings):
    from attribution.services import opportunity_set_contacts

    _as_contacts(settings)
    ann, bob, cy = _lead("ann@example.org"), _lead("bob@example.org", "Bo"), _lead("cy@example.org", "Cy")
    opportunity = _deal_with_roles([{"lead": ann, "role": "Decision Maker", "is_primary": True},
                                    {"lead": bob, "role": "Influencer"}])
    run = outbox_drain(connection=sf_links)
    assert run.failed == 0
    for lead in (ann, bob, cy):
        lead.refresh_from_db()
        assert lead.salesforce_contact_id.startswith("003")
    opportunity.refresh_from_db()
    assert _roles(salesforce) == sorted([(ann.salesforce_contact_id, "Decision Maker", True),
                                         (bob.salesforce_contact_id, "Influencer", False)])
    (role,) = [r for r in salesforce.records["OpportunityContactRole"].values() if r["IsPrimary"]]
    assert role["OpportunityId"] == opportunity.salesforce_id and role["Id"].startswith("00K")
    # The preview shows the Opportunity request the drain sends.
    assert payload_preview(connection=sf_links, obj="deal", instance=opportunity)["path"] == f"{V}/composite/sobjects"

    # Bob becomes primary, Cy joins: one read, then an update call and a create call.
    calls_before = sum(salesforce.calls.values())
    opportunity_set_contacts(opportunity=opportunity, contacts=[
        {"lead": ann, "role": "Decision Maker"}, {"lead": bob, "role": "Influencer", "is_primary": True},
        {"lead": cy, "role": "Evaluator"}], source="test")
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    assert _roles(salesforce) == sorted([(ann.salesforce_contact_id, "Decision Maker", False),
                                         (bob.salesforce_contact_id, "Influencer", True),
                                         (cy.salesforce_contact_id, "Evaluator", False)])
    # The Opportunity upsert, the role query, the updates, the create.
    assert sum(salesforce.calls.values()) - calls_before == 4

    # Bob and Cy removed here: their roles are deleted there in one call.
    opportunity_set_contacts(opportunity=opportunity, contacts=[{"lead": ann, "role": "Decision Maker",
                                                                 "is_primary": True}], source="test")
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    assert _roles(salesforce) == [(ann.salesforce_contact_id, "Decision Maker", True)]
    assert salesforce.calls[("DELETE", f"{V}/composite/sobjects")] == 1
    state = PushState.objects.get(connection=sf_links, object="deal", local_id=opportunity.pk)
    assert state.links == {"contact_role": {ann.salesforce_contact_id: {"role": "Decision Maker",
                                                                         "is_primary": True}}}


def test_contact_role_added_in_salesforce_survives_a_push_and_is_pulled(sf_links, salesforce, settings):
    from attribution.models import OpportunityContactRole
    from attribution.services import opportunity_upsert
    from martech.models import Lead

    _as_contacts(settings)
    ann, bob = _lead("ann@example.org"), _lead("bob@example.org", "Bo")
    opportunity = _deal_with_roles([{"lead": ann, "role": "Decision Maker", "is_primary": True}])
    outbox_drain(connection=sf_links)
    opportunity.refresh_from_db()
    bob.refresh_from_db()
    # Sales adds Bob as primary and a Contact we do not have, before our role pull has run.
    salesforce.put("OpportunityContactRole", {"OpportunityId": opportunity.salesforce_id,
                                              "ContactId": bob.salesforce_contact_id, "Role": "Economic Buyer",
                                              "IsPrimary": True})
    dee = salesforce.put("Contact", {"LastName": "Dee", "Email": "dee@example.org"})
    salesforce.put("OpportunityContactRole", {"OpportunityId": opportunity.salesforce_id, "ContactId": dee["Id"],
                                              "Role": "Evaluator"})
    # An edit here pushes the deal meanwhile: roles not pulled yet are left alone.
    opportunity_upsert(opportunity=opportunity, data={"amount": Decimal("250")}, source="test")
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (1, 0)
    assert len(salesforce.records["OpportunityContactRole"]) == 3

    run = links_pull(connection=sf_links, link="contact_role")
    assert (run.failed, run.error) == (0, "")
    assert run.pulled == 3  # Ann's (demoted by Salesforce), Bob's and Dee's
    dee_lead = Lead.objects.get(email="dee@example.org")
    roles = {r.lead_id: (r.role, r.is_primary) for r in OpportunityContactRole.objects.filter(opportunity=opportunity)}
    assert roles == {ann.pk: ("Decision Maker", False), bob.pk: ("Economic Buyer", True),
                     dee_lead.pk: ("Evaluator", False)}
    # Pulled: nothing to send back (not queued for Salesforce), and a re-pull changes nothing.
    assert not OutboxItem.objects.filter(object="deal", status="pending").exists()
    assert links_pull(connection=sf_links, link="contact_role", full=True).failed == 0
    assert OpportunityContactRole.objects.filter(opportunity=opportunity).count() == 3


def test_role_removed_here_is_not_pulled_back_before_its_deletion_is_pushed(sf_links, salesforce, settings):
    from attribution.models import OpportunityContactRole
    from attribution.services import opportunity_set_contacts

    _as_contacts(settings)
    ann, bob = _lead("ann@example.org"), _lead("bob@example.org", "Bo")
    opportunity = _deal_with_roles([{"lead": ann, "is_primary": True}, {"lead": bob, "role": "Influencer"}])
    outbox_drain(connection=sf_links)
    opportunity_set_contacts(opportunity=opportunity, contacts=[{"lead": ann, "is_primary": True}], source="test")
    # The role pull runs before the drain: Bob's role (both sides had it) is not brought back.
    run = links_pull(connection=sf_links, link="contact_role", full=True)
    assert (run.pulled, run.skipped, run.failed) == (1, 1, 0)
    assert list(OpportunityContactRole.objects.filter(opportunity=opportunity).values_list("lead_id", flat=True)) \
        == [ann.pk]
    outbox_drain(connection=sf_links)
    assert len(salesforce.records["OpportunityContactRole"]) == 1


def test_a_lead_only_person_cannot_have_a_role(sf_links, salesforce, settings):
    """Salesforce gives opportunity roles to Contacts only: a person who is
    only a Lead there fails the deal's push with that reason; the other
    roles are synced and nothing crashes."""
    ann = _lead("ann@example.org")
    outbox_drain(connection=sf_links)  # Ann goes as a Lead
    _as_contacts(settings)
    bob = _lead("bob@example.org", "Bo")
    opportunity = _deal_with_roles([{"lead": ann, "is_primary": True}, {"lead": bob, "role": "Influencer"}])
    run = outbox_drain(connection=sf_links)
    ann.refresh_from_db()
    bob.refresh_from_db()
    assert ann.salesforce_lead_id.startswith("00Q") and not ann.salesforce_contact_id
    assert run.failed == 1
    item = OutboxItem.objects.get(object="deal", local_id=opportunity.pk, status="pending")
    assert item.last_error == (f"OpportunityContactRole for {ann.salesforce_lead_id}: a contact role needs a "
                               "Salesforce Contact and this person is a Lead there (convert the Lead, or push the "
                               "person as a Contact); the deal's other roles were synced")
    assert _roles(salesforce) == [(bob.salesforce_contact_id, "Influencer", False)]
    # The emulator refuses a Lead id as ContactId too, in Salesforce's per-record shape.
    sf = SalesforceConnector(sf_links).sf
    (opp,) = salesforce.records["Opportunity"].values()
    answer = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
        {"attributes": {"type": "OpportunityContactRole"}, "OpportunityId": opp["Id"],
         "ContactId": ann.salesforce_lead_id}]})
    assert answer[0]["success"] is False
    assert answer[0]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"


def test_member_we_pushed_is_not_pulled_back_as_a_new_touch(sf_links, salesforce):
    """Ann's own touch made her a member; the push created the
    CampaignMember; pulling it back must not add a campaign_member_added
    touch for the touch she already has. A member added in Salesforce for a
    lead without a touch still is one."""
    from martech.models import Event

    ann, bob = _lead("ann@example.org"), _lead("bob@example.org", "Bee")
    campaign = _campaign()
    outbox_drain(connection=sf_links)
    _touch(ann, campaign, "t1")
    OutboxItem.objects.create(connection=sf_links, object="campaign", local_id=campaign.pk)
    assert outbox_drain(connection=sf_links).failed == 0
    assert len(salesforce.records["CampaignMember"]) == 1
    bob.refresh_from_db()
    campaign.refresh_from_db()
    salesforce.put("CampaignMember", {"CampaignId": campaign.salesforce_id, "LeadId": bob.salesforce_lead_id,
                                      "Status": "Sent"})
    for _ in range(2):
        run = links_pull(connection=sf_links, link="campaign_member", full=True)
        assert run.failed == 0, run.error
    touches = sorted(Event.objects.filter(campaign=campaign).values_list("lead__email", "event_type__name"))
    assert touches == [("ann@example.org", "webinar_attended"), ("bob@example.org", "campaign_member_added")]
