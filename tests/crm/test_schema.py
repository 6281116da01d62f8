"""Portal (HubSpot) and org (Salesforce) schema awareness, over HTTP through
the real client libraries: definitions read and stored, mappings refused at
save with the field and the reason, the connection check, companies (and
deals without a unique key) matched instead of upserted, converted Leads, and
the emulators' documented refusals."""
from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from hubspot import HubSpot
from hubspot.crm.properties import PropertyCreate

from martech.crm.connectors.base import TransientError
from martech.crm.models import FieldMapping, LifecycleMapping, OutboxItem, PushState, RemoteSchema
from martech.crm.schema import connection_check, schema_refresh
from martech.crm.services import outbox_drain
from martech.crm.types import CONTACT_MAPPINGS, TASK_MAPPINGS
from martech.models import Account, LifecycleStage
from martech.services.accounts import account_upsert
from martech.services.leads import lead_upsert
from tests.crm.conftest import _map

pytestmark = pytest.mark.django_db
SEARCH = ("POST", "/crm/v3/objects/companies/search")
CREATE = ("POST", "/crm/v3/objects/companies/batch/create")
UPDATE = ("POST", "/crm/v3/objects/companies/batch/update")
DEAL_SEARCH = ("POST", "/crm/v3/objects/deals/search")
DEAL_CREATE = ("POST", "/crm/v3/objects/deals/batch/create")
DEAL_UPSERT = ("POST", "/crm/v3/objects/deals/batch/upsert")
V = "/services/data/v59.0"


def _client(hubspot_app, settings) -> HubSpot:
    return HubSpot(access_token=settings.MARTECH_CRM["HUBSPOT_TOKEN"], host=settings.MARTECH_CRM["HUBSPOT_URL"])


def _due_now():
    OutboxItem.objects.filter(status="pending").update(next_attempt_at=timezone.now())


def _mapping(connection, **fields) -> FieldMapping:
    return FieldMapping(connection=connection, **{"object": "contact", "kind": "text", **fields})


# --- mapping validation -------------------------------------------------------

def test_definitions_read_once_per_object_type_and_stored(connection, hubspot):
    schema_refresh(connection=connection, remote_objects=["contacts", "deals"])
    assert hubspot.calls[("GET", "/crm/v3/properties/contacts")] == 1
    assert hubspot.calls[("GET", "/crm/v3/properties/deals")] == 1
    score = RemoteSchema.objects.get(connection=connection, remote_object="contacts").fields["hubspotscore"]
    assert score["read_only"] is True and score["type"] == "number"
    stage = RemoteSchema.objects.get(connection=connection, remote_object="contacts").fields["lifecyclestage"]
    assert stage["restricted"] and "marketingqualifiedlead" in stage["options"]
    deal_id = RemoteSchema.objects.get(connection=connection, remote_object="deals").fields["martech_deal_id"]
    assert deal_id["unique"] is True


def test_mapping_save_refuses_what_the_portal_would(connection, hubspot):
    schema_refresh(connection=connection, remote_objects=["contacts", "deals"])
    with pytest.raises(ValidationError) as unknown:
        _mapping(connection, local_field="job_title", remote_field="job_level").full_clean()
    assert "HubSpot contacts has no field 'job_level'" in unknown.value.message_dict["remote_field"][0]
    assert "Settings > Properties > Create property: object Contact" in unknown.value.message_dict["remote_field"][0]

    with pytest.raises(ValidationError) as read_only:
        _mapping(connection, local_field="total_score", remote_field="hubspotscore", kind="number",
                 direction="push").full_clean()
    assert "'hubspotscore' is read-only" in read_only.value.message_dict["direction"][0]
    # Read back it is fine: HubSpot's score is pulled, never pushed.
    _mapping(connection, local_field="total_score", remote_field="hubspotscore", kind="number",
             direction="pull").full_clean()

    with pytest.raises(ValidationError) as calculated:
        _mapping(connection, local_field="properties.visits", remote_field="hs_analytics_num_visits",
                 kind="number", direction="both").full_clean()
    assert "'hs_analytics_num_visits' is calculated" in calculated.value.message_dict["direction"][0]

    with pytest.raises(ValidationError) as picklist:
        FieldMapping(connection=connection, object="deal", local_field="stage", remote_field="dealstage",
                     kind="picklist", value_map={"prospecting": "appointmentscheduled", "won": "won_it"}).full_clean()
    assert "'won_it' is not among the options of HubSpot deals field 'dealstage'" in \
        picklist.value.message_dict["value_map"][0]

    with pytest.raises(ValidationError) as default:
        _mapping(connection, local_field="properties.stage", remote_field="lifecyclestage",
                 default="hot").full_clean()
    assert "'hot' is not among the options of HubSpot contacts field 'lifecyclestage'" in \
        default.value.message_dict["default"][0]

    stage = LifecycleStage.objects.get(key="opportunity")
    with pytest.raises(ValidationError) as lifecycle:
        LifecycleMapping(connection=connection, remote_value="deal-in-progress", stage=stage).full_clean()
    assert "'deal-in-progress' is not among the options of HubSpot contacts field 'lifecyclestage'" in \
        lifecycle.value.message_dict["remote_value"][0]
    LifecycleMapping(connection=connection, remote_value="opportunity", stage=stage).full_clean()


def test_mapping_save_without_definitions_warns_and_goes_through(connection):
    mapping = _mapping(connection, local_field="job_title", remote_field="job_level")
    mapping.full_clean()
    assert mapping.schema_warnings == ["HubSpot contacts definitions were not read yet, so 'job_level' was not "
                                       "checked: run the connection check."]


def test_admin_mapping_save_shows_the_refusal(client, marketing_ops, connection, hubspot):
    schema_refresh(connection=connection, remote_objects=["contacts"])
    client.force_login(marketing_ops)
    response = client.post("/admin/crm/fieldmapping/add/", {
        "connection": connection.pk, "object": "contact", "local_field": "total_score", "remote_field": "hubspotscore",
        "direction": "push", "kind": "number", "value_map": "{}", "default": "", "system_of_record": "local"})
    assert response.status_code == 200
    assert "is read-only (the CRM sets it)" in response.content.decode()
    assert not FieldMapping.objects.filter(remote_field="hubspotscore").exists()


def test_default_mappings_push_no_read_only_property():
    assert ("total_score", "martech_score", "number", {"direction": "push"}) in CONTACT_MAPPINGS
    assert all(remote != "hubspotscore" for _, remote, _, _ in CONTACT_MAPPINGS)


# --- the connection check -----------------------------------------------------

def test_check_lists_missing_properties_with_steps_and_passes_once_created(connection, hubspot_bare, settings,
                                                                           client, marketing_ops):
    from attribution.crm_sync import HUBSPOT_MAPPINGS

    FieldMapping.objects.create(connection=connection, local_field="total_score", remote_field="martech_score",
                                kind="number", direction="push")
    _map(connection, "task", TASK_MAPPINGS)
    _map(connection, "deal", HUBSPOT_MAPPINGS)
    report = connection_check(connection=connection)
    assert not report.ok
    assert {(r.remote_object, r.name) for r in report.missing} == {("deals", "martech_deal_id"),
                                                                   ("tasks", "martech_task_id")}
    deal = next(r for r in report.missing if r.name == "martech_deal_id")
    assert deal.steps == ("Create it in HubSpot: Settings > Properties > Create property: object Deal, label "
                          "martech_deal_id, internal name martech_deal_id, type single-line text, 'Require unique "
                          "values' on.")
    ((what, field, reason),) = report.refused
    assert what == "mapping contact total_score -> martech_score" and field == "remote_field"
    assert "has no field 'martech_score'" in reason and "object Contact" in reason and "type number" in reason
    assert any("companies are matched by the stored HubSpot id" in note for note in report.notes)
    # One definitions call per synced object type.
    assert all(hubspot_bare.calls[("GET", f"/crm/v3/properties/{t}")] == 1
               for t in ("contacts", "companies", "deals", "tasks"))

    with pytest.raises(CommandError) as failed:
        call_command("crm_sync", "--check", "--provider", "hubspot")
    assert "check_failed" in str(failed.value)

    # The operator creates them (the properties API is what Settings > Properties calls).
    api = _client(hubspot_bare, settings).crm.properties.core_api
    for object_type, name, type_, field_type, unique in [("deals", "martech_deal_id", "string", "text", True),
                                                         ("tasks", "martech_task_id", "string", "text", True),
                                                         ("contacts", "martech_score", "number", "number", False)]:
        api.create(object_type, property_create=PropertyCreate(
            name=name, label=name, type=type_, field_type=field_type, group_name="martech", has_unique_value=unique))
    report = connection_check(connection=connection)
    assert report.ok and not report.missing and not report.refused, report.lines()

    client.force_login(marketing_ops)
    page = client.post(f"/admin/crm/connection/{connection.pk}/check/")
    assert page.status_code == 200 and page.context["report"].ok
    assert "Nothing missing or refused" in page.content.decode()


def test_check_command_prints_the_report_as_json(connection, hubspot, capsys):
    call_command("crm_sync", "--check", "--provider", "hubspot")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["ok"] is True and line["provider"] == "hubspot" and "contacts" in line["read"]


def test_admin_check_lists_what_is_missing(client, marketing_ops, task_mappings, hubspot):
    hubspot.properties["tasks"].pop("martech_task_id")
    client.force_login(marketing_ops)
    assert client.get(f"/admin/crm/connection/{task_mappings.pk}/check/").context["report"] is None  # GET: no call
    page = client.post(f"/admin/crm/connection/{task_mappings.pk}/check/")
    body = page.content.decode()
    assert "Missing tasks field martech_task_id" in body and "object Task" in body


# --- companies and other objects without a unique key -------------------------

def test_company_created_once_even_when_the_create_answer_is_lost(company_mappings, hubspot):
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    hubspot.lose_answers = 1  # the create is done, its answer lost
    run = outbox_drain(connection=company_mappings)
    assert run.failed == 1 and hubspot.calls[CREATE] == 1  # not retried within the call
    assert len(hubspot.companies) == 1
    _due_now()
    run = outbox_drain(connection=company_mappings)
    assert run.pushed == 1
    assert (hubspot.calls[CREATE], hubspot.calls[SEARCH], hubspot.calls[UPDATE]) == (1, 2, 1)
    assert len(hubspot.companies) == 1
    account.refresh_from_db()
    assert account.hubspot_id == next(iter(hubspot.companies))
    # A third push: by id, no search.
    account_upsert(data={"name": "Acme Inc"}, account=account, source="test")
    outbox_drain(connection=company_mappings)
    assert (hubspot.calls[SEARCH], hubspot.calls[UPDATE], len(hubspot.companies)) == (2, 2, 1)


def test_company_pushed_twice_in_two_batches_is_one_company(company_mappings, hubspot):
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    outbox_drain(connection=company_mappings)
    # Everything we knew is lost (a restored database): the search finds it again.
    PushState.objects.all().delete()
    Account.objects.update(hubspot_id=None)
    OutboxItem.objects.create(connection=company_mappings, object="company", local_id=account.pk)
    assert outbox_drain(connection=company_mappings).pushed == 1
    assert len(hubspot.companies) == 1 and hubspot.calls[CREATE] == 1
    method, path, body = next(r for r in reversed(hubspot.requests) if r[1] == SEARCH[1])
    assert body["filterGroups"] == [{"filters": [{"propertyName": "domain", "operator": "IN",
                                                  "values": ["acme.com"]}]}]


def test_created_id_is_stored_before_a_later_call_fails(company_mappings, hubspot, monkeypatch):
    from martech.crm.connectors.hubspot import HubSpotConnector

    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")

    def broken(self, *args, **kwargs):
        raise TransientError("HubSpot 503: associations down")

    monkeypatch.setattr(HubSpotConnector, "_associate", broken)
    run = outbox_drain(connection=company_mappings)
    assert run.failed == 1
    state = PushState.objects.get(object="company", local_id=account.pk)
    assert state.remote_id == next(iter(hubspot.companies)) and state.payload_hash == ""
    monkeypatch.undo()
    _due_now()
    assert outbox_drain(connection=company_mappings).pushed == 1
    # Updated by the stored id: no second search, no second create.
    assert (hubspot.calls[SEARCH], hubspot.calls[CREATE], hubspot.calls[UPDATE]) == (1, 1, 1)


def test_deal_without_the_id_property_is_refused_with_the_steps(company_mappings, hubspot_bare):
    from attribution.crm_sync import HUBSPOT_MAPPINGS
    from attribution.services import opportunity_upsert

    _map(company_mappings, "deal", HUBSPOT_MAPPINGS)
    opportunity, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
    outbox_drain(connection=company_mappings)
    item = OutboxItem.objects.get(object="deal", local_id=opportunity.pk)
    assert item.status == "pending" and "HubSpot portal has no deals property martech_deal_id" in item.last_error
    assert "object Deal" in item.last_error and "'Require unique values' on" in item.last_error
    assert hubspot_bare.calls[DEAL_UPSERT] == hubspot_bare.calls[DEAL_CREATE] == 0


def test_deal_with_a_non_unique_id_property_is_matched_not_duplicated(company_mappings, hubspot_bare):
    from attribution.crm_sync import HUBSPOT_MAPPINGS
    from attribution.services import opportunity_upsert

    hubspot_bare.add_property("deals", {"name": "martech_deal_id", "label": "Martech deal id", "type": "string",
                                        "fieldType": "text", "groupName": "dealinformation"})
    _map(company_mappings, "deal", HUBSPOT_MAPPINGS)
    opportunity, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
    hubspot_bare.lose_answers = 1
    outbox_drain(connection=company_mappings)
    _due_now()
    assert outbox_drain(connection=company_mappings).pushed == 1
    assert len(hubspot_bare.deals) == 1 and hubspot_bare.calls[DEAL_CREATE] == 1
    assert hubspot_bare.calls[DEAL_UPSERT] == 0  # HubSpot would refuse the non-unique key
    (deal,) = hubspot_bare.deals.values()
    assert deal["properties"]["martech_deal_id"] == str(opportunity.pk)
    report = connection_check(connection=company_mappings)
    assert any("martech_deal_id exists without unique values" in n for n in report.notes)


# --- the HubSpot emulator's documented refusals -------------------------------

def test_emulator_refuses_domain_as_upsert_key(hubspot, settings):
    from hubspot.crm.companies import ApiException, BatchInputSimplePublicObjectBatchInputUpsert, \
        SimplePublicObjectBatchInputUpsert

    api = _client(hubspot, settings).crm.companies.batch_api
    with pytest.raises(ApiException) as refused:
        api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[SimplePublicObjectBatchInputUpsert(
            id="acme.com", id_property="domain", properties={"name": "Acme"})]))
    assert refused.value.status == 400
    assert "Unable to perform update/upsert by non-unique 0-2 property domain" in refused.value.body
    assert not hubspot.companies


def test_emulator_refuses_unknown_read_only_and_bad_option_per_record(hubspot, settings):
    from hubspot.crm.contacts import BatchInputSimplePublicObjectBatchInputUpsert, SimplePublicObjectBatchInputUpsert

    api = _client(hubspot, settings).crm.contacts.batch_api
    rows = [("a@example.org", {"favourite_colour": "blue"}), ("b@example.org", {"hubspotscore": "80"}),
            ("c@example.org", {"lifecyclestage": "hot"}), ("d@example.org", {"lifecyclestage": "lead"})]
    answer = api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
        SimplePublicObjectBatchInputUpsert(id=email, id_property="email", properties={"email": email, **props})
        for email, props in rows]))
    errors = {e.context["ids"][0]: e.message for e in answer.errors}
    assert 'PROPERTY_DOESNT_EXIST' in errors["a@example.org"] and 'Property \\"favourite_colour\\" does not exist' \
        in errors["a@example.org"]
    assert "READ_ONLY_VALUE" in errors["b@example.org"]
    assert "INVALID_OPTION" in errors["c@example.org"] and "hot was not one of the allowed options" in \
        errors["c@example.org"]
    assert [r.properties["email"] for r in answer.results] == ["d@example.org"]


def test_emulator_properties_api(hubspot, settings):
    from hubspot.crm.properties import ApiException

    api = _client(hubspot, settings).crm.properties.core_api
    contacts = {p.name: p for p in api.get_all("contacts").results}
    assert contacts["hubspotscore"].modification_metadata.read_only_value is True
    assert contacts["createdate"].modification_metadata.read_only_value is True
    assert contacts["email"].has_unique_value is False
    statuses = next(p for p in api.get_all("tasks").results if p.name == "hs_task_status")
    assert [o.value for o in statuses.options] == ["NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"]
    made = api.create("companies", property_create=PropertyCreate(
        name="company_key", label="Company key", type="string", field_type="text", group_name="companyinformation",
        has_unique_value=True))
    assert made.has_unique_value is True and made.modification_metadata.read_only_value is False
    with pytest.raises(ApiException) as again:
        api.create("companies", property_create=PropertyCreate(
            name="company_key", label="Company key", type="string", field_type="text", group_name="x"))
    assert again.value.status == 409


def test_emulator_search_by_domain_in(hubspot, settings):
    from hubspot.crm.companies import Filter, FilterGroup, PublicObjectSearchRequest

    for domain in ("a.com", "b.com", "c.com"):
        hubspot.put("companies", {"domain": domain, "name": domain})
    page = _client(hubspot, settings).crm.companies.search_api.do_search(PublicObjectSearchRequest(
        filter_groups=[FilterGroup(filters=[Filter(property_name="domain", operator="IN", values=["a.com", "c.com"])])],
        properties=["domain"], sorts=[], limit=100, after="0"))
    assert sorted(r.properties["domain"] for r in page.results) == ["a.com", "c.com"]


# --- Salesforce ---------------------------------------------------------------

def test_salesforce_check_lists_the_external_id_fields_and_passes_once_made(sf_connection, salesforce):
    for fields in salesforce.custom_fields.values():
        fields.clear()  # an org nobody set up
    report = connection_check(connection=sf_connection)
    assert ("Lead", "Martech_Id__c") in {(r.remote_object, r.name) for r in report.missing}
    lead = next(r for r in report.missing if r.remote_object == "Lead")
    assert lead.steps == ("Create it in Salesforce: Setup > Object Manager > Lead > Fields & Relationships > New: "
                          "Text(64), External ID, Unique, name Martech_Id__c.")
    task = next(r for r in report.missing if r.remote_object == "Task")
    assert "Object Manager > Activity >" in task.steps
    assert salesforce.calls[("GET", f"{V}/sobjects/Lead/describe")] == 1
    salesforce.add_project_fields()
    report = connection_check(connection=sf_connection)
    assert report.ok, report.lines()


def test_salesforce_mapping_refusals(sf_connection, salesforce):
    schema_refresh(connection=sf_connection)
    with pytest.raises(ValidationError) as unknown:
        _mapping(sf_connection, local_field="properties.tier", remote_field="Tier__c").full_clean()
    assert "Salesforce Lead has no field 'Tier__c'" in unknown.value.message_dict["remote_field"][0]
    assert "Setup > Object Manager > Lead > Fields & Relationships > New" in \
        unknown.value.message_dict["remote_field"][0]
    with pytest.raises(ValidationError) as read_only:
        _mapping(sf_connection, local_field="properties.x", remote_field="ConvertedContactId",
                 direction="push").full_clean()
    assert "'ConvertedContactId' is read-only" in read_only.value.message_dict["direction"][0]
    stage = LifecycleStage.objects.get(key="opportunity")
    with pytest.raises(ValidationError) as status:
        LifecycleMapping(connection=sf_connection, remote_value="Nurturing", stage=stage).full_clean()
    assert "'Nurturing' is not among the options of Salesforce Lead field 'Status'" in \
        status.value.message_dict["remote_value"][0]
    salesforce.add_field("Lead", "Tier__c", label="Tier")
    schema_refresh(connection=sf_connection, remote_objects=["Lead", "Contact"])
    with pytest.raises(ValidationError) as contact_side:  # a Lead field the Contact lacks
        _mapping(sf_connection, local_field="properties.tier", remote_field="Tier__c").full_clean()
    assert "Salesforce Contact has no field 'Tier__c'" in contact_side.value.message_dict["remote_field"][0]


def test_converted_lead_update_goes_to_its_contact(sf_connection, salesforce):
    lead, _ = lead_upsert(data={"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"}, source="test")
    outbox_drain(connection=sf_connection)
    lead.refresh_from_db()
    contact = salesforce.convert_lead(lead.salesforce_lead_id)
    lead_upsert(data={"email": "ann@example.org", "job_title": "CTO"}, source="test")
    run = outbox_drain(connection=sf_connection)
    assert (run.pushed, run.failed) == (1, 0)
    item = OutboxItem.objects.filter(object="contact", local_id=lead.pk).latest("pk")
    assert item.status == "done"
    assert contact["Title"] == "CTO" and contact["Martech_Id__c"] == str(lead.pk)
    assert salesforce.records["Lead"][lead.salesforce_lead_id].get("Title") is None  # the Lead was not changed
    lead.refresh_from_db()
    assert lead.salesforce_contact_id == contact["Id"]
    assert PushState.objects.get(object="contact", local_id=lead.pk).remote_id == contact["Id"]


def test_converted_lead_found_by_external_id_when_its_id_was_never_stored(sf_connection, salesforce):
    from martech.models import Lead

    lead, _ = lead_upsert(data={"email": "bo@example.org", "last_name": "Bo"}, source="test")
    outbox_drain(connection=sf_connection)
    lead.refresh_from_db()
    contact = salesforce.convert_lead(lead.salesforce_lead_id)
    PushState.objects.all().delete()
    Lead.objects.filter(pk=lead.pk).update(salesforce_lead_id=None)
    OutboxItem.objects.create(connection=sf_connection, object="contact", local_id=lead.pk)
    assert outbox_drain(connection=sf_connection).pushed == 1
    lead.refresh_from_db()
    assert lead.salesforce_contact_id == contact["Id"] and len(salesforce.records["Contact"]) == 1


def test_salesforce_emulator_refusals(sf_connection, salesforce):
    from martech.crm.connectors.salesforce import SalesforceConnector

    sf = SalesforceConnector(sf_connection).sf
    with pytest.raises(Exception) as unknown:
        sf.restful("composite/sobjects/Lead/Martech_Id__c", method="PATCH", json={"allOrNone": False, "records": [
            {"attributes": {"type": "Lead"}, "Martech_Id__c": "1", "LastName": "L", "Company": "C", "Nope__c": "x"}]})
    assert "INVALID_FIELD" in str(unknown.value) and "No such column 'Nope__c' on sobject of type Lead" in \
        str(unknown.value)
    salesforce.custom_fields["Account"].clear()
    with pytest.raises(Exception) as no_external_id:
        sf.restful("composite/sobjects/Account/Martech_Id__c", method="PATCH", json={"allOrNone": False, "records": [
            {"attributes": {"type": "Account"}, "Martech_Id__c": "1", "Name": "A"}]})
    assert "NOT_FOUND" in str(no_external_id.value)
    task = salesforce.put("Task", {"Subject": "Call"})
    opportunity_bad, task_closed = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Opportunity"}, "Name": "O", "StageName": "Won-ish", "CloseDate": "2030-01-01"},
        {"attributes": {"type": "Task"}, "Subject": "Mail", "IsClosed": True}]})
    assert opportunity_bad["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert opportunity_bad["errors"][0]["fields"] == ["StageName"]
    assert task_closed["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    lead = salesforce.put("Lead", {"LastName": "L", "Company": "C"})
    salesforce.convert_lead(lead["Id"])
    (converted,) = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Lead"}, "Id": lead["Id"], "Title": "CEO"}]})
    assert converted["errors"][0]["statusCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    (ok,) = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "Id": task["Id"], "Status": "Completed"}]})
    assert ok["success"] is True
    describe = sf.restful("sobjects/Lead/describe", method="GET")
    fields = {f["name"]: f for f in describe["fields"]}
    assert fields["Status"]["restrictedPicklist"] is True and fields["ConvertedContactId"]["updateable"] is False
    assert fields["Martech_Id__c"]["externalId"] is True and fields["Martech_Id__c"]["unique"] is True
