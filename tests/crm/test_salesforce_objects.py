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
        ("deal", "closed_at", "CloseDate", "date", {"default": "2099-12-31"}),
        ("deal", "stage", "StageName", "picklist", {"value_map": SF_STAGES}),
    ]:
        FieldMapping.objects.create(connection=sf_connection, object=obj, local_field=local, remote_field=remote,
                                    kind=kind, **extra)
    return sf_connection


def test_salesforce_declares_contact_company_deal():
    declared = [o.key for o in objects.synced_by(SalesforceConnector.__new__(SalesforceConnector))]
    assert declared == ["company", "contact", "deal"]  # accounts before the leads and deals that point at them


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
