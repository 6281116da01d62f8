"""Deals <-> opportunities (attribution's object type, registered through
the registry), associations, the editable stage mapping, owners -> reps."""
from __future__ import annotations

from decimal import Decimal

import pytest

from attribution.models import Opportunity
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from martech.crm.models import CrmOwner, FieldMapping, OutboxItem, PushState
from martech.crm.services import outbox_drain, owners_pull, payload_preview, pull_changes, webhook_process
from martech.crm.models import WebhookReceipt
from martech.services.accounts import account_upsert
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db
DEAL_UPSERT = ("POST", "/crm/v3/objects/deals/batch/upsert")


def _deal(name="Big deal", amount="1234.50", stage="qualification", **data):
    opportunity, _ = opportunity_upsert(data={"name": name, "amount": Decimal(amount), "stage": stage, **data},
                                        source="test")
    return opportunity


def test_opportunity_write_queues_a_deal_in_its_transaction(deal_mappings):
    opportunity = _deal()
    assert OutboxItem.objects.filter(object="deal", local_id=opportunity.pk, status="pending").count() == 1
    OutboxItem.objects.all().delete()
    opportunity_change_stage(opportunity=opportunity, to_stage=stage_for(pipeline=opportunity.pipeline,
                                                                        key="proposal"), source="test")
    assert OutboxItem.objects.filter(object="deal").count() == 1
    OutboxItem.objects.all().delete()
    lead, _ = lead_upsert(data={"email": "role@example.org"}, source="test")
    OutboxItem.objects.all().delete()
    opportunity_set_contact(opportunity=opportunity, lead=lead)  # a new association
    assert OutboxItem.objects.filter(object="deal").count() == 1


def test_push_deal_with_stage_amount_and_associations(deal_mappings, hubspot):
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    lead, _ = lead_upsert(data={"email": "buyer@acme.com", "first_name": "Bea"}, source="test")
    opportunity = _deal(account=account)
    opportunity_set_contact(opportunity=opportunity, lead=lead, is_primary=True)
    run = outbox_drain(connection=deal_mappings)
    # Company and contact first, then the deal and its two association calls, in one drain.
    assert (run.pushed, run.failed, run.skipped) == (3, 0, 0)
    assert run.api_calls == 6  # company search + create, contact upsert, deal upsert, two association calls
    deal = hubspot.find("deals", str(opportunity.pk))
    props = deal["properties"]
    assert (props["dealname"], props["amount"], props["dealstage"], props["deal_currency_code"]) == (
        "Big deal", "1234.5", "qualifiedtobuy", "USD")
    company = hubspot.find("companies", "acme.com")
    contact = hubspot.find("contacts", "buyer@acme.com")
    assert hubspot.associated("deals", deal["id"], "companies") == {company["id"]}
    assert hubspot.associated("deals", deal["id"], "contacts") == {contact["id"]}
    opportunity.refresh_from_db()
    assert opportunity.hubspot_id == deal["id"]
    # Nothing changed: nothing sent, associations included in the comparison.
    OutboxItem.objects.create(connection=deal_mappings, object="deal", local_id=opportunity.pk)
    assert outbox_drain(connection=deal_mappings).api_calls == 0
    # Won: the stage goes through the editable mapping.
    opportunity_change_stage(opportunity=opportunity, to_stage=stage_for(pipeline=opportunity.pipeline,
                                                                        key="closed_won"), source="test")
    run = outbox_drain(connection=deal_mappings)
    assert run.pushed == 1 and deal["properties"]["dealstage"] == "closedwon"
    assert deal["properties"]["closedate"]
    assert len(hubspot.deals) == 1


def test_deal_waits_for_its_company_then_goes(deal_mappings, hubspot, settings):
    # A refused or deferred record is due again after BACKOFF_BASE * 60 s: keep it out of this drain on a slow machine.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_BASE": 1.0}
    account, _ = account_upsert(data={"name": "Later", "domain": "later.io"}, source="test")
    OutboxItem.objects.all().delete()  # the company's push is not queued
    opportunity = _deal(account=account)
    run = outbox_drain(connection=deal_mappings)
    item = OutboxItem.objects.get(object="deal")
    assert item.status == "pending" and item.attempts == 1
    assert item.last_error == f"waiting for company #{account.pk} to be pushed first"
    # The company was queued for it and went in the same drain; the deal is not lost, only later.
    assert run.pushed == 1 and hubspot.find("companies", "later.io") is not None
    assert hubspot.calls[DEAL_UPSERT] == 0
    OutboxItem.objects.filter(pk=item.pk).update(next_attempt_at=item.created_at)
    run = outbox_drain(connection=deal_mappings)
    assert run.pushed == 1
    deal = hubspot.find("deals", str(opportunity.pk))
    assert hubspot.associated("deals", deal["id"], "companies") == {hubspot.find("companies", "later.io")["id"]}


def test_retried_deal_batch_makes_no_duplicate(deal_mappings, hubspot):
    deals = [_deal(name=f"D{i}") for i in range(3)]
    outbox_drain(connection=deal_mappings)
    PushState.objects.all().delete()
    Opportunity.objects.update(hubspot_id=None)
    for deal in deals:
        OutboxItem.objects.create(connection=deal_mappings, object="deal", local_id=deal.pk)
    assert outbox_drain(connection=deal_mappings).pushed == 3
    assert hubspot.calls[DEAL_UPSERT] == 2
    assert len(hubspot.deals) == 3


def test_one_bad_deal_in_a_batch(deal_mappings, hubspot, settings):
    # A refused or deferred record is due again after BACKOFF_BASE * 60 s: keep it out of this drain on a slow machine.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_BASE": 1.0}
    good, bad = _deal(name="Good"), _deal(name="Bad")
    # A stage id HubSpot's pipeline does not have (ops mapped it wrong): refused for that deal only.
    mapping = FieldMapping.objects.get(connection=deal_mappings, object="deal", local_field="stage")
    mapping.value_map = {**mapping.value_map, "proposal": "no-such-stage"}
    mapping.save()
    opportunity_change_stage(opportunity=bad, to_stage=stage_for(pipeline=bad.pipeline, key="proposal"),
                             source="test")
    run = outbox_drain(connection=deal_mappings)
    assert (run.pushed, run.failed) == (1, 1)
    assert "dealstage 'no-such-stage'" in OutboxItem.objects.get(object="deal", local_id=bad.pk).last_error
    assert hubspot.find("deals", str(good.pk)) and not hubspot.find("deals", str(bad.pk))


def test_unmapped_stage_is_refused_before_sending(deal_mappings, hubspot):
    mapping = FieldMapping.objects.get(connection=deal_mappings, object="deal", local_field="stage")
    mapping.value_map = {k: v for k, v in mapping.value_map.items() if k != "negotiation"}
    mapping.save()
    opportunity = _deal(stage="negotiation")
    run = outbox_drain(connection=deal_mappings)
    item = OutboxItem.objects.get(object="deal", local_id=opportunity.pk)
    assert run.failed == 1 and item.status == "dead" and "stage: no picklist value for 'negotiation'" in item.last_error
    assert hubspot.calls[DEAL_UPSERT] == 0


def test_pull_deal_with_stage_amount_company_and_owner(deal_mappings, hubspot, django_user_model):
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    outbox_drain(connection=deal_mappings)
    company_id = hubspot.find("companies", "acme.com")["id"]
    rep = django_user_model.objects.create(username="rep", email="rep@example.com")
    hubspot.add_owner(owner_id="77", email="REP@example.com")
    owners_pull(connection=deal_mappings)
    buyer, _ = lead_upsert(data={"email": "buyer@acme.com"}, source="test")
    outbox_drain(connection=deal_mappings)
    deal = hubspot.put("deals", {"dealname": "From CRM", "amount": "99.95", "dealstage": "closedwon",
                                 "closedate": "2026-11-01T10:00:00Z", "hubspot_owner_id": "77"})
    hubspot.associate("deals", deal["id"], "companies", company_id)
    hubspot.associate("deals", deal["id"], "contacts", hubspot.find("contacts", "buyer@acme.com")["id"])
    hubspot.associate("deals", deal["id"], "contacts", "999999")  # a contact we do not have: left out
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    opportunity = Opportunity.objects.get(hubspot_id=deal["id"])
    assert opportunity.name == "From CRM" and opportunity.amount == Decimal("99.95")
    assert opportunity.stage.key == "closed_won" and opportunity.closed_at.isoformat().startswith("2026-11-01")
    assert opportunity.account == account
    assert opportunity.owner == rep
    assert list(opportunity.contact_roles.values_list("lead_id", flat=True)) == [buyer.pk]
    assert not OutboxItem.objects.filter(object="deal", status="pending").exists()  # not echoed
    assert ("POST", "/crm/v4/associations/deals/companies/batch/read") in hubspot.calls
    # Both sides agree now: queued again, the deal (with its associations) is not re-sent.
    OutboxItem.objects.create(connection=deal_mappings, object="deal", local_id=opportunity.pk)
    assert outbox_drain(connection=deal_mappings).api_calls == 0
    # The stage mapping is data: ops remap "contractsent", and the next pull follows it.
    mapping = FieldMapping.objects.get(connection=deal_mappings, object="deal", local_field="stage")
    mapping.value_map = {**mapping.value_map, "negotiation": "decisionmakerboughtin"}
    mapping.full_clean()
    mapping.save()
    hubspot.put("deals", {"dealstage": "decisionmakerboughtin"}, object_id=deal["id"])
    pull_changes(connection=deal_mappings, obj="deal")
    opportunity.refresh_from_db()
    assert opportunity.stage.key == "negotiation"
    assert opportunity.stage_changes.count() == 2


def test_pulled_deal_with_unknown_stage_names_the_field(deal_mappings, hubspot):
    hubspot.put("deals", {"dealname": "Odd", "dealstage": "customstage123"})
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert run.failed == 1 and "stage" in run.error and "customstage123" in run.error
    assert not Opportunity.objects.exists()


def test_owner_pushed_from_routing_rep_else_by_email(deal_mappings, hubspot, django_user_model):
    from routing.models import Rep

    user = django_user_model.objects.create(username="ann", email="ann@example.com")
    hubspot.add_owner(owner_id="501", email="ann@example.com")
    rep = Rep.objects.create(name="Ann", email="ann@example.com", user=user)
    owners_pull(connection=deal_mappings)
    rep.refresh_from_db()
    assert rep.hubspot_owner_id == "501"  # routing linked its rep to the pulled owner (provider)
    assert CrmOwner.objects.get().remote_id == "501"
    account, _ = account_upsert(data={"name": "Own", "domain": "own.io", "owner": user}, source="test")
    opportunity = _deal(owner=user, account=account)
    outbox_drain(connection=deal_mappings)
    assert hubspot.find("deals", str(opportunity.pk))["properties"]["hubspot_owner_id"] == "501"
    assert hubspot.find("companies", "own.io")["properties"]["hubspot_owner_id"] == "501"
    # The rep's id wins over the email match.
    Rep.objects.filter(pk=rep.pk).update(hubspot_owner_id="999")
    opportunity.refresh_from_db()
    preview = payload_preview(connection=deal_mappings, obj="deal", instance=opportunity)
    assert preview["inputs"][0]["properties"]["hubspot_owner_id"] == "999"
    assert preview["inputs"][0]["idProperty"] == "martech_deal_id"
    assert preview["associations"] == [{"to": "companies", "from": {"id": opportunity.hubspot_id},
                                        "ids": [hubspot.find("companies", "own.io")["id"]]}]


def test_deal_webhook_is_fetched_and_applied(deal_mappings, hubspot):
    deal = hubspot.put("deals", {"dealname": "Hooked", "dealstage": "appointmentscheduled", "amount": "10"})
    receipt = WebhookReceipt.objects.create(provider="hubspot", event_id="9", payload={
        "eventId": 9, "subscriptionType": "deal.creation", "objectId": int(deal["id"])})
    company = hubspot.put("companies", {"domain": "hook.io", "name": "Hook"})
    company_receipt = WebhookReceipt.objects.create(provider="hubspot", event_id="10", payload={
        "eventId": 10, "subscriptionType": "company.propertyChange", "objectId": int(company["id"])})
    assert webhook_process(receipt_ids=[receipt.pk, company_receipt.pk]) == 2
    receipt.refresh_from_db()
    assert receipt.error == "" and receipt.processed_at
    opportunity = Opportunity.objects.get(hubspot_id=deal["id"])
    assert (opportunity.name, opportunity.stage.key, opportunity.amount) == ("Hooked", "prospecting", Decimal("10"))
    from martech.models import Account

    assert Account.objects.get(hubspot_id=company["id"]).domain == "hook.io"


def test_lead_owner_pushed_as_the_routed_reps_hubspot_owner_id(connection, hubspot, django_user_model):
    """Issue 5 item 11: the lead's current rep's CRM owner id goes out as
    hubspot_owner_id through the contact mapping (routing's provider)."""
    from routing.models import Assignment, Rep

    user = django_user_model.objects.create(username="rita", email="rita@example.com")
    rep = Rep.objects.create(name="Rita", email="rita@example.com", user=user, hubspot_owner_id="4242")
    lead, _ = lead_upsert(data={"email": "routed@example.org"}, source="test")
    Assignment.objects.create(lead=lead, status=Assignment.Status.ASSIGNED, rep=rep,
                              trigger=Assignment.Trigger.HANDOFF)
    from martech.services.leads import lead_set_owner

    lead_set_owner(lead=lead, owner=user, reason="routed", source="routing")
    outbox_drain(connection=connection)
    assert hubspot.find("contacts", "routed@example.org")["properties"]["hubspot_owner_id"] == "4242"


ARCHIVE_COMPANIES = ("POST", "/crm/v4/associations/deals/companies/batch/archive")
CREATE_COMPANIES = ("POST", "/crm/v4/associations/deals/companies/batch/associate/default")
ARCHIVE_CONTACTS = ("POST", "/crm/v4/associations/deals/contacts/batch/archive")
CREATE_CONTACTS = ("POST", "/crm/v4/associations/deals/contacts/batch/associate/default")
READ_COMPANIES = ("POST", "/crm/v4/associations/deals/companies/batch/read")


def _moved(hubspot, opportunities):
    return {o.pk: hubspot.associated("deals", hubspot.find("deals", str(o.pk))["id"], "companies")
            for o in opportunities}


def test_deals_moved_to_another_company_lose_the_old_association(deal_mappings, hubspot):
    old, _ = account_upsert(data={"name": "Old", "domain": "old.io"}, source="test")
    new, _ = account_upsert(data={"name": "New", "domain": "new.io"}, source="test")
    lead, _ = lead_upsert(data={"email": "buyer@old.io"}, source="test")
    deals = [_deal(name=f"D{i}", account=old) for i in range(2)]
    for deal in deals:
        opportunity_set_contact(opportunity=deal, lead=lead, is_primary=True)
    outbox_drain(connection=deal_mappings)
    old_id, new_id = hubspot.find("companies", "old.io")["id"], hubspot.find("companies", "new.io")["id"]
    assert _moved(hubspot, deals) == {d.pk: {old_id} for d in deals}
    hubspot.calls.clear()
    for deal in deals:
        opportunity_upsert(data={"account": new}, opportunity=deal, source="test")
    run = outbox_drain(connection=deal_mappings)
    assert (run.pushed, run.failed) == (2, 0), run.error
    assert _moved(hubspot, deals) == {d.pk: {new_id} for d in deals}
    assert hubspot.associated("companies", old_id, "deals") == set()  # gone both ways
    # One upsert, one archive and one create for both deals; the unchanged contacts are not sent again.
    assert run.api_calls == 3
    assert (hubspot.calls[DEAL_UPSERT], hubspot.calls[ARCHIVE_COMPANIES], hubspot.calls[CREATE_COMPANIES]) == (1, 1, 1)
    assert hubspot.calls[ARCHIVE_CONTACTS] == hubspot.calls[CREATE_CONTACTS] == 0
    archived = [body for method, path, body in hubspot.requests if path == ARCHIVE_COMPANIES[1]]
    assert archived == [{"inputs": [{"from": {"id": hubspot.find("deals", str(d.pk))["id"]}, "to": [{"id": old_id}]}
                                    for d in deals]}]
    assert PushState.objects.get(object="deal", local_id=deals[0].pk).associations == {
        "company": [new_id], "contact": [hubspot.find("contacts", "buyer@old.io")["id"]]}
    # A deal pushed before the links were kept: HubSpot's company is read back in one batch call, and replaced.
    PushState.objects.filter(object="deal").update(associations=None)
    hubspot.calls.clear()
    for deal in deals:
        opportunity_upsert(data={"account": old}, opportunity=deal, source="test")
    run = outbox_drain(connection=deal_mappings)
    assert run.pushed == 2 and _moved(hubspot, deals) == {d.pk: {old_id} for d in deals}
    assert (hubspot.calls[READ_COMPANIES], hubspot.calls[ARCHIVE_COMPANIES], hubspot.calls[CREATE_COMPANIES]) == (
        1, 1, 1)
    assert hubspot.calls[ARCHIVE_CONTACTS] == 0  # a deal's contacts are not read back: HubSpot's own may be there


def test_contact_taken_off_a_deal_is_removed_in_hubspot(deal_mappings, hubspot):
    from attribution.services import opportunity_set_contacts

    keep, _ = lead_upsert(data={"email": "keep@acme.com"}, source="test")
    drop, _ = lead_upsert(data={"email": "drop@acme.com"}, source="test")
    opportunity = _deal()
    opportunity_set_contacts(opportunity=opportunity, contacts=[{"lead": keep, "is_primary": True}, {"lead": drop}])
    outbox_drain(connection=deal_mappings)
    deal_id = hubspot.find("deals", str(opportunity.pk))["id"]
    keep_id, drop_id = hubspot.find("contacts", "keep@acme.com")["id"], hubspot.find("contacts", "drop@acme.com")["id"]
    assert hubspot.associated("deals", deal_id, "contacts") == {keep_id, drop_id}
    # A contact a salesperson added in HubSpot is not ours: it stays.
    theirs = hubspot.put("contacts", {"email": "theirs@acme.com"})["id"]
    hubspot.associate("deals", deal_id, "contacts", theirs)
    hubspot.calls.clear()
    opportunity_set_contacts(opportunity=opportunity, contacts=[{"lead": keep, "is_primary": True}], source="api")
    assert OutboxItem.objects.filter(object="deal", status="pending").count() == 1  # the removal queued it
    run = outbox_drain(connection=deal_mappings)
    assert (run.pushed, run.failed, run.api_calls) == (1, 0, 2)  # the upsert and one archive
    assert hubspot.associated("deals", deal_id, "contacts") == {keep_id, theirs}
    assert hubspot.associated("contacts", drop_id, "deals") == set()
    assert hubspot.calls[ARCHIVE_CONTACTS] == 1 and hubspot.calls[CREATE_CONTACTS] == 0
    # Pushed again unchanged: nothing sent, the archive is not repeated.
    OutboxItem.objects.create(connection=deal_mappings, object="deal", local_id=opportunity.pk)
    assert outbox_drain(connection=deal_mappings).api_calls == 0


def test_deal_moved_to_another_company_in_hubspot_moves_here(deal_mappings, hubspot):
    old, _ = account_upsert(data={"name": "Old", "domain": "old.io"}, source="test")
    new, _ = account_upsert(data={"name": "New", "domain": "new.io"}, source="test")
    opportunity = _deal(account=old)
    outbox_drain(connection=deal_mappings)
    deal_id = hubspot.find("deals", str(opportunity.pk))["id"]
    old_id, new_id = hubspot.find("companies", "old.io")["id"], hubspot.find("companies", "new.io")["id"]
    pull_changes(connection=deal_mappings, obj="deal")  # our own push back: nothing moves
    hubspot.dissociate("deals", deal_id, "companies", old_id)
    hubspot.associate("deals", deal_id, "companies", new_id)
    hubspot.put("deals", {"dealname": "Moved"}, object_id=deal_id)
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    opportunity.refresh_from_db()
    assert (opportunity.name, opportunity.account) == ("Moved", new)
    assert PushState.objects.get(object="deal", local_id=opportunity.pk).associations == {"company": [new_id]}
    # Both sides agree: nothing to push back, no archive of the new company.
    OutboxItem.objects.create(connection=deal_mappings, object="deal", local_id=opportunity.pk)
    assert outbox_drain(connection=deal_mappings).api_calls == 0
    assert hubspot.associated("deals", deal_id, "companies") == {new_id}
