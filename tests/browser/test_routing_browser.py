"""Routing in a real browser (Debian chromium via Playwright): a Sales Ops
user who is not a superuser adds a territory rule to a draft, simulates,
publishes, and a newly captured lead is assigned by that rule."""
from __future__ import annotations

import os

import pytest

from martech.services.api_clients import api_client_create
from routing import services
from routing.models import Rep, RuleSet, Team, Territory
from tests.browser.conftest import CHROMIUM
from tests.factories import LeadFactory, UserFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture
def routing_setup(live_server):
    """Built before the browser starts (see test_admin_browser.grace)."""
    user = UserFactory(username="sops-browser", groups=["Sales Ops"])
    assert not user.is_superuser
    dach = Team.objects.create(name="DACH team")
    Rep.objects.create(name="Dieter", email="dieter@sales.example", team=dach, working_hours={})
    overflow = Team.objects.create(name="Overflow")
    Rep.objects.create(name="Flo", email="flo@sales.example", team=overflow, working_hours={})
    Territory.objects.create(name="DACH", countries=["DE", "AT", "CH"])
    services.rule_set_publish(rule_set=RuleSet.objects.create(name="Routing rules", fallback_team=overflow))
    draft = services.rule_set_copy(source=services.live_rule_set())
    for i in range(3):
        LeadFactory(email=f"old{i}@firma.de", country="DE")
    _, token = api_client_create(name="browser-capture", scopes=["leads:write", "leads:read"])
    return {"draft": draft, "token": token}


def test_sales_ops_adds_a_territory_rule_simulates_publishes_and_a_new_lead_follows_it(live_server, routing_setup, browser_page, screenshots):
    page, draft = browser_page, routing_setup["draft"]
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "sops-browser")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/routing/ruleset/{draft.pk}/change/")
    page.fill("#id_rules-0-order", "1")
    page.fill("#id_rules-0-name", "Germany")
    page.select_option("#id_rules-0-territory", label="DACH")
    page.select_option("#id_rules-0-action", "team")
    page.select_option("#id_rules-0-team", label="DACH team")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    assert page.locator(".rule-matches").first.inner_text() == "3 leads"

    page.click("a.routing-simulate")
    page.wait_for_selector("#simulation-result")
    result = page.locator("#simulation-result").inner_text()
    assert "3 lead(s) change team" in result and "DACH team" in result
    page.screenshot(path=str(screenshots / "routing_simulation.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/routing/ruleset/{draft.pk}/change/")
    page.click("a.routing-publish")
    page.click("#confirm")
    page.wait_for_selector(".messagelist .success")
    assert "v2" in page.locator(".messagelist").inner_text()

    response = page.request.post(
        f"{live_server.url}/api/v1/leads/upsert",
        headers={"Authorization": f"Bearer {routing_setup['token']}"},
        data={"email": "neu@kunde.de", "country": "DE"},
    )
    assert response.status == 201, response.text()
    lead_id = response.json()["id"]
    page.goto(f"{live_server.url}/admin/martech/lead/{lead_id}/change/")
    routing_text = page.locator(".routing-explanation").first.inner_text()
    assert "Dieter" in routing_text and "rule: Germany" in routing_text and "v2" in routing_text
    page.screenshot(path=str(screenshots / "routing_lead_assigned.png"), full_page=True)
