"""Companies <-> accounts against the HubSpot emulator, over HTTP."""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from martech.crm.models import Connection, OutboxItem, PushState, SyncCursor
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Account
from martech.services.accounts import account_upsert

pytestmark = pytest.mark.django_db
UPSERT = ("POST", "/crm/v3/objects/companies/batch/upsert")
SEARCH = ("POST", "/crm/v3/objects/companies/search")
CREATE = ("POST", "/crm/v3/objects/companies/batch/create")
UPDATE = ("POST", "/crm/v3/objects/companies/batch/update")


def _account(domain="acme.com", **data):
    account, _ = account_upsert(data={"name": "Acme", "domain": domain, **data}, source="test")
    return account


def test_push_company_by_domain_and_skip_unchanged(company_mappings, hubspot):
    account = _account(industry="Retail", employee_count=250, annual_revenue=Decimal("1250000.50"), country="DE")
    run = outbox_drain(connection=company_mappings)
    # HubSpot refuses domain as an upsert key (not a unique-value property): searched, not found, created.
    assert (run.pushed, run.failed, run.api_calls) == (1, 0, 2)
    assert (hubspot.calls[SEARCH], hubspot.calls[CREATE], hubspot.calls[UPSERT]) == (1, 1, 0)
    company = hubspot.find("companies", "acme.com")
    expected = {"name": "Acme", "domain": "acme.com", "industry": "Retail", "numberofemployees": "250",
                "annualrevenue": "1250000.5", "country": "DE"}
    assert {k: company["properties"].get(k) for k in expected} == expected
    method, path, body = hubspot.requests[-1]
    assert path == CREATE[1] and "idProperty" not in body["inputs"][0]
    assert body["inputs"][0]["properties"]["domain"] == "acme.com"
    account.refresh_from_db()
    assert account.hubspot_id == company["id"]
    assert PushState.objects.get(object="company").remote_id == company["id"]
    # Queued again with nothing changed: no call.
    OutboxItem.objects.create(connection=company_mappings, object="company", local_id=account.pk)
    run = outbox_drain(connection=company_mappings)
    assert (run.pushed, run.skipped, run.api_calls) == (0, 1, 0)
    account_upsert(data={"name": "Acme GmbH"}, account=account, source="test")
    run = outbox_drain(connection=company_mappings)
    # Known now: updated by its HubSpot id, no search.
    assert (run.pushed, run.api_calls, hubspot.calls[UPDATE], hubspot.calls[SEARCH]) == (1, 1, 1, 1)
    assert hubspot.find("companies", "acme.com")["properties"]["name"] == "Acme GmbH"
    assert len(hubspot.companies) == 1
    assert hubspot.checked == 3  # search, create and update validated against the companies document


def test_batches_of_100_and_one_bad_company(company_mappings, hubspot, settings):
    # A refused or deferred record is due again after BACKOFF_BASE * 60 s: keep it out of this drain on a slow machine.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "BACKOFF_BASE": 1.0}
    accounts = [_account(domain=f"c{i}.example.com") for i in range(150)]
    bad = accounts[7]
    # HubSpot refuses it (not a host name); our normalizer would not let it in, so it is forced here.
    Account.objects.filter(pk=bad.pk).update(domain="not a domain")
    run = outbox_drain(connection=company_mappings)
    assert (hubspot.calls[SEARCH], hubspot.calls[CREATE], hubspot.calls[UPSERT]) == (2, 2, 0)  # one each per 100
    assert (run.pushed, run.failed) == (149, 1)
    item = OutboxItem.objects.get(object="company", local_id=bad.pk)
    assert item.status == "pending" and item.attempts == 1 and "INVALID_DOMAIN" in item.last_error
    assert len(hubspot.companies) == 149
    assert OutboxItem.objects.filter(object="company", status="done").count() == 149


def test_account_without_domain_is_a_dead_letter_naming_the_key(company_mappings, hubspot):
    account, _ = account_upsert(data={"name": "No Domain Ltd"}, source="test")
    run = outbox_drain(connection=company_mappings)
    item = OutboxItem.objects.get(local_id=account.pk)
    assert run.failed == 1 and item.status == "dead"
    assert item.last_error == f"Company / Account #{account.pk} has no domain (the upsert key)"
    assert hubspot.calls[UPSERT] == hubspot.calls[CREATE] == 0


def test_retried_company_batch_makes_no_duplicate(company_mappings, hubspot):
    accounts = [_account(domain=f"r{i}.example.com") for i in range(3)]
    outbox_drain(connection=company_mappings)
    # The answer was lost: nothing recorded here, the same batch goes again.
    PushState.objects.all().delete()
    Account.objects.update(hubspot_id=None)
    for account in accounts:
        OutboxItem.objects.create(connection=company_mappings, object="company", local_id=account.pk)
    run = outbox_drain(connection=company_mappings)
    # The search finds the three by domain: updated, none created again.
    assert run.pushed == 3 and (hubspot.calls[CREATE], hubspot.calls[SEARCH], hubspot.calls[UPDATE]) == (1, 2, 1)
    assert len(hubspot.companies) == 3
    assert {a.hubspot_id for a in Account.objects.all()} == set(hubspot.companies)


def test_pull_companies_with_cursor(company_mappings, hubspot):
    hubspot.put("companies", {"domain": "pulled.io", "name": "Pulled", "industry": "Software",
                              "numberofemployees": "42"})
    run = pull_changes(connection=company_mappings, obj="company")
    assert (run.pulled, run.failed, run.api_calls) == (1, 0, 1)
    account = Account.objects.get(domain="pulled.io")
    assert (account.name, account.industry, account.employee_count) == ("Pulled", "Software", 42)
    assert account.hubspot_id == hubspot.find("companies", "pulled.io")["id"]
    assert not OutboxItem.objects.exists()  # not echoed back
    cursor = SyncCursor.objects.get(connection=company_mappings, object="company")
    assert pull_changes(connection=company_mappings, obj="company").pulled == 0
    method, path, body = hubspot.requests[-1]
    assert path == "/crm/v3/objects/companies/search"
    assert body["filterGroups"][0]["filters"][0] == {"propertyName": "hs_lastmodifieddate", "operator": "GTE",
                                                     "value": cursor.value}
    hubspot.put("companies", {"domain": "pulled.io", "name": "Pulled Inc"})
    assert pull_changes(connection=company_mappings, obj="company").pulled == 1
    assert Account.objects.get(domain="pulled.io").name == "Pulled Inc"
    assert Account.objects.count() == 1
    # The contact cursor is separate and untouched.
    assert not SyncCursor.objects.filter(object="contact").exists()


def test_bad_pulled_company_value_names_the_field(company_mappings, hubspot):
    hubspot.put("companies", {"domain": "bad.io", "name": "Bad", "numberofemployees": "lots"})
    hubspot.put("companies", {"domain": "good.io", "name": "Good", "numberofemployees": "3"})
    run = pull_changes(connection=company_mappings, obj="company")
    assert (run.pulled, run.failed) == (1, 1)
    assert "employee_count" in run.error and "not a number" in run.error
    assert Account.objects.filter(domain="good.io").exists() and not Account.objects.filter(domain="bad.io").exists()


def _both_sides_changed(connection, hubspot, *, remote_later: bool):
    account = _account(domain="both.io", name="Local0", industry="Local0")
    outbox_drain(connection=connection)
    pull_changes(connection=connection, obj="company")  # cursor past our own push
    account_upsert(data={"name": "LocalNew", "industry": "LocalNew"}, account=account, source="test")
    account.refresh_from_db()
    at = account.updated_at + (dt.timedelta(seconds=5) if remote_later else -dt.timedelta(seconds=5))
    hubspot.put("companies", {"domain": "both.io", "name": "RemoteNew", "industry": "RemoteNew"}, at=at)
    run = pull_changes(connection=connection, obj="company", full=True)
    account.refresh_from_db()
    return run, account


def test_account_conflict_system_of_record_wins_per_field(company_mappings, hubspot):
    run, account = _both_sides_changed(company_mappings, hubspot, remote_later=False)
    # name: system of record is here; industry's is the CRM.
    assert (account.name, account.industry) == ("LocalNew", "RemoteNew")
    assert run.pulled == 1


@pytest.mark.parametrize("remote_later", [True, False])
def test_account_conflict_most_recent_wins(company_mappings, hubspot, remote_later):
    company_mappings.conflict_rule = Connection.ConflictRule.MOST_RECENT
    company_mappings.save()
    run, account = _both_sides_changed(company_mappings, hubspot, remote_later=remote_later)
    expected = "RemoteNew" if remote_later else "LocalNew"
    assert (account.name, account.industry) == (expected, expected)
    assert (run.pulled, run.skipped) == ((1, 0) if remote_later else (0, 1))


def test_remote_only_company_change_is_taken_and_not_sent_back(company_mappings, hubspot):
    account = _account(domain="solo.io", name="Old")
    outbox_drain(connection=company_mappings)
    pull_changes(connection=company_mappings, obj="company")
    hubspot.put("companies", {"domain": "solo.io", "name": "New"})
    run = pull_changes(connection=company_mappings, obj="company")
    assert (run.pulled, run.skipped) == (1, 0)
    account.refresh_from_db()
    assert account.name == "New"
    OutboxItem.objects.create(connection=company_mappings, object="company", local_id=account.pk)
    assert outbox_drain(connection=company_mappings).api_calls == 0


def test_crm_sync_command_for_companies(company_mappings, hubspot, capsys):
    _account(domain="cmd.io", name="Cmd")
    hubspot.put("companies", {"domain": "remote.io", "name": "Remote"})
    call_command("crm_sync", "--provider", "hubspot", "--object", "companies")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["kind"], line["object"]) for line in lines] == [("push", ""), ("pull", "company")]
    assert lines[0]["pushed"] == 1 and lines[1]["pulled"] >= 1
    assert hubspot.find("companies", "cmd.io") is not None
    assert Account.objects.filter(domain="remote.io").exists()


def test_crm_sync_command_refuses_an_object_the_connector_does_not_sync(company_mappings, hubspot):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as exc:
        call_command("crm_sync", "--object", "campaigns")
    error = json.loads(str(exc.value))["error"]
    assert error["code"] == "object_not_supported" and "campaigns" in error["message"]


def _bench():
    """bench/crm_sync.py as a module (its minimum for a first push of companies)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "crm_sync.py"
    spec = importlib.util.spec_from_file_location("bench_crm_sync", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_first_push_of_companies_makes_the_benchs_minimum_and_no_more(company_mappings, hubspot, settings):
    # Claims of 250: 250, 250 and 30 records, so 3 + 3 + 1 calls of at most 100, each a search and a create.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "DRAIN_BATCH": 250}
    for i in range(530):
        _account(domain=f"m{i}.example.com")
    minimum = _bench().companies_minimum(530, drain_batch=250)
    assert minimum == {"search": 7, "create": 7, "total": 14}
    run = outbox_drain(connection=company_mappings)
    assert (run.pushed, run.failed, run.error) == (530, 0, "")
    assert (hubspot.calls[SEARCH], hubspot.calls[CREATE], run.api_calls) == (7, 7, 14)
    assert sum(hubspot.calls.values()) == minimum["total"]
    # The 7 searches under HubSpot's 5 a second (the emulator enforces it): none refused.
    assert not hubspot.refused_429
