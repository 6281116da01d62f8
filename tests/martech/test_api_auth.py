"""Who may call what, and the JSON error shape (400, 401, 403, 404, 405, 429)."""
from __future__ import annotations

import pytest

from tests.factories import AccountFactory, CampaignFactory, EventFactory, LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import ALL_SCOPES, error_fields

pytestmark = pytest.mark.django_db

READS = [
    "/api/v1/leads",
    "/api/v1/leads/{lead}",
    "/api/v1/accounts",
    "/api/v1/accounts/{account}",
    "/api/v1/events",
    "/api/v1/events/{event}",
    "/api/v1/lifecycle-stages",
    "/api/v1/campaigns",
    "/api/v1/campaigns/{campaign}",
]
WRITES = [
    ("post", "/api/v1/leads/upsert", {"email": "w@x.io"}),
    ("patch", "/api/v1/leads/{lead}", {"first_name": "W"}),
    ("post", "/api/v1/leads/{lead}/stage", {"lifecycle_stage": "mql", "reason": "x"}),
    ("post", "/api/v1/accounts/upsert", {"name": "W", "domain": "w.io"}),
    ("patch", "/api/v1/accounts/{account}", {"industry": "W"}),
    ("post", "/api/v1/campaigns", {"name": "W", "utm_campaign": "w"}),
    ("patch", "/api/v1/campaigns/{campaign}", {"name": "W"}),
    ("post", "/api/v1/events/", {"messageId": "w"}),
]


@pytest.fixture
def objs():
    lead = LeadFactory()
    return {
        "lead": lead.pk,
        "account": AccountFactory().pk,
        "event": EventFactory(lead=lead).pk,
        "campaign": CampaignFactory().pk,
    }


def test_analyst_reads_everything_and_writes_nothing(session_api, analyst, objs):
    api = session_api(analyst)
    for url in READS:
        assert api.get(url.format(**objs)).status_code == 200, url
    for method, url, body in WRITES:
        r = getattr(api, method)(url.format(**objs), body)
        assert r.status_code == 403, (method, url, r.content)
        assert r.json()["error"]["code"] == "permission_denied"


def test_sales_ops_reads_leads_but_cannot_write_campaigns_or_events(session_api, sales_ops, objs):
    api = session_api(sales_ops)
    assert api.get("/api/v1/leads").status_code == 200
    assert api.post("/api/v1/campaigns", {"name": "S", "utm_campaign": "s"}).status_code == 403
    assert api.patch(f"/api/v1/campaigns/{objs['campaign']}", {"name": "S"}).status_code == 403
    assert api.post("/api/v1/events/", {"messageId": "s"}).status_code == 403
    # capture's POST /api/v1/events needs the add-event permission too
    assert api.post("/api/v1/events", {"messageId": "s", "type": "track", "event": "page_view"}).status_code == 403


def test_marketing_ops_may_write(session_api, marketing_ops, objs):
    api = session_api(marketing_ops)
    assert api.post("/api/v1/leads/upsert", {"email": "m@x.io"}).status_code == 201
    assert api.post("/api/v1/campaigns", {"name": "M", "utm_campaign": "m"}).status_code == 201


def test_non_staff_user_is_refused(session_api, objs):
    from tests.factories import UserFactory

    api = session_api(UserFactory(username="customer", is_staff=False))
    assert api.get("/api/v1/leads").status_code == 403


@pytest.mark.parametrize(
    "scope, allowed, refused",
    [
        ("leads:read", ["/api/v1/leads"], ["/api/v1/accounts", "/api/v1/events", "/api/v1/campaigns", "/api/v1/lifecycle-stages"]),
        ("events:read", ["/api/v1/events", "/api/v1/events/"], ["/api/v1/leads"]),
        ("stages:read", ["/api/v1/lifecycle-stages"], ["/api/v1/leads"]),
        ("accounts:read", ["/api/v1/accounts"], ["/api/v1/campaigns"]),
        ("campaigns:read", ["/api/v1/campaigns"], ["/api/v1/accounts"]),
    ],
)
def test_client_read_scopes(token_api, scope, allowed, refused):
    api = token_api(scope)
    for url in allowed:
        assert api.get(url).status_code == 200, url
    for url in refused:
        assert api.get(url).status_code == 403, url


def test_client_write_needs_write_scope(token_api, objs):
    reader = token_api(*(s for s in ALL_SCOPES if not s.endswith(":write")))
    for method, url, body in WRITES:
        r = getattr(reader, method)(url.format(**objs), body)
        assert r.status_code == 403, (method, url)
    r = reader.post("/api/v1/leads/upsert", {"email": "a@b.io"})
    assert "leads:write" in r.json()["error"]["message"]
    writer = token_api("leads:write", "accounts:write", "campaigns:write")
    assert writer.post("/api/v1/leads/upsert", {"email": "a@b.io"}).status_code == 201
    assert writer.post("/api/v1/accounts/upsert", {"name": "A", "domain": "a.io"}).status_code == 201
    assert writer.post("/api/v1/campaigns", {"name": "A", "utm_campaign": "a"}).status_code == 201
    assert writer.get("/api/v1/leads").status_code == 403  # write does not imply read


def test_401_without_or_with_a_bad_token(client, objs):
    from rest_framework.test import APIClient

    r = APIClient().get("/api/v1/leads")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "not_authenticated"
    assert r["WWW-Authenticate"] == "Bearer"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer nope")
    r = bad.get("/api/v1/leads")
    assert r.status_code == 401 and r.json()["error"]["code"] == "authentication_failed"


def test_inactive_client_is_refused(token_api):
    api = token_api("leads:read")
    api.api_client.is_active = False
    api.api_client.save()
    assert api.get("/api/v1/leads").status_code == 401


def test_400_404_405_shapes(token_api, objs):
    api = token_api(*ALL_SCOPES)
    r = api.post("/api/v1/leads/upsert", {"email": "x@y.io", "first_name": 5 * "x" * 30})
    assert r.status_code == 400 and error_fields(r) == {"first_name"}
    assert r.json()["error"]["code"] == "invalid"
    assert r.json()["error"]["message"].startswith("first_name:")
    r = api.get("/api/v1/leads/987654321")
    assert r.status_code == 404 and error_fields(r) == set() and r.json()["error"]["code"] == "not_found"
    assert api.get("/api/v1/leads?cursor=garbage").status_code == 404
    r = api.delete(f"/api/v1/leads/{objs['lead']}")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert api.put(f"/api/v1/campaigns/{objs['campaign']}", {"name": "x"}).status_code == 405


def test_429_per_client(token_api, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "user": "3/min"},
    }
    busy, other = token_api("leads:read"), token_api("leads:read")
    codes = [busy.get("/api/v1/leads").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = busy.get("/api/v1/leads")
    body = r.json()["error"]
    assert body["code"] == "throttled" and body["retry_after"] > 0
    assert "Retry-After" in r
    # Another client on the same address has its own budget.
    assert other.get("/api/v1/leads").status_code == 200
