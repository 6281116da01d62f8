"""Issue 5, item 11: the chosen owner reaches the CRM. Routing changes the
owner through lead_set_owner (or tells the lead hooks when only the CRM
owner changes); the CRM outbox queues the push when a connection has an
owner mapping; the payload carries the rep's CRM owner id."""
from __future__ import annotations

import pytest

from martech.crm.models import Connection, FieldMapping, OutboxItem
from martech.crm.services import PayloadBuilder
from routing import services
from routing.models import Assignment
from tests.factories import LeadFactory, UserFactory
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db


def _connection(provider: str, remote_field: str, *, with_owner: bool = True) -> Connection:
    conn = Connection.objects.create(provider=provider, name=provider)
    FieldMapping.objects.create(connection=conn, local_field="email", remote_field="email" if provider == "hubspot" else "Email",
                                direction="push")
    if with_owner:
        FieldMapping.objects.create(connection=conn, local_field="owner", remote_field=remote_field, direction="push")
    return conn


def _pending(conn: Connection, lead) -> int:
    return OutboxItem.objects.filter(connection=conn, object="contact", local_id=lead.pk, status="pending").count()


@pytest.fixture
def team():
    team = TeamFactory(name="Inbound")
    placeholder = RepFactory(team=team)  # publishing needs a fallback team with a rep
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    placeholder.delete()
    return team


@pytest.mark.parametrize("with_user", [True, False])
def test_assignment_queues_the_owner_push_to_hubspot_and_salesforce(team, with_user):
    user = UserFactory(username="ivy") if with_user else None
    RepFactory(team=team, name="Ivy", user=user, hubspot_owner_id="hs-77", salesforce_user_id="005000000000077")
    hubspot = _connection("hubspot", "hubspot_owner_id")
    salesforce = _connection("salesforce", "OwnerId")
    lead = LeadFactory(email="buyer@acme.example")
    OutboxItem.objects.all().delete()  # the lead's creation queued one; watch routing's own
    assignment, created = services.lead_route(lead_id=lead.pk, trigger="api")
    assert created and assignment.status == Assignment.Status.ASSIGNED
    assert _pending(hubspot, lead) == 1 and _pending(salesforce, lead) == 1
    lead.refresh_from_db()
    assert lead.owner == user
    assert PayloadBuilder(hubspot).payload(lead) == {"email": "buyer@acme.example", "hubspot_owner_id": "hs-77"}
    assert PayloadBuilder(salesforce).payload(lead) == {"Email": "buyer@acme.example", "OwnerId": "005000000000077"}


def test_no_owner_mapping_no_push_and_reassignment_pushes_again(team):
    first = RepFactory(team=team, name="A", hubspot_owner_id="hs-1")
    second = RepFactory(team=team, name="B", hubspot_owner_id="hs-2")
    plain = _connection("salesforce", "OwnerId", with_owner=False)  # maps email only
    hubspot = _connection("hubspot", "hubspot_owner_id")
    lead = LeadFactory()
    OutboxItem.objects.all().delete()
    a, _ = services.lead_route(lead_id=lead.pk, trigger="api")
    assert a.rep == first
    assert _pending(plain, lead) == 0 and _pending(hubspot, lead) == 1
    # Drained, then rerouted (the rep deactivated): a new push with the new owner.
    OutboxItem.objects.filter(local_id=lead.pk).update(status="done")
    services.rep_deactivate(rep=first)
    current = Assignment.objects.get(lead=lead, is_current=True)
    assert current.rep == second and _pending(hubspot, lead) == 1
    assert PayloadBuilder(hubspot).payload(lead)["hubspot_owner_id"] == "hs-2"


def test_batch_route_queues_every_assigned_lead(team):
    RepFactory(team=team, name="A", hubspot_owner_id="hs-1")
    RepFactory(team=team, name="B", user=UserFactory(username="b"), hubspot_owner_id="hs-2")
    hubspot = _connection("hubspot", "hubspot_owner_id")
    leads = [LeadFactory() for _ in range(6)]
    OutboxItem.objects.all().delete()
    counts = services.leads_route_batch(lead_ids=[l.pk for l in leads], trigger="api")
    assert counts["assigned"] == 6
    assert sorted(OutboxItem.objects.filter(connection=hubspot, status="pending").values_list("local_id", flat=True)) == \
        sorted(l.pk for l in leads)
    owners = {PayloadBuilder(hubspot).payload(l)["hubspot_owner_id"] for l in leads}
    assert owners == {"hs-1", "hs-2"}


def test_rep_without_user_or_crm_id_queues_nothing(team):
    """No Django user and no CRM owner id: nothing of the owner changes
    anywhere, so nothing is queued (an empty owner is never sent)."""
    RepFactory(team=team, name="Plain")
    hubspot = _connection("hubspot", "hubspot_owner_id")
    lead = LeadFactory()
    OutboxItem.objects.all().delete()
    services.lead_route(lead_id=lead.pk, trigger="api")
    services.leads_route_batch(lead_ids=[LeadFactory().pk], trigger="api")
    assert not OutboxItem.objects.filter(connection=hubspot).exists()
