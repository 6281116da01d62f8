"""The daily API allowance comes from Salesforce's /limits
(DailyApiRequests Max/Remaining) at the start of each scheduled or
command push run, and drives the slow-down and the stop."""
from __future__ import annotations

import pytest
from django.core.management import call_command
from django.utils import timezone

from martech.crm import tasks
from martech.crm.connectors.base import PermanentError
from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import OutboxItem
from martech.crm.services import outbox_drain
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db
UPSERT_LEAD = ("PATCH", "/services/data/v59.0/composite/sobjects/Lead/Martech_Id__c")
LIMITS = ("GET", "/services/data/v59.0/limits/")  # simple-salesforce asks with the slash


def _lead(email="ann@example.org"):
    lead, _ = lead_upsert(data={"email": email, "first_name": "Ann", "last_name": "Lee"}, source="test")
    return lead


def test_scheduled_drain_reads_the_allowance_and_counts_on_top(sf_connection, salesforce):
    # Stale stored figures that would stop the push: Salesforce's own count replaces them.
    sf_connection.daily_api_limit, sf_connection.api_calls_used = 5, 5
    sf_connection.api_calls_day = timezone.now().date()
    sf_connection.save()
    salesforce.daily_max, salesforce.api_used = 20_000, 1_000
    _lead()
    assert tasks.drain_outbox() == {"salesforce": 1}
    assert salesforce.calls[LIMITS] == 1
    sf_connection.refresh_from_db()
    assert sf_connection.daily_api_limit == 20_000
    assert sf_connection.api_calls_used == salesforce.api_used == 1_002  # /limits and the push
    # Another integration spends the same org's allowance: seen on the next run.
    salesforce.api_used += 500
    tasks.drain_outbox()
    sf_connection.refresh_from_db()
    assert sf_connection.api_calls_used == salesforce.api_used == 1_503
    assert salesforce.calls[LIMITS] == 2


def test_at_salesforces_limit_nothing_is_sent(sf_connection, salesforce):
    _lead()
    salesforce.daily_max, salesforce.api_used = 10, 9  # the /limits read is the 10th call
    run = outbox_drain(connection=sf_connection, refresh_allowance=True)
    assert run.pushed == 0 and "allowance" in run.error
    assert salesforce.write_calls() == 0
    sf_connection.refresh_from_db()
    assert (sf_connection.daily_api_limit, sf_connection.api_calls_used) == (10, 10)


def test_near_salesforces_limit_one_small_batch(sf_connection, salesforce):
    for i in range(250):
        _lead(email=f"s{i}@example.org")
    salesforce.daily_max, salesforce.api_used = 100, 94  # 95 used after /limits: past SLOWDOWN_AT (90 %)
    run = outbox_drain(connection=sf_connection, refresh_allowance=True)
    assert run.pushed == 100 and salesforce.calls[UPSERT_LEAD] == 1 and run.api_calls == 2
    assert OutboxItem.objects.filter(status="pending").count() == 150


def test_crm_sync_command_reads_the_allowance(sf_connection, salesforce):
    salesforce.daily_max = 54_321
    _lead()
    call_command("crm_sync", "--provider", "salesforce", "--no-pull")
    assert salesforce.calls[LIMITS] == 1
    sf_connection.refresh_from_db()
    assert sf_connection.daily_api_limit == 54_321


def test_unreadable_limits_keep_the_stored_allowance(sf_connection, salesforce, monkeypatch):
    def refuse(self):
        raise PermanentError("Salesforce 403: INSUFFICIENT_ACCESS (View Setup and Configuration needed)")

    monkeypatch.setattr(SalesforceConnector, "limits", refuse)
    sf_connection.daily_api_limit = 777
    sf_connection.save()
    _lead()
    run = outbox_drain(connection=sf_connection, refresh_allowance=True)
    assert run.pushed == 1  # the drain went on with the stored figures
    sf_connection.refresh_from_db()
    # The push's own answer carried Sforce-Limit-Info: the org's figures replace the stored ones.
    assert (sf_connection.daily_api_limit, sf_connection.api_calls_used) == (salesforce.daily_max,
                                                                            salesforce.api_used)
    assert sf_connection.last_error.startswith("reading the API allowance: Salesforce 403")


def test_hubspot_has_no_limits_read(connection, hubspot):
    connection.daily_api_limit = 4321
    connection.save()
    lead_upsert(data={"email": "h@example.org"}, source="test")
    assert outbox_drain(connection=connection, refresh_allowance=True).pushed == 1
    connection.refresh_from_db()
    assert connection.daily_api_limit == 4321
