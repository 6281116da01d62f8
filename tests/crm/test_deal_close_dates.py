"""An open deal's expected close date goes to the CRM's close date and comes
back from it (HubSpot ``closedate``, Salesforce ``CloseDate``, which both
hold the expected close while a deal is open and its close once it is
closed), over HTTP against the emulators."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from attribution.models import Opportunity
from attribution.services import opportunity_change_stage, opportunity_upsert, stage_for
from martech.crm.models import OutboxItem
from martech.crm.services import outbox_drain, pull_changes

from .test_salesforce_links import sf_links  # noqa: F401

pytestmark = pytest.mark.django_db


def _open_deal(**data):
    deal, _ = opportunity_upsert(data={"name": "Acme", "amount": Decimal("100"), "stage": "qualification", **data},
                                 source="test")
    return deal


def _win(deal, at):
    opportunity_change_stage(opportunity=deal, to_stage=stage_for(pipeline=deal.pipeline, key="closed_won"),
                             source="test", at=at)


# --- HubSpot -------------------------------------------------------------------

def test_expected_close_date_pushed_as_hubspot_closedate_until_the_deal_closes(deal_mappings, hubspot):
    deal = _open_deal(expected_close_date=dt.date(2027, 3, 31))
    assert outbox_drain(connection=deal_mappings).failed == 0
    remote = hubspot.find("deals", str(deal.pk))
    assert remote["properties"]["closedate"].startswith("2027-03-31T00:00:00")
    # Moving the expected date alone queues the deal and sends the new date.
    OutboxItem.objects.all().delete()
    opportunity_upsert(data={"expected_close_date": dt.date(2027, 4, 15)}, opportunity=deal, source="api")
    assert OutboxItem.objects.filter(object="deal", local_id=deal.pk, status="pending").count() == 1
    outbox_drain(connection=deal_mappings)
    assert remote["properties"]["closedate"].startswith("2027-04-15T00:00:00")
    # Won: the close date is the close now, not the expected one.
    _win(deal, dt.datetime(2027, 4, 2, 15, 30, tzinfo=dt.timezone.utc))
    outbox_drain(connection=deal_mappings)
    assert remote["properties"]["closedate"].startswith("2027-04-02T15:30:00")
    assert remote["properties"]["dealstage"] == "closedwon"
    # An open deal with no expected date sends no close date.
    bare = _open_deal(name="Bare")
    outbox_drain(connection=deal_mappings)
    assert "closedate" not in hubspot.find("deals", str(bare.pk))["properties"]


def test_hubspot_closedate_of_an_open_deal_is_pulled_as_its_expected_close_date(deal_mappings, hubspot):
    remote = hubspot.put("deals", {"dealname": "From HubSpot", "dealstage": "qualifiedtobuy", "amount": "50",
                                   "closedate": "2027-05-15T00:00:00Z"})
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    deal = Opportunity.objects.get(hubspot_id=remote["id"])
    assert (deal.expected_close_date, deal.closed_at, deal.stage.key) == (dt.date(2027, 5, 15), None, "qualification")
    assert not OutboxItem.objects.filter(object="deal", status="pending").exists()  # not echoed
    # The salesperson moves the date: the next pull moves ours.
    hubspot.put("deals", {"closedate": "2027-06-01T00:00:00Z"}, object_id=remote["id"])
    assert pull_changes(connection=deal_mappings, obj="deal").pulled == 1
    deal.refresh_from_db()
    assert (deal.expected_close_date, deal.closed_at) == (dt.date(2027, 6, 1), None)
    # Won there with its close: that is the close here; the expected date stays as it was.
    hubspot.put("deals", {"dealstage": "closedwon", "closedate": "2027-05-20T10:00:00Z"}, object_id=remote["id"])
    run = pull_changes(connection=deal_mappings, obj="deal")
    assert (run.pulled, run.failed) == (1, 0), run.error
    deal.refresh_from_db()
    assert deal.stage.key == "closed_won"
    assert deal.closed_at == dt.datetime(2027, 5, 20, 10, 0, tzinfo=dt.timezone.utc)
    assert deal.expected_close_date == dt.date(2027, 6, 1)


# --- Salesforce ----------------------------------------------------------------

def test_expected_close_date_pushed_as_salesforce_close_date(sf_links, salesforce):  # noqa: F811
    _open_deal(name="Dated", expected_close_date=dt.date(2027, 3, 31))
    _open_deal(name="Undated")
    won = _open_deal(name="Won", created_at=dt.datetime(2027, 1, 5, tzinfo=dt.timezone.utc))
    _win(won, dt.datetime(2027, 2, 10, 23, 30, tzinfo=dt.timezone.utc))
    run = outbox_drain(connection=sf_links)
    assert (run.pushed, run.failed) == (3, 0), run.error
    by_name = {r["Name"]: r for r in salesforce.records["Opportunity"].values()}
    assert by_name["Dated"]["CloseDate"] == "2027-03-31"
    assert by_name["Undated"]["CloseDate"] == "2099-12-31"  # required there: the mapping's default
    assert by_name["Won"]["CloseDate"] == "2027-02-10"  # its close's UTC day


def test_salesforce_close_date_pulled_both_ways(sf_links, salesforce):  # noqa: F811
    won = _open_deal(name="Won", created_at=dt.datetime(2027, 1, 5, tzinfo=dt.timezone.utc))
    _win(won, dt.datetime(2027, 2, 10, 23, 30, tzinfo=dt.timezone.utc))
    undated = _open_deal(name="Undated")
    outbox_drain(connection=sf_links)
    won.refresh_from_db()
    undated.refresh_from_db()
    # Made in Salesforce, open: its CloseDate is the expected close date here.
    made = salesforce.put("Opportunity", {"Name": "Upsell", "StageName": "Prospecting", "CloseDate": "2027-06-30",
                                          "Amount": "10"})
    # Edited there without touching the dates: the won deal keeps its close time (same day),
    # and the far default we sent for the undated one is not pulled back into it.
    salesforce.put("Opportunity", {"Id": won.salesforce_id, "Amount": "101"})
    salesforce.put("Opportunity", {"Id": undated.salesforce_id, "Amount": "102"})
    run = pull_changes(connection=sf_links, obj="deal")
    assert run.failed == 0, run.error
    upsell = Opportunity.objects.get(salesforce_id=made["Id"])
    assert (upsell.expected_close_date, upsell.closed_at) == (dt.date(2027, 6, 30), None)
    won.refresh_from_db()
    undated.refresh_from_db()
    assert won.amount == Decimal("101") and won.closed_at == dt.datetime(2027, 2, 10, 23, 30, tzinfo=dt.timezone.utc)
    assert undated.amount == Decimal("102") and undated.expected_close_date is None
    # The salesperson moves the expected date; then closes the deal on another day.
    salesforce.put("Opportunity", {"Id": made["Id"], "CloseDate": "2027-07-15"})
    pull_changes(connection=sf_links, obj="deal")
    upsell.refresh_from_db()
    assert upsell.expected_close_date == dt.date(2027, 7, 15)
    salesforce.put("Opportunity", {"Id": won.salesforce_id, "CloseDate": "2027-02-12"})
    pull_changes(connection=sf_links, obj="deal")
    won.refresh_from_db()
    assert won.closed_at == dt.datetime(2027, 2, 12, tzinfo=dt.timezone.utc)
