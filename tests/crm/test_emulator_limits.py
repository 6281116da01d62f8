"""The emulators answer limits the way the providers document them, and
``manage.py crm_emulator`` turns the fault modes on. Raw HTTP here: the
point is the wire shape (status, body, headers), not our connector."""
from __future__ import annotations

import pytest
import requests
from django.core.management import CommandError, call_command

from martech.crm.emulators.base import Served
from martech.crm.emulators.hubspot import HubSpotEmulator

HEADERS = ("X-HubSpot-RateLimit-Max", "X-HubSpot-RateLimit-Remaining", "X-HubSpot-RateLimit-Interval-Milliseconds",
           "X-HubSpot-RateLimit-Secondly", "X-HubSpot-RateLimit-Secondly-Remaining", "X-HubSpot-RateLimit-Daily",
           "X-HubSpot-RateLimit-Daily-Remaining")


@pytest.fixture
def raw_hubspot():
    app = HubSpotEmulator()
    served = Served(app).start()
    yield app, served.url
    served.stop()


def _owners(url):
    return requests.get(f"{url}/crm/v3/owners/", timeout=5)


def test_every_hubspot_answer_carries_the_rate_limit_headers(raw_hubspot):
    app, url = raw_hubspot
    first, second = _owners(url), _owners(url)
    assert first.status_code == second.status_code == 200
    assert all(h in first.headers for h in HEADERS)
    assert first.headers["X-HubSpot-RateLimit-Max"] == "190"
    assert first.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert (int(first.headers["X-HubSpot-RateLimit-Remaining"]), int(second.headers["X-HubSpot-RateLimit-Remaining"])
            ) == (189, 188)
    assert int(second.headers["X-HubSpot-RateLimit-Daily-Remaining"]) == int(
        second.headers["X-HubSpot-RateLimit-Daily"]) - 2
    assert "Retry-After" not in first.headers
    missing = requests.get(f"{url}/crm/v3/objects/contacts/999", timeout=5)  # an error answer has them too
    assert missing.status_code == 404 and "X-HubSpot-RateLimit-Remaining" in missing.headers


def test_hubspot_429_has_hubspots_body_and_no_retry_after(raw_hubspot):
    app, url = raw_hubspot
    app.burst_429 = 1
    refused = _owners(url)
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    body = refused.json()
    assert {k: body[k] for k in ("status", "message", "errorType", "policyName")} == {
        "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}
    assert body["correlationId"]
    assert all(h in refused.headers for h in HEADERS)


def test_hubspot_enforced_window_and_daily_limit(raw_hubspot):
    app, url = raw_hubspot
    app.rate_limit = "3/10s"
    statuses = [_owners(url).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = _owners(url)
    assert refused.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert refused.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert refused.headers["X-HubSpot-RateLimit-Max"] == "3"
    # The refused requests were not counted: the window frees as soon as the accepted ones age out.
    app.clock = lambda real=app.clock: real() + 11
    assert _owners(url).status_code == 200

    app.rate_limit, app.daily_limit = None, 5
    assert [_owners(url).status_code for _ in range(2)] == [200, 429]  # 4 accepted before, the 5th now
    daily = _owners(url)
    assert daily.json()["policyName"] == "DAILY" and daily.json()["message"] == "You have reached your daily limit."
    assert (daily.headers["X-HubSpot-RateLimit-Daily"], daily.headers["X-HubSpot-RateLimit-Daily-Remaining"]) == (
        "5", "0")
    assert app.refused_429 == {"TEN_SECONDLY_ROLLING": 2, "DAILY": 2}


def test_salesforce_limit_info_limits_and_request_limit_exceeded(salesforce, settings):
    base = f"{settings.MARTECH_CRM['SALESFORCE_URL']}/services/data/v59.0"
    session = requests.Session()
    session.verify = settings.MARTECH_CRM["SALESFORCE_CA_CERT"]
    session.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify
    session.headers["Authorization"] = "Bearer emulator-session"
    salesforce.daily_max, salesforce.api_used = 3, 0
    query = session.get(f"{base}/query", params={"q": "SELECT Id FROM Lead"}, timeout=5)
    assert query.status_code == 200 and query.headers["Sforce-Limit-Info"] == "api-usage=1/3"
    bad = session.get(f"{base}/query", params={"q": "SELECT Nope FROM Lead"}, timeout=5)
    assert bad.status_code == 400 and bad.headers["Sforce-Limit-Info"] == "api-usage=2/3"  # errors carry it too
    limits = session.get(f"{base}/limits", timeout=5)
    assert limits.json()["DailyApiRequests"] == {"Max": 3, "Remaining": 0}
    assert limits.headers["Sforce-Limit-Info"] == "api-usage=3/3"  # the same figure as the body
    refused = session.get(f"{base}/limits", timeout=5)
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=3/3"  # a refused call is not counted
    assert salesforce.limit_refused == 1


@pytest.fixture
def started(monkeypatch):
    """Run crm_emulator until it would serve forever; keep the app it built."""
    from martech.crm.management.commands import crm_emulator

    apps = []
    real = crm_emulator.Served

    class Capture(real):
        def __init__(self, app, **kwargs):
            apps.append(app)
            super().__init__(app, **kwargs)

    def stop(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(crm_emulator, "Served", Capture)
    monkeypatch.setattr(crm_emulator.time, "sleep", stop)
    return apps


def test_crm_emulator_flags(started, settings, tmp_path):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SALESFORCE_EMULATOR_CERT_DIR": str(tmp_path)}
    call_command("crm_emulator", "--port", "0", "--burst-429", "2", "--daily-limit", "50", "--rate-limit", "190/10s",
                 "--latency", "0", "--error-rate", "0.1")
    hubspot = started[-1]
    assert (hubspot.burst_429, hubspot.daily_limit, hubspot.rate_limit, hubspot.error_rate) == (2, 50, "190/10s", 0.1)
    call_command("crm_emulator", "--provider", "salesforce", "--port", "0", "--daily-limit", "7", "--burst-429", "1")
    salesforce = started[-1]
    assert (salesforce.daily_max, salesforce.burst_429) == (7, 1)
    with pytest.raises(CommandError, match="--rate-limit"):
        call_command("crm_emulator", "--port", "0", "--rate-limit", "lots")
    with pytest.raises(CommandError, match="Salesforce has no per-second window"):
        call_command("crm_emulator", "--provider", "salesforce", "--port", "0", "--rate-limit", "190/10s")


def test_hubspot_page_sizes_are_the_documented_maxima(raw_hubspot):
    """The objects' list pages stop at 100, searches at 200, a list's
    memberships at 250: each limit is the endpoint's own, not the largest."""
    app, url = raw_hubspot
    objects = requests.get(f"{url}/crm/v3/objects/contacts", params={"limit": 101}, timeout=5)
    assert objects.status_code == 400 and "100" in objects.json()["message"]
    assert requests.get(f"{url}/crm/v3/objects/contacts", params={"limit": 100}, timeout=5).status_code == 200
    search = requests.post(f"{url}/crm/v3/objects/contacts/search", json={"limit": 201}, timeout=5)
    assert search.status_code == 400
    created = requests.post(f"{url}/crm/v3/lists/", json={"name": "Page sizes", "objectTypeId": "0-1",
                                                           "processingType": "MANUAL"}, timeout=5)
    list_id = created.json()["list"]["listId"]
    members = f"{url}/crm/v3/lists/{list_id}/memberships"
    assert requests.get(members, params={"limit": 250}, timeout=5).status_code == 200
    refused = requests.get(members, params={"limit": 251}, timeout=5)
    assert refused.status_code == 400 and "250" in refused.json()["message"]
