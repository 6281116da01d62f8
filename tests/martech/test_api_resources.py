"""Accounts, campaigns, events and lifecycle stages over the REST API."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from martech.models import Account, Campaign, UtmAlias
from tests.factories import AccountFactory, CampaignFactory, EventFactory, LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import ALL_SCOPES, error_fields

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(token_api):
    return token_api(*ALL_SCOPES)


# --- Accounts ----------------------------------------------------------------


def test_account_upsert_dedupes_by_normalized_domain(api):
    r1 = api.post("/api/v1/accounts/upsert", {"name": "Acme", "domain": "https://www.Acme.com/about"})
    assert r1.status_code == 201, r1.content
    assert r1.json()["domain"] == "acme.com"
    r2 = api.post("/api/v1/accounts/upsert", {"domain": "acme.com", "industry": "Software", "country": "de"})
    assert r2.status_code == 200
    assert r2.json()["id"] == r1.json()["id"]
    account = Account.objects.get()
    assert (account.name, account.industry, account.country) == ("Acme", "Software", "DE")


def test_account_errors_name_fields(api):
    r = api.post("/api/v1/accounts/upsert", {"domain": "new.io"})
    assert r.status_code == 400 and error_fields(r) == {"name"}
    r = api.post("/api/v1/accounts/upsert", {"name": "X", "employee_count": -1, "region": "EU"})
    assert r.status_code == 400 and error_fields(r) == {"employee_count", "region"}
    other = AccountFactory(domain="taken.io")
    mine = AccountFactory(domain="mine.io")
    r = api.patch(f"/api/v1/accounts/{mine.pk}", {"domain": "www.TAKEN.io"})
    assert r.status_code == 400 and error_fields(r) == {"domain"}
    r = api.patch(f"/api/v1/accounts/{mine.pk}", {"name": "Mine Inc", "domain": "http://mine2.io"})
    assert r.status_code == 200 and r.json()["domain"] == "mine2.io"
    assert Account.objects.get(pk=other.pk).domain == "taken.io"


def test_account_list_filters(api):
    a = AccountFactory(domain="acme.com", industry="Software", country="US")
    AccountFactory(domain="globex.com", industry="Retail", country="DE")
    assert [x["id"] for x in api.get("/api/v1/accounts?domain=ACME.com").json()["results"]] == [a.pk]
    assert [x["id"] for x in api.get("/api/v1/accounts?industry=software&country=us").json()["results"]] == [a.pk]
    assert api.get(f"/api/v1/accounts/{a.pk}").json()["name"] == a.name


# --- Campaigns ---------------------------------------------------------------


def test_campaign_create_normalizes_utm_keys(api):
    UtmAlias.objects.create(field="source", alias="gads-test", canonical="google")
    r = api.post(
        "/api/v1/campaigns",
        {"name": "Spring", "utm_source": " GAds-Test ", "utm_medium": "CPC", "utm_campaign": "Spring-25", "channel": "paid_search"},
    )
    assert r.status_code == 201, r.content
    c = Campaign.objects.get()
    assert (c.utm_source, c.utm_medium, c.utm_campaign) == ("google", "cpc", "spring-25")


def test_campaign_errors_and_update(api):
    CampaignFactory(utm_source="google", utm_medium="cpc", utm_campaign="dup")
    r = api.post("/api/v1/campaigns", {"name": "Dup", "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "DUP"})
    assert r.status_code == 400 and "utm_campaign" in error_fields(r)
    r = api.post("/api/v1/campaigns", {"utm_campaign": "x"})
    assert r.status_code == 400 and error_fields(r) == {"name"}
    r = api.post("/api/v1/campaigns", {"name": "Bad dates", "utm_campaign": "bd", "start_date": "2025-02-01", "end_date": "2025-01-01"})
    assert r.status_code == 400 and error_fields(r) == {"end_date"}
    c = CampaignFactory()
    r = api.patch(f"/api/v1/campaigns/{c.pk}", {"budget": "1500.50", "utm_medium": "Email"})
    assert r.status_code == 200, r.content
    c.refresh_from_db()
    assert (str(c.budget), c.utm_medium) == ("1500.50", "email")


def test_campaign_filters(api):
    a = CampaignFactory(channel="email", utm_source="newsletter", utm_medium="email")
    CampaignFactory(channel="paid_search")
    assert [x["id"] for x in api.get("/api/v1/campaigns?channel=email").json()["results"]] == [a.pk]
    assert [x["id"] for x in api.get("/api/v1/campaigns?utm_source=Newsletter").json()["results"]] == [a.pk]
    assert [x["id"] for x in api.get(f"/api/v1/campaigns?utm_campaign={a.utm_campaign}").json()["results"]] == [a.pk]


# --- Events ------------------------------------------------------------------


def test_events_list_filters_and_detail(api, django_assert_num_queries):
    lead = LeadFactory()
    campaign = CampaignFactory()
    now = timezone.now()
    e1 = EventFactory(lead=lead, campaign=campaign, channel="paid_search", occurred_at=now - timedelta(days=2))
    e2 = EventFactory(lead=lead, occurred_at=now)
    EventFactory()

    def ids(query: str = "") -> list[int]:
        r = api.get(f"/api/v1/events/?{query}")
        assert r.status_code == 200, r.content
        return [x["id"] for x in r.json()["results"]]

    assert ids(f"lead={lead.pk}") == [e2.pk, e1.pk]  # newest first
    assert ids(f"campaign={campaign.pk}") == [e1.pk]
    assert ids("channel=paid_search") == [e1.pk]
    assert set(ids("type=page_view")) >= {e1.pk, e2.pk}
    assert ids("type=nope") == []
    cutoff = (now - timedelta(days=1)).isoformat().replace("+", "%2B")
    assert e1.pk not in ids(f"occurred_at_after={cutoff}")
    assert ids(f"occurred_at_before={cutoff}") == [e1.pk]
    body = api.get(f"/api/v1/events/{e1.pk}").json()
    assert (body["type"], body["lead"], body["campaign"]) == ("page_view", lead.pk, campaign.pk)
    EventFactory.create_batch(10)
    with django_assert_num_queries(2):  # token + one page with its event type joined
        api.get("/api/v1/events/?page_size=20")


def test_get_events_without_slash_lists(api):
    e = EventFactory()
    r = api.get("/api/v1/events")
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["results"]] == [e.pk]


def test_post_events_without_slash_reaches_capture(token_api):
    from martech.api import capture

    seen = []
    original = capture.EventBatchView.post

    def spy(self, request, *args, **kwargs):
        seen.append(request.method)
        return original(self, request, *args, **kwargs)

    capture_client = token_api("capture")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture.EventBatchView, "post", spy)
        r = capture_client.post(
            "/api/v1/events",
            {"type": "track", "event": "page_view", "messageId": "m-1", "anonymousId": "a-1", "properties": {"url": "https://x.io/"}},
        )
    assert seen == ["POST"], r.content
    assert r.status_code < 500


def test_events_are_read_only(api):
    e = EventFactory()
    assert api.post("/api/v1/events/", {"messageId": "x"}).status_code in (403, 405)
    assert api.delete(f"/api/v1/events/{e.pk}").status_code in (403, 405)


# --- Lifecycle stages ----------------------------------------------------------


def test_stages_in_order(api):
    body = api.get("/api/v1/lifecycle-stages").json()
    orders = [s["order"] for s in body["results"]]
    assert orders == sorted(orders) and "lead" in [s["key"] for s in body["results"]]
