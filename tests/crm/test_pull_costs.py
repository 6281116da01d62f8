"""What a pull costs: an idle connection's scheduled pull, owners (all
pages, archived ones), webhooks read in batch. Over HTTP through the real
clients, counted at the emulators."""
from __future__ import annotations

import json
import time

import pytest

from martech.crm.connectors.hubspot import sign_v3
from martech.crm.models import CrmOwner, SyncCursor
from martech.crm.services import owners_pull, slow_ask_due, webhook_process
from martech.crm.types import SALESFORCE_ACCOUNT_MAPPINGS, SALESFORCE_CAMPAIGN_MAPPINGS, SALESFORCE_TASK_MAPPINGS
from martech.models import Lead

from .conftest import _map

pytestmark = pytest.mark.django_db


def _api_requests(salesforce) -> int:
    return salesforce.api_used


@pytest.fixture
def sf_all(sf_connection):
    """Every object type Salesforce syncs here mapped for pull, with its links."""
    from attribution.crm_sync import SALESFORCE_MAPPINGS

    _map(sf_connection, "company", SALESFORCE_ACCOUNT_MAPPINGS)
    _map(sf_connection, "deal", SALESFORCE_MAPPINGS)
    _map(sf_connection, "campaign", SALESFORCE_CAMPAIGN_MAPPINGS)
    _map(sf_connection, "task", SALESFORCE_TASK_MAPPINGS)
    return sf_connection


def test_idle_salesforce_pull_costs_one_call(sf_all, salesforce):
    from martech.crm.tasks import pull_all

    salesforce.add_user(user_id="005000000000001AAA", email="rep@example.org")
    salesforce.put("Lead", {"Email": "one@example.org", "LastName": "One", "Company": "C"})
    pull_all()  # the first run: owners, every object and link, Get Deleted
    assert Lead.objects.filter(email="one@example.org").exists()
    before = _api_requests(salesforce)
    out = pull_all()
    # Idle: one Composite call carries the first page of all 8 queries (Lead, Contact,
    # Account, Opportunity, Campaign, Task, CampaignMember, OpportunityContactRole);
    # owners and Get Deleted wait for MARTECH_CRM_SLOW_PULL_MINUTES.
    assert _api_requests(salesforce) - before == 1
    assert out["salesforce:owners"] == -2 and not any(k.startswith("salesforce:del:") for k in out)
    assert all(v == 0 for k, v in out.items() if k != "salesforce:owners")
    # A change comes through the same single call.
    salesforce.put("Lead", {"Email": "two@example.org", "LastName": "Two", "Company": "C"})
    before = _api_requests(salesforce)
    assert pull_all()["salesforce:contact"] == 1
    assert _api_requests(salesforce) - before == 1


def test_idle_hubspot_pull_costs_one_call_per_object_type(deal_mappings, task_mappings, hubspot):
    from martech.crm.tasks import pull_all

    hubspot.add_owner(owner_id="7", email="rep@example.org")
    hubspot.put_contact({"email": "one@example.org"})
    pull_all()
    before = len(hubspot.requests)
    pull_all()
    paths = [p for _, p, _ in hubspot.requests[before:]]
    # contact, company, deal, task: one search each; owners wait for the slow interval.
    assert sorted(paths) == sorted(f"/crm/v3/objects/{t}/search" for t in ("contacts", "companies", "deals",
                                                                            "tasks"))


def test_slow_asks_come_back_after_the_interval(sf_connection, settings):
    import datetime as dt

    from django.utils import timezone

    now = timezone.now()
    assert slow_ask_due(connection=sf_connection, key="owners", now=now)
    assert not slow_ask_due(connection=sf_connection, key="owners", now=now + dt.timedelta(minutes=59))
    assert slow_ask_due(connection=sf_connection, key="owners", now=now + dt.timedelta(minutes=61))
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SLOW_PULL_MINUTES": 0}
    assert slow_ask_due(connection=sf_connection, key="owners", now=now + dt.timedelta(minutes=61))
    assert SyncCursor.objects.get(connection=sf_connection, object="owners").resume["asked_at"]


def test_hubspot_owners_all_pages_and_archived_ones_inactive(connection, hubspot):
    from routing.models import Rep

    rep = Rep.objects.create(name="O Seven", email="o7@example.org")
    for i in range(1, 1_203):
        hubspot.add_owner(owner_id=str(i), email=f"o{i}@example.org")
    hubspot.add_owner(owner_id="5000", email="gone@example.org", archived=True)
    assert owners_pull(connection=connection) == 1_203
    calls = [(m, p) for m, p, _ in hubspot.requests if p.startswith("/crm/v3/owners")]
    assert len(calls) == 4  # 500 + 500 + 202 active, then one page of archived
    assert CrmOwner.objects.filter(connection=connection, is_active=True).count() == 1_202
    assert not CrmOwner.objects.get(remote_id="5000").is_active
    rep.refresh_from_db()
    assert rep.hubspot_owner_id == "7"  # routing linked the rep by email
    # The user is deactivated in HubSpot: the next pull finds it among the archived owners.
    hubspot.archive_owner("7")
    owners_pull(connection=connection)
    assert not CrmOwner.objects.get(remote_id="7").is_active
    rep.refresh_from_db()
    assert rep.hubspot_owner_id == ""  # routing sees it: the rep no longer points at an inactive owner


def test_owners_page_limit_is_refused_above_500(hubspot):
    import requests

    from martech.crm.emulators.base import Served

    served = Served(hubspot).start()
    try:
        answer = requests.get(f"{served.url}/crm/v3/owners/?limit=501", timeout=5)
    finally:
        served.stop()
    assert answer.status_code == 400 and answer.json()["category"] == "VALIDATION_ERROR"


URL = "http://testserver/api/v1/webhooks/hubspot"


def test_webhook_batch_is_read_with_one_batch_call_per_object_type(client, deal_mappings, hubspot,
                                                                   django_capture_on_commit_callbacks, monkeypatch):
    enqueued = []
    monkeypatch.setattr("martech.crm.api.views._enqueue", enqueued.append)
    contacts = [hubspot.put_contact({"email": f"w{i}@example.org", "firstname": "W"}) for i in range(30)]
    company = hubspot.put("companies", {"domain": "web.example.org", "name": "Web"})
    events = [{"eventId": 900 + i, "subscriptionType": "contact.propertyChange", "objectId": int(c["id"]),
               "occurredAt": 1} for i, c in enumerate(contacts)]
    # The same contact twice, and a company.
    events += [{"eventId": 990, "subscriptionType": "contact.creation", "objectId": int(contacts[0]["id"]),
                "occurredAt": 1},
               {"eventId": 991, "subscriptionType": "company.propertyChange", "objectId": int(company["id"]),
                "occurredAt": 1}]
    body = json.dumps(events).encode()
    ts = str(int(time.time() * 1000))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/webhooks/hubspot", data=body, content_type="application/json",
                               HTTP_X_HUBSPOT_SIGNATURE_V3=sign_v3(secret="emulator-secret", method="POST",
                                                                   uri=URL, body=body, timestamp=ts),
                               HTTP_X_HUBSPOT_REQUEST_TIMESTAMP=ts)
    assert response.status_code == 202
    start = len(hubspot.requests)
    assert webhook_process(receipt_ids=enqueued[0]) == 32
    calls = [(m, p) for m, p, _ in hubspot.requests[start:]]
    assert calls == [("POST", "/crm/v3/objects/contacts/batch/read"),
                     ("POST", "/crm/v3/objects/companies/batch/read")]
    assert Lead.objects.filter(email__startswith="w").count() == 30
