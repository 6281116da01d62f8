"""Incremental SOQL pull from the Salesforce emulator, conversions, the command.
What Salesforce does as HubSpot does (conflicts, dry runs) is in test_pull.py."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import OutboxItem, SyncCursor
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Lead
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def soql_log(salesforce, monkeypatch):
    """Every SOQL string the emulator received."""
    seen: list[str] = []
    original = salesforce.query

    def spy(soql, version):
        seen.append(soql)
        return original(soql, version)

    monkeypatch.setattr(salesforce, "query", spy)
    return seen


def test_pull_creates_leads_through_dedupe_and_moves_cursor(sf_connection, salesforce, soql_log):
    salesforce.put("Lead", {"Email": "New@Example.org", "FirstName": "Nia", "LastName": "Ng", "Company": "Acme",
                            "Title": "VP", "Status": "Qualified"})
    salesforce.put("Contact", {"Email": "con@example.org", "LastName": "Cole", "MailingCountry": "FR"})
    run = pull_changes(connection=sf_connection)
    assert (run.pulled, run.failed, run.api_calls) == (2, 0, 2)  # one SOQL query per object
    lead = Lead.objects.get(email="new@example.org")
    assert (lead.first_name, lead.job_title, lead.company_name, lead.lifecycle_stage.key) == ("Nia", "VP", "Acme",
                                                                                             "sql")
    assert lead.salesforce_lead_id.startswith("00Q")
    contact = Lead.objects.get(email="con@example.org")
    assert contact.salesforce_contact_id.startswith("003") and contact.country == "FR"  # MailingCountry -> country
    assert not OutboxItem.objects.exists()  # the pull's own writes are not echoed back
    cursor = SyncCursor.objects.get(connection=sf_connection, object="contact")
    assert cursor.value == salesforce.find("Contact")[0]["SystemModstamp"]
    assert soql_log[0] == ("SELECT Company, Country, Email, FirstName, Id, LastName, Status, SystemModstamp, Title "
                           "FROM Lead WHERE IsConverted = false ORDER BY SystemModstamp, Id")

    run = pull_changes(connection=sf_connection)
    assert run.pulled == 0
    literal = cursor.value.replace("+0000", "+00:00")
    assert soql_log[-2].endswith(f"WHERE IsConverted = false AND SystemModstamp >= {literal} "
                                 "ORDER BY SystemModstamp, Id")
    assert soql_log[-1].endswith(f"FROM Contact WHERE SystemModstamp >= {literal} ORDER BY SystemModstamp, Id")

    # A salesperson edits the Lead: the same local lead is updated, no duplicate.
    salesforce.put("Lead", {"Id": lead.salesforce_lead_id, "Title": "CEO"})
    assert pull_changes(connection=sf_connection).pulled == 1
    lead.refresh_from_db()
    assert lead.job_title == "CEO" and Lead.objects.count() == 2


def test_pull_matches_an_existing_lead_by_email(sf_connection, salesforce):
    lead, _ = lead_upsert(data={"email": "known@example.org", "first_name": "Old"}, source="test")
    OutboxItem.objects.all().delete()
    salesforce.put("Lead", {"Email": "KNOWN@example.org", "LastName": "K", "Company": "C", "FirstName": "Newer"})
    salesforce.put("Lead", {"Email": "KNOWN@example.org", "Title": "Boss"})
    pull_changes(connection=sf_connection)
    lead.refresh_from_db()
    assert Lead.objects.count() == 1 and lead.salesforce_lead_id
    # Never synced counts as changed here too: first_name is ours (system of record), Title is Salesforce's.
    assert (lead.first_name, lead.job_title) == ("Old", "Boss")


def test_converted_lead_becomes_the_contact(sf_connection, salesforce):
    salesforce.put("Lead", {"Email": "conv@example.org", "LastName": "Vo", "Company": "C"})
    pull_changes(connection=sf_connection)
    lead = Lead.objects.get(email="conv@example.org")
    (sf_lead,) = salesforce.find("Lead")
    # Salesforce converts the Lead: the Lead is marked converted, a Contact carries the person.
    contact = salesforce.put("Contact", {"Email": "conv@example.org", "LastName": "Vo", "Title": "Buyer"})
    salesforce.put("Lead", {"Id": sf_lead["Id"], "IsConverted": True, "ConvertedContactId": contact["Id"]})
    run = pull_changes(connection=sf_connection)
    assert run.pulled == 1  # the converted Lead is not pulled again
    lead.refresh_from_db()
    assert lead.salesforce_contact_id == contact["Id"] and lead.job_title == "Buyer"
    assert Lead.objects.count() == 1
    # From now on the lead is pushed to the Contact.
    lead_upsert(data={"email": "conv@example.org", "first_name": "Val"}, source="test")
    assert outbox_drain(connection=sf_connection).pushed == 1
    assert salesforce.records["Contact"][contact["Id"]]["FirstName"] == "Val"
    assert salesforce.records["Contact"][contact["Id"]]["Martech_Id__c"] == str(lead.pk)


def test_pull_pages_through_next_records_url(sf_connection, salesforce):
    salesforce.query_page_size = 50
    for i in range(120):
        salesforce.put("Lead", {"Email": f"c{i}@example.org", "LastName": f"C{i}", "Company": "Acme"})
    run = pull_changes(connection=sf_connection)
    assert run.pulled == 120 and Lead.objects.count() == 120
    assert run.api_calls == 3 + 1  # Lead: query + 2 x nextRecordsUrl; Contact: one query
    more = [path for (method, path) in salesforce.calls if path.startswith("/services/data/v59.0/query/01g")]
    assert len(more) == 2


def test_failed_page_keeps_the_cursor_before_unseen_records(sf_connection, salesforce, sf_no_sleep, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 0}
    salesforce.query_page_size = 10
    for i in range(25):
        salesforce.put("Lead", {"Email": f"q{i}@example.org", "LastName": "Q", "Company": "Acme"})
    original = salesforce.query_more
    salesforce.query_more = lambda token, version: salesforce.unavailable()
    run = pull_changes(connection=sf_connection)
    assert "503" in run.error and run.pulled == 10
    salesforce.query_more = original
    run = pull_changes(connection=sf_connection)
    assert run.pulled == 15 and Lead.objects.count() == 25


def test_command_pushes_and_pulls(sf_connection, salesforce):
    lead_upsert(data={"email": "cmd@example.org", "last_name": "Cmd"}, source="test")
    salesforce.put("Contact", {"Email": "there@example.org", "LastName": "There"})
    out = StringIO()
    call_command("crm_sync", provider="salesforce", stdout=out)
    lines = {(x["kind"], x.get("object", "")): x for x in map(json.loads, out.getvalue().strip().splitlines())}
    push, owners, pull = lines[("push", "")], lines[("owners", "")], lines[("pull", "contact")]
    assert (push["pushed"], push["api_calls"]) == (1, 2)  # /limits (the allowance), then the push
    assert owners["pulled"] == 0 and not owners["error"]  # the emulator has no Users here
    assert pull["pulled"] == 2  # our pushed Lead comes back once, and the Contact
    assert Lead.objects.count() == 2


def test_fetch_one_and_missing(sf_connection, salesforce):
    record = salesforce.put("Contact", {"Email": "one@example.org", "LastName": "One", "MailingCountry": "NL"})
    connector = SalesforceConnector(sf_connection)
    pulled = connector.fetch_one("contact", record["Id"], ["Email"])
    assert pulled.remote_id == record["Id"] and pulled.properties["Country"] == "NL"
    assert pulled.modified_at == record["SystemModstamp"]
    assert connector.fetch_one("contact", "003000000000009999", ["Email"]) is None
    assert connector.verify_webhook(method="POST", uri="/", body=b"{}", headers={}) is False


def test_pull_session_expiry_renews_once(sf_connection, salesforce):
    salesforce.put("Lead", {"Email": "ren@example.org", "LastName": "R", "Company": "C"})
    salesforce.expire_session()
    run = pull_changes(connection=sf_connection)
    assert run.pulled == 1 and not run.error and salesforce.renewals == 1


def test_limits_reads_the_daily_allowance(sf_connection, salesforce):
    salesforce.daily_max = 15000
    connector = SalesforceConnector(sf_connection)
    assert connector.limits() == {"max": 15000, "remaining": 15000 - 1}
