"""A deal a CRM holds, deleted through the API or the admin, leaves its
record (who, what, which CRM copy) and queues the CRM delete; the record is
read-only in the admin."""
from __future__ import annotations

from decimal import Decimal

import pytest

from attribution.models import Opportunity, OpportunityDeletion
from attribution.services import opportunity_upsert
from martech.crm.models import Connection, FieldMapping, OutboxItem
from martech.models import ApiClient
from tests.martech.api_support import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def crms(db):
    hubspot = Connection.objects.create(provider="hubspot", name="HubSpot")
    salesforce = Connection.objects.create(provider="salesforce", name="Salesforce")
    FieldMapping.objects.create(connection=hubspot, object="deal", local_field="name", remote_field="dealname")
    # Salesforce only pulls deals: its copy stays there.
    FieldMapping.objects.create(connection=salesforce, object="deal", local_field="name", remote_field="Name",
                                direction="pull")
    return hubspot, salesforce


def _held_deal(name="Held"):
    deal, _ = opportunity_upsert(data={"name": name, "amount": Decimal("250.00"), "currency": "EUR",
                                       "hubspot_id": "9001", "salesforce_id": "006000000000000ABC"}, source="test")
    OutboxItem.objects.all().delete()
    return deal


def test_api_delete_records_the_deletion_per_crm_and_queues_the_pushing_one(token_api, crms):
    hubspot, salesforce = crms
    deal = _held_deal()
    read, write = ApiClient.Scope.ATTRIBUTION_READ.value, ApiClient.Scope.ATTRIBUTION_WRITE.value
    r = token_api(read, write).delete(f"/api/v1/opportunities/{deal.pk}")
    assert r.status_code == 204, r.content
    rows = {row.connection_id: row for row in OpportunityDeletion.objects.all()}
    assert (rows[hubspot.pk].remote_id, rows[hubspot.pk].status) == ("9001", OpportunityDeletion.Status.PENDING)
    assert (rows[salesforce.pk].remote_id, rows[salesforce.pk].status) == ("006000000000000ABC",
                                                                            OpportunityDeletion.Status.KEPT)
    for row in rows.values():
        assert (row.opportunity_id, row.name, row.amount, row.currency) == (deal.pk, "Held", Decimal("250.00"), "EUR")
        assert row.source.startswith("api")
    assert list(OutboxItem.objects.values_list("connection_id", "object", "local_id")) == [
        (hubspot.pk, "deal_deletion", rows[hubspot.pk].pk)]


def test_a_new_deal_with_a_deleted_crm_id_made_here_and_deleted_again(crms):
    """The record is per (connection, CRM id): deleting a second deal that
    holds the same id (re-imported by hand) updates it, not a duplicate."""
    from attribution.services import opportunity_delete

    opportunity_delete(opportunity=_held_deal(), source="test")
    again = _held_deal("Again")
    opportunity_delete(opportunity=again, source="test")
    assert OpportunityDeletion.objects.count() == 2
    assert set(OpportunityDeletion.objects.values_list("name", "opportunity_id")) == {("Again", again.pk)}
    assert not Opportunity.objects.exists()


def test_admin_lists_deletions_read_only(client, marketing_ops, crms):
    from attribution.services import opportunity_delete

    opportunity_delete(opportunity=_held_deal(), source="admin:ops", actor=marketing_ops)
    client.force_login(marketing_ops)
    page = client.get("/admin/attribution/opportunitydeletion/")
    assert page.status_code == 200 and b"Held" in page.content and b"9001" in page.content
    row = OpportunityDeletion.objects.filter(status="pending").get()
    assert row.actor == marketing_ops
    assert client.post(f"/admin/attribution/opportunitydeletion/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/attribution/opportunitydeletion/add/").status_code == 403
