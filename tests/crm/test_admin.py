import pytest

from martech.crm.models import OutboxItem
from martech.crm.services import outbox_drain
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db


def test_health_page_shows_the_figures(client, marketing_ops, connection, hubspot, settings):
    lead_upsert(data={"email": "h@example.org"}, source="test")
    lead_upsert(data={"email": "h2@example.org"}, source="test")
    outbox_drain(connection=connection, max_items=1)
    OutboxItem.objects.filter(status="pending").update(status="dead", last_error="INVALID_EMAIL")
    client.force_login(marketing_ops)
    page = client.get(f"/admin/crm/connection/{connection.pk}/health/")
    assert page.status_code == 200
    health = page.context["health"]
    assert health["runs_24h"] == 1 and health["success_rate_24h"] == 100.0
    assert health["dead_letters"] == 1 and health["api_calls_used"] == 1 and health["backlog"] == 0
    html = page.content.decode()
    assert "emulator-token" not in html and "emulator-secret" not in html


def test_payload_preview(client, marketing_ops, connection):
    lead, _ = lead_upsert(data={"email": "p@example.org", "first_name": "Pia"}, source="test")
    client.force_login(marketing_ops)
    page = client.get(f"/admin/crm/connection/{connection.pk}/preview/", {"object": "contact",
                                                                           "record": "p@example.org"})
    assert page.context["payload"] == {"inputs": [{"id": "p@example.org", "idProperty": "email", "properties": {
        "email": "p@example.org", "firstname": "Pia", "lifecyclestage": "lead"}}]}
    page = client.get(f"/admin/crm/connection/{connection.pk}/preview/", {"object": "contact",
                                                                           "record": "nobody@example.org"})
    assert "No Contact / Lead with this id or email." in page.content.decode()


def test_dead_letter_retry_action_and_replay(client, marketing_ops, analyst, connection, hubspot):
    lead, _ = lead_upsert(data={"email": "d@example.org"}, source="test")
    item = OutboxItem.objects.get()
    OutboxItem.objects.filter(pk=item.pk).update(status="dead", attempts=5, last_error="boom")
    url = "/admin/crm/deadletter/"
    client.force_login(analyst)
    assert client.get(url).status_code == 200
    refused = client.post(url, {"action": "retry_dead_letters", "_selected_action": [item.pk], "apply": "1"})
    item.refresh_from_db()
    assert item.status == "dead"  # analysts view only
    client.force_login(marketing_ops)
    confirm = client.post(url, {"action": "retry_dead_letters", "_selected_action": [item.pk]})
    assert confirm.status_code == 200 and b"Yes, retry" in confirm.content
    client.post(url, {"action": "retry_dead_letters", "_selected_action": [item.pk], "apply": "1"})
    item.refresh_from_db()
    assert (item.status, item.attempts) == ("pending", 0)
    run = outbox_drain(connection=connection)
    assert run.pushed == 1 and "d@example.org" in hubspot.by_email
    assert refused.status_code in (200, 302, 403)


@pytest.mark.parametrize("path", ["connection", "fieldmapping", "lifecyclemapping", "deadletter", "outboxitem",
                                  "syncrun", "webhookreceipt", "crmowner", "synccursor", "pullfailure"])
def test_admin_lists_load(client, superuser, connection, path):
    client.force_login(superuser)
    assert client.get(f"/admin/crm/{path}/").status_code == 200


def test_saving_invalid_mapping_in_admin_names_the_field(client, marketing_ops, connection):
    client.force_login(marketing_ops)
    response = client.post("/admin/crm/fieldmapping/add/", {
        "connection": connection.pk, "object": "contact", "local_field": "no_such_field", "remote_field": "x",
        "direction": "both", "kind": "text", "value_map": "{}", "default": "", "system_of_record": "local"})
    assert response.status_code == 200
    assert "Lead has no field" in response.content.decode()


def test_payload_preview_for_accounts_and_opportunities(client, marketing_ops, deal_mappings, hubspot):
    from decimal import Decimal

    from attribution.services import opportunity_upsert
    from martech.services.accounts import account_upsert

    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com", "employee_count": 12}, source="test")
    outbox_drain(connection=deal_mappings)
    opportunity, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal("10.50"), "account": account},
                                        source="test")
    client.force_login(marketing_ops)
    url = f"/admin/crm/connection/{deal_mappings.pk}/preview/"
    page = client.get(url, {"object": "company", "record": "ACME.com"})
    account.refresh_from_db()
    # Pushed before: the drain updates it by its HubSpot id (companies have no unique key to upsert by).
    assert page.context["payload"] == {"update": {"inputs": [{"id": account.hubspot_id, "objectWriteTraceId": str(
        account.pk), "properties": {"domain": "acme.com", "name": "Acme", "numberofemployees": "12"}}]}}
    page = client.get(url, {"object": "deal", "record": str(opportunity.pk)})
    payload = page.context["payload"]
    assert payload["inputs"] == [{"id": str(opportunity.pk), "idProperty": "martech_deal_id", "properties": {
        "dealname": "Deal", "amount": "10.5", "deal_currency_code": "USD", "dealstage": "appointmentscheduled",
        "martech_deal_id": str(opportunity.pk)}}]
    assert payload["associations"] == [{"to": "companies", "from": {"id": "(id from the upsert)"},
                                        "ids": [account.hubspot_id]}]
    # Exactly what the drain then sends.
    outbox_drain(connection=deal_mappings)
    method, path, body = next(r for r in hubspot.requests if r[1] == "/crm/v3/objects/deals/batch/upsert")
    assert body == {"inputs": payload["inputs"]}
    page = client.get(url, {"object": "deal", "record": "nope"})
    assert "No Deal / Opportunity with this id." in page.content.decode()


def test_health_page_counts_per_object_type(client, marketing_ops, company_mappings, hubspot):
    from martech.services.accounts import account_upsert

    account_upsert(data={"name": "A", "domain": "a.io"}, source="test")
    lead_upsert(data={"email": "h@example.org"}, source="test")
    outbox_drain(connection=company_mappings)
    account_upsert(data={"name": "B", "domain": "b.io"}, source="test")
    OutboxItem.objects.filter(object="company", status="pending").update(status="dead", last_error="x")
    lead_upsert(data={"email": "h2@example.org"}, source="test")
    client.force_login(marketing_ops)
    page = client.get(f"/admin/crm/connection/{company_mappings.pk}/health/")
    rows = {row["object"]: row for row in page.context["health"]["by_object"]}
    assert (rows["company"]["in_sync"], rows["company"]["dead"], rows["company"]["backlog"]) == (1, 1, 0)
    assert (rows["contact"]["in_sync"], rows["contact"]["backlog"]) == (1, 1)
    assert rows["contact"]["oldest_age_seconds"] is not None
    assert rows["deal"]["backlog"] == 0 and rows["deal"]["label"] == "Deal / Opportunity"
    assert 'id="by-object"' in page.content.decode()
