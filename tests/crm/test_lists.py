"""Segment mirrors (martech.crm.lists): a segment's members kept as a HubSpot
MANUAL list and as a Salesforce Campaign's members, incrementally through
the outbox, over HTTP through hubspot-api-client and simple-salesforce."""
from __future__ import annotations

import pytest

from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.lists import lists_sweep, mirror_pending, mirror_save, mirror_set_active
from martech.crm.models import ListMember, ListMirror, OutboxItem
from martech.crm.services import outbox_drain
from martech.models import Lead
from martech.scoring.services import segment_save
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db
V = "/services/data/v59.0"
LISTS = "/crm/v3/lists"


def _leads(countries: dict[str, str]) -> dict[str, Lead]:
    return {email: lead_upsert(data={"email": email, "last_name": "Lee", "country": country}, source="test")[0]
            for email, country in countries.items()}


def _segment(name="US leads", condition='country = "US"'):
    return segment_save(name=name, condition=condition)


def _due(mirror: ListMirror) -> None:
    """Make the mirror's pending row due now (as its backoff would)."""
    OutboxItem.objects.filter(object="list", local_id=mirror.pk, status="pending").update(
        next_attempt_at="2000-01-01T00:00:00Z")


def _contacts_first(connection) -> None:
    """Push the queued contacts while the mirror's row waits."""
    OutboxItem.objects.filter(object="list", status="pending").update(next_attempt_at="2999-01-01T00:00:00Z")
    outbox_drain(connection=connection)
    OutboxItem.objects.filter(object="list", status="pending").update(next_attempt_at="2000-01-01T00:00:00Z")


def _hubspot_ids(emails) -> set[str]:
    return set(Lead.objects.filter(email__in=list(emails)).values_list("hubspot_id", flat=True))


def _puts(hubspot) -> list[dict]:
    return [body for method, path, body in hubspot.requests
            if method == "PUT" and path.endswith("/memberships/add-and-remove")]


# --- HubSpot ---------------------------------------------------------------------------

def test_segment_mirrored_to_a_hubspot_list_sends_only_adds_and_removes(connection, hubspot, monkeypatch):
    monkeypatch.setattr(HubSpotConnector, "list_batch", 2)  # 5 members: three calls of at most 2 ids
    us = [f"us{i}@example.org" for i in range(5)]
    leads = _leads({**{e: "US" for e in us}, "ca0@example.org": "CA", "ca1@example.org": "CA"})
    segment = _segment()
    mirror = mirror_save(segment=segment, connection=connection)
    assert OutboxItem.objects.filter(object="list", local_id=mirror.pk, status="pending").count() == 1

    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (8, 0)  # 7 contacts, then the list
    mirror.refresh_from_db()
    (made,) = hubspot.lists.values()
    assert (made["name"], made["processingType"], made["objectTypeId"]) == ("US leads", "MANUAL", "0-1")
    assert mirror.remote_id == made["listId"] and mirror.last_error == "" and mirror.member_count == 5
    assert set(hubspot.list_members[made["listId"]]) == _hubspot_ids(us)
    # Looked up by name (none), created once, members in three calls of at most 2.
    assert hubspot.calls[("GET", f"{LISTS}/object-type-id/0-1/name/US leads")] == 1
    assert hubspot.calls[("POST", f"{LISTS}/")] == 1
    assert [len(b["recordIdsToAdd"]) for b in _puts(hubspot)] == [2, 2, 1]
    assert ListMember.objects.filter(mirror=mirror).count() == 5

    # One lead leaves (US -> CA), one enters (CA -> US): the write queues the mirror in its transaction.
    lead_upsert(data={"email": "us0@example.org", "country": "CA"}, source="test")
    lead_upsert(data={"email": "ca0@example.org", "country": "US"}, source="test")
    assert OutboxItem.objects.filter(object="list", local_id=mirror.pk, status="pending").count() == 1
    hubspot.requests.clear()
    run = outbox_drain(connection=connection)
    assert run.failed == 0
    (body,) = _puts(hubspot)
    leads["us0@example.org"].refresh_from_db()
    leads["ca0@example.org"].refresh_from_db()
    assert body == {"recordIdsToAdd": [leads["ca0@example.org"].hubspot_id],
                    "recordIdsToRemove": [leads["us0@example.org"].hubspot_id]}
    assert set(hubspot.list_members[made["listId"]]) == _hubspot_ids([*us[1:], "ca0@example.org"])
    assert hubspot.calls[("GET", f"{LISTS}/object-type-id/0-1/name/US leads")] == 1  # known now: no lookup
    assert hubspot.calls[("POST", f"{LISTS}/")] == 1

    # A write the condition does not read queues nothing; nothing changed, the sweep queues nothing.
    lead_upsert(data={"email": "us1@example.org", "first_name": "Ann"}, source="test")
    assert not OutboxItem.objects.filter(object="list", status="pending").exists()
    assert lists_sweep() == 0
    assert mirror_pending(mirror=mirror) == (0, 0)
    hubspot.requests.clear()
    outbox_drain(connection=connection)
    assert _puts(hubspot) == []


def test_sweep_queues_a_mirror_whose_segment_changed_without_a_write(connection, hubspot):
    _leads({"a@example.org": "US", "b@example.org": "DE"})
    segment = _segment()
    mirror = mirror_save(segment=segment, connection=connection)
    outbox_drain(connection=connection)
    # The condition is edited: no lead write announces the new members.
    segment_save(segment=segment, name=segment.name, condition='country in ("US", "DE")')
    assert not OutboxItem.objects.filter(object="list", status="pending").exists()
    assert lists_sweep() == 1
    hubspot.requests.clear()
    outbox_drain(connection=connection)
    (body,) = _puts(hubspot)
    assert body == {"recordIdsToAdd": list(_hubspot_ids(["b@example.org"])), "recordIdsToRemove": []}
    mirror.refresh_from_db()
    assert mirror.member_count == 2


def test_retry_after_lost_answers_makes_no_second_list_and_no_duplicate(connection, hubspot, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 0}
    _leads({"a@example.org": "US", "b@example.org": "US"})
    outbox_drain(connection=connection)
    mirror = mirror_save(segment=_segment(), connection=connection)
    hubspot.lose_answers = 1  # the list is created, the answer lost
    run = outbox_drain(connection=connection)
    assert run.failed == 1 and len(hubspot.lists) == 1
    _due(mirror)
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (1, 0)
    assert len(hubspot.lists) == 1 and hubspot.calls[("POST", f"{LISTS}/")] == 1  # found by name, adopted
    (list_id,) = hubspot.lists
    assert ListMirror.objects.get().remote_id == list_id

    # A member added, the answer lost: sent again, HubSpot's list is a set, nothing doubles.
    _leads({"c@example.org": "US"})
    _contacts_first(connection)
    hubspot.lose_answers = 1
    run = outbox_drain(connection=connection)
    assert run.failed == 1
    assert ListMember.objects.filter(mirror=mirror).count() == 2  # not recorded: the answer never came
    assert len(hubspot.list_members[list_id]) == 3  # but HubSpot has it
    _due(mirror)
    hubspot.requests.clear()
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (1, 0)
    (body,) = _puts(hubspot)
    assert body["recordIdsToAdd"] == list(_hubspot_ids(["c@example.org"]))
    assert len(hubspot.list_members[list_id]) == 3 and ListMember.objects.filter(mirror=mirror).count() == 3


def test_a_lead_not_in_hubspot_yet_is_pushed_first_and_the_list_waits(connection, hubspot):
    _leads({"a@example.org": "US", "late@example.org": "US"})
    late = Lead.objects.get(email="late@example.org")
    outbox_drain(connection=connection)
    # "late" never reached HubSpot (made before the connection, say).
    Lead.objects.filter(pk=late.pk).update(hubspot_id=None)
    from martech.crm.models import PushState

    PushState.objects.filter(object="contact", local_id=late.pk).delete()
    mirror = mirror_save(segment=_segment(), connection=connection)
    run = outbox_drain(connection=connection)
    mirror.refresh_from_db()
    late.refresh_from_db()
    assert late.hubspot_id  # queued by the list and pushed in the same run
    assert mirror.last_error == f"waiting for contact #{late.pk} to be pushed first"
    assert [b["recordIdsToAdd"] for b in _puts(hubspot)] == [list(_hubspot_ids(["a@example.org"]))]
    item = OutboxItem.objects.get(object="list", local_id=mirror.pk, status="pending")
    assert item.attempts == 1 and run.skipped >= 1
    _due(mirror)
    outbox_drain(connection=connection)
    mirror.refresh_from_db()
    assert [b["recordIdsToAdd"] for b in _puts(hubspot)][-1] == [late.hubspot_id]
    assert (mirror.last_error, mirror.member_count) == ("", 2)
    assert not OutboxItem.objects.filter(object="list", status="pending").exists()


def test_a_paused_mirror_sends_nothing_and_resuming_sends_the_difference(connection, hubspot):
    _leads({"a@example.org": "US", "b@example.org": "US"})
    mirror = mirror_save(segment=_segment(), connection=connection)
    outbox_drain(connection=connection)
    (list_id,) = hubspot.lists
    assert mirror_set_active(mirrors=[mirror], active=False) == 1
    # A row queued before the pause is settled without a call; the hooks queue no new one.
    OutboxItem.objects.create(connection=connection, object="list", local_id=mirror.pk)
    lead_upsert(data={"email": "a@example.org", "country": "CA"}, source="test")
    assert OutboxItem.objects.filter(object="list", status="pending").count() == 1
    hubspot.requests.clear()
    calls_before = sum(hubspot.calls.values())
    run = outbox_drain(connection=connection)
    assert _puts(hubspot) == [] and run.skipped >= 1
    assert sum(hubspot.calls.values()) - calls_before == 1  # only the contact's upsert
    assert not OutboxItem.objects.filter(object="list", status="pending").exists()
    assert lists_sweep() == 0  # paused mirrors are not swept either
    assert len(hubspot.list_members[list_id]) == 2

    mirror_set_active(mirrors=[mirror], active=True)
    outbox_drain(connection=connection)
    (body,) = _puts(hubspot)
    assert body == {"recordIdsToAdd": [], "recordIdsToRemove": list(_hubspot_ids(["a@example.org"]))}
    assert set(hubspot.list_members[list_id]) == _hubspot_ids(["b@example.org"])


def test_a_dynamic_list_of_that_name_is_refused_with_the_reason(connection, hubspot):
    _leads({"a@example.org": "US"})
    hubspot.put_list("US leads", processing_type="DYNAMIC")
    mirror = mirror_save(segment=_segment(), connection=connection)
    run = outbox_drain(connection=connection)
    mirror.refresh_from_db()
    assert run.failed == 1 and _puts(hubspot) == []
    assert "is a DYNAMIC list of object type 0-1: a segment mirror needs a MANUAL contacts list" in mirror.last_error
    assert hubspot.calls[("POST", f"{LISTS}/")] == 0
    # The emulator, asked anyway, refuses manual membership changes on it, as HubSpot does.
    from martech.crm.connectors.base import PermanentError

    (list_id,) = hubspot.lists
    with pytest.raises(PermanentError, match="DYNAMIC list"):
        HubSpotConnector(connection).list_change(list_id, add=["1"], remove={})


def test_a_contact_hubspot_no_longer_has_is_reported_not_dropped(connection, hubspot):
    _leads({"a@example.org": "US", "gone@example.org": "US"})
    outbox_drain(connection=connection)
    gone = Lead.objects.get(email="gone@example.org")
    del hubspot.store["contacts"][gone.hubspot_id]  # deleted in HubSpot
    mirror = mirror_save(segment=_segment(), connection=connection)
    run = outbox_drain(connection=connection)
    mirror.refresh_from_db()
    assert run.failed == 1
    assert mirror.last_error == (f"1 member(s) refused by the CRM (lead #{gone.pk}: HubSpot has no contact "
                                 f"{gone.hubspot_id} (recordIdsMissing: deleted there?))")
    assert list(ListMember.objects.filter(mirror=mirror).values_list("lead_id", flat=True)) == [
        Lead.objects.get(email="a@example.org").pk]
    assert OutboxItem.objects.get(object="list", status="pending").last_error == mirror.last_error


def test_an_existing_manual_list_is_adopted_with_its_members(connection, hubspot):
    _leads({"a@example.org": "US", "b@example.org": "DE"})
    outbox_drain(connection=connection)
    existing = hubspot.put_list("US leads")
    b_id = Lead.objects.get(email="b@example.org").hubspot_id
    stranger = hubspot.put_contact({"email": "stranger@example.org"})["id"]
    hubspot.list_members[existing["listId"]].update({b_id: "2026-01-01T00:00:00.000Z", stranger: "2026-01-01T00:00:00.000Z"})
    mirror_save(segment=_segment(), connection=connection)
    outbox_drain(connection=connection)
    (body,) = _puts(hubspot)
    # b is a lead here, not in the segment: removed; the stranger is not ours: left alone.
    assert body == {"recordIdsToAdd": list(_hubspot_ids(["a@example.org"])), "recordIdsToRemove": [b_id]}
    assert set(hubspot.list_members[existing["listId"]]) == {*_hubspot_ids(["a@example.org"]), stranger}


def test_emulator_pages_memberships_and_refuses_duplicate_names(connection, hubspot):
    ids = [hubspot.put_contact({"email": f"p{i}@example.org"})["id"] for i in range(260)]
    connector = HubSpotConnector(connection)
    list_id, existed = connector.list_ensure(name="Paged")
    assert not existed
    change = connector.list_change(list_id, add=ids[:260], remove={})
    assert len(change.added) == 260 and not change.errors
    again = connector.list_change(list_id, add=ids[:2], remove={"999999": ""})
    assert set(again.added) == set(ids[:2]) and again.removed == ["999999"]
    assert set(connector.list_members(list_id)) == set(ids)
    assert hubspot.calls[("GET", f"{LISTS}/{list_id}/memberships")] == 2  # 250 + 10
    # Names are unique per portal, whatever the case: the emulator refuses a second one.
    lists_api = connector.client.crm.lists.lists_api
    from hubspot.crm.lists import ApiException, ListCreateRequest

    with pytest.raises(ApiException) as refused:
        lists_api.create(list_create_request=ListCreateRequest(name="PAGED", object_type_id="0-1",
                                                               processing_type="MANUAL"))
    assert refused.value.status == 409
    assert connector.list_ensure(name="paged") == (list_id, True)


def test_lead_write_queues_only_mirrors_whose_condition_reads_the_field(connection, hubspot):
    a = _segment("Scored", "score >= 50")
    b = _segment("Acme people", 'email_domain = "acme.com"')
    ma, mb = mirror_save(segment=a, connection=connection), mirror_save(segment=b, connection=connection)
    OutboxItem.objects.filter(object="list").delete()
    lead, _ = lead_upsert(data={"email": "x@acme.com"}, source="test")  # a new lead: both
    assert set(OutboxItem.objects.filter(object="list").values_list("local_id", flat=True)) == {ma.pk, mb.pk}
    OutboxItem.objects.filter(object="list").delete()
    lead_upsert(data={"email": "x@acme.com", "country": "US"}, source="test")
    assert not OutboxItem.objects.filter(object="list").exists()
    from martech import hooks

    hooks.leads_changed(ids=[lead.pk], fields=["total_score"], source="scoring")  # as a rescoring announces it
    assert list(OutboxItem.objects.filter(object="list").values_list("local_id", flat=True)) == [ma.pk]


def test_a_second_mirror_with_the_same_hubspot_name_is_refused(connection):
    from django.core.exceptions import ValidationError

    segment = _segment()
    mirror_save(segment=segment, connection=connection, name="Newsletter")
    other = _segment("Other", 'country = "CA"')
    with pytest.raises(ValidationError) as refused:
        mirror_save(segment=other, connection=connection, name="newsletter")
    assert refused.value.message_dict == {"name": [
        "Another mirror already uses the HubSpot list name 'newsletter'; list names are unique per portal."]}


# --- Salesforce ----------------------------------------------------------------------------

def test_segment_mirrored_to_salesforce_campaign_members(sf_connection, salesforce, sf_no_sleep, settings):
    us = [f"us{i}@example.org" for i in range(3)]
    _leads({**{e: "US" for e in us}, "ca@example.org": "CA"})
    mirror = mirror_save(segment=_segment(), connection=sf_connection)
    run = outbox_drain(connection=sf_connection)
    assert run.failed == 0
    mirror.refresh_from_db()
    campaign = salesforce.records["Campaign"][mirror.remote_id]
    assert (campaign["Name"], campaign["Martech_Id__c"]) == ("US leads", f"list:{mirror.pk}")
    people = set(Lead.objects.filter(email__in=us).values_list("salesforce_lead_id", flat=True))
    members = salesforce.find("CampaignMember", CampaignId=mirror.remote_id)
    assert {m["LeadId"] for m in members} == people
    assert set(ListMember.objects.filter(mirror=mirror).values_list("member_id", flat=True)) == \
        {m["Id"] for m in members}
    assert salesforce.calls[("POST", f"{V}/composite/sobjects")] == 1  # 3 members in one Collections call

    # One leaves, one enters: one create, one delete by the member's Id.
    leaving = salesforce.find("CampaignMember", LeadId=Lead.objects.get(email="us0@example.org").salesforce_lead_id)
    lead_upsert(data={"email": "us0@example.org", "country": "CA"}, source="test")
    lead_upsert(data={"email": "ca@example.org", "country": "US"}, source="test")
    run = outbox_drain(connection=sf_connection)
    assert run.failed == 0
    assert salesforce.calls[("POST", f"{V}/composite/sobjects")] == 2
    assert salesforce.calls[("DELETE", f"{V}/composite/sobjects")] == 1
    assert leaving[0]["Id"] not in salesforce.records["CampaignMember"]
    wanted = set(Lead.objects.filter(email__in=[*us[1:], "ca@example.org"]).values_list("salesforce_lead_id",
                                                                                         flat=True))
    assert {m["LeadId"] for m in salesforce.find("CampaignMember", CampaignId=mirror.remote_id)} == wanted

    # A member lost in transit (written, answer lost) and one sales added meanwhile: neither is made twice.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 0}
    _leads({"new1@example.org": "US", "new2@example.org": "US"})
    _contacts_first(sf_connection)
    new2 = Lead.objects.get(email="new2@example.org")
    salesforce.put("CampaignMember", {"CampaignId": mirror.remote_id, "LeadId": new2.salesforce_lead_id})
    salesforce.lose_answers = 1
    run = outbox_drain(connection=sf_connection)
    assert run.failed == 1
    _due(mirror)
    run = outbox_drain(connection=sf_connection)
    assert run.failed == 0
    members = salesforce.find("CampaignMember", CampaignId=mirror.remote_id)
    assert len(members) == len({m["LeadId"] for m in members}) == 5
    mirror.refresh_from_db()
    assert (mirror.member_count, mirror.last_error) == (5, "")


def test_chosen_salesforce_campaign_is_used_and_its_members_adopted(sf_connection, salesforce):
    _leads({"a@example.org": "US", "b@example.org": "DE"})
    outbox_drain(connection=sf_connection)
    chosen = salesforce.put("Campaign", {"Name": "Spring fair"})
    b = Lead.objects.get(email="b@example.org")
    old = salesforce.put("CampaignMember", {"CampaignId": chosen["Id"], "LeadId": b.salesforce_lead_id})
    mirror = mirror_save(segment=_segment(), connection=sf_connection, remote_id=chosen["Id"])
    run = outbox_drain(connection=sf_connection)
    assert run.failed == 0
    assert len(salesforce.records["Campaign"]) == 1
    members = salesforce.find("CampaignMember", CampaignId=chosen["Id"])
    assert [m["LeadId"] for m in members] == [Lead.objects.get(email="a@example.org").salesforce_lead_id]
    assert old["Id"] not in salesforce.records["CampaignMember"]
    mirror.refresh_from_db()
    assert mirror.member_count == 1


def test_salesforce_emulator_campaign_members_duplicate_and_delete(sf_connection, salesforce):
    sf = SalesforceConnector(sf_connection).sf
    lead = salesforce.put("Lead", {"LastName": "Lee", "Company": "Acme"})
    campaign = salesforce.put("Campaign", {"Name": "Fair"})
    row = {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign["Id"], "LeadId": lead["Id"]}
    first = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [row]})
    second = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [row]})
    assert first[0]["success"] and second[0]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    gone = sf.restful("composite/sobjects", method="DELETE", params={"ids": first[0]["id"], "allOrNone": "false"})
    again = sf.restful("composite/sobjects", method="DELETE", params={"ids": first[0]["id"], "allOrNone": "false"})
    assert gone[0]["success"] and again[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


# --- admin ------------------------------------------------------------------------------

def test_ops_staff_create_and_pause_a_mirror_in_the_admin(client, marketing_ops, connection, hubspot):
    _leads({"a@example.org": "US"})
    segment = _segment()
    client.force_login(marketing_ops)
    page = client.post("/admin/crm/listmirror/add/", {"segment": segment.pk, "connection": connection.pk,
                                                      "name": "", "remote_id": "", "is_active": "on"})
    assert page.status_code == 302, page.content.decode()[:2000]
    mirror = ListMirror.objects.get()
    assert OutboxItem.objects.filter(object="list", local_id=mirror.pk, status="pending").exists()
    page = client.get(f"/admin/crm/listmirror/{mirror.pk}/change/")
    assert "1 to add, 0 to remove" in page.content.decode()
    outbox_drain(connection=connection)
    listing = client.get("/admin/crm/listmirror/").content.decode()
    assert "in sync" in listing and "US leads" in listing
    client.post("/admin/crm/listmirror/", {"action": "pause", "_selected_action": [mirror.pk]})
    mirror.refresh_from_db()
    assert not mirror.is_active and "paused" in client.get("/admin/crm/listmirror/").content.decode()


def test_a_limit_met_while_syncing_a_mirror_pauses_and_charges_no_attempt(connection, hubspot):
    """A 429 on the list calls is a limit, not the mirror's fault: the
    connection pauses, the mirror's row waits for the pause end with its
    attempts unchanged, and the sync after the pause sends the members."""
    _leads({"a@example.org": "US", "b@example.org": "US"})
    mirror = mirror_save(segment=_segment(), connection=connection)
    _contacts_first(connection)
    hubspot.daily_limit = 0  # spent: every call answers 429 policyName DAILY
    run = outbox_drain(connection=connection)
    assert "DAILY" in run.error and run.failed == 0
    row = OutboxItem.objects.get(object="list", local_id=mirror.pk, status="pending")
    connection.refresh_from_db()
    assert row.attempts == 0 and row.next_attempt_at == connection.paused_until
    assert hubspot.lists == {}

    hubspot.daily_limit = None  # a new day
    connection.paused_until = None
    connection.save(update_fields=["paused_until"])
    _due(mirror)
    assert outbox_drain(connection=connection).failed == 0
    (list_id,) = hubspot.lists
    assert set(hubspot.list_members[list_id]) == _hubspot_ids(["a@example.org", "b@example.org"])
