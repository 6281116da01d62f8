import json
import time

import pytest

from martech.crm.connectors.hubspot import sign_v3
from martech.crm.models import WebhookReceipt
from martech.crm.services import webhook_process
from martech.models import Lead

pytestmark = pytest.mark.django_db
URL = "http://testserver/api/v1/webhooks/hubspot"


def _post(client, events, *, secret="emulator-secret", ts=None, signature=None):
    body = json.dumps(events).encode()
    ts = str(int((ts if ts is not None else time.time()) * 1000))
    sig = signature if signature is not None else sign_v3(secret=secret, method="POST", uri=URL, body=body,
                                                           timestamp=ts)
    return client.post("/api/v1/webhooks/hubspot", data=body, content_type="application/json",
                       HTTP_X_HUBSPOT_SIGNATURE_V3=sig, HTTP_X_HUBSPOT_REQUEST_TIMESTAMP=ts)


def test_signed_notification_accepted_once_and_processed(client, connection, hubspot, settings,
                                                         django_capture_on_commit_callbacks, monkeypatch):
    enqueued = []
    monkeypatch.setattr("martech.crm.api.views._enqueue", enqueued.append)
    contact = hubspot.put_contact({"email": "hook@example.org", "firstname": "Hook"})
    event = {"eventId": 101, "subscriptionType": "contact.propertyChange", "objectId": int(contact["id"]),
             "occurredAt": 1}
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, [event])
    assert response.status_code == 202 and response.json() == {"accepted": 1, "duplicates": 0}
    assert len(enqueued) == 1
    with django_capture_on_commit_callbacks(execute=True):
        again = _post(client, [event])
    assert again.json() == {"accepted": 0, "duplicates": 1}
    assert WebhookReceipt.objects.count() == 1 and len(enqueued) == 1
    assert webhook_process(receipt_ids=enqueued[0]) == 1
    assert Lead.objects.get(email="hook@example.org").first_name == "Hook"
    assert WebhookReceipt.objects.get().processed_at is not None


@pytest.mark.parametrize("case", ["missing", "bad", "stale", "wrong_secret"])
def test_bad_signatures_are_401(client, connection, case):
    events = [{"eventId": 1, "subscriptionType": "contact.creation", "objectId": 1, "occurredAt": 1}]
    kwargs = {"missing": {"signature": ""}, "bad": {"signature": "AAAA"}, "stale": {"ts": time.time() - 301},
              "wrong_secret": {"secret": "other"}}[case]
    response = _post(client, events, **kwargs)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "bad_signature"
    assert not WebhookReceipt.objects.exists()


def test_signed_but_not_a_list_is_400(client, connection):
    response = _post(client, {"eventId": 1})
    assert response.status_code == 400 and response.json()["error"]["fields"] == {"body": ["Not a list."]}


def test_company_and_deal_events_deduplicated_and_processed(client, deal_mappings, hubspot,
                                                            django_capture_on_commit_callbacks, monkeypatch):
    from attribution.models import Opportunity
    from martech.models import Account

    enqueued = []
    monkeypatch.setattr("martech.crm.api.views._enqueue", enqueued.append)
    company = hubspot.put("companies", {"domain": "evt.io", "name": "Evt"})
    deal = hubspot.put("deals", {"dealname": "Evt deal", "dealstage": "contractsent", "amount": "5"})
    hubspot.associate("deals", deal["id"], "companies", company["id"])
    events = [{"eventId": 201, "subscriptionType": "company.creation", "objectId": int(company["id"]),
               "occurredAt": 1},
              {"eventId": 202, "subscriptionType": "deal.propertyChange", "objectId": int(deal["id"]),
               "occurredAt": 2},
              {"eventId": 201, "subscriptionType": "company.creation", "objectId": int(company["id"]),
               "occurredAt": 1}]
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, events)
    assert response.status_code == 202 and response.json() == {"accepted": 2, "duplicates": 1}
    assert webhook_process(receipt_ids=enqueued[0]) == 2
    assert list(WebhookReceipt.objects.values_list("error", flat=True)) == ["", ""]
    account = Account.objects.get(domain="evt.io")
    opportunity = Opportunity.objects.get(hubspot_id=deal["id"])
    assert (opportunity.stage.key, opportunity.account) == ("negotiation", account)
