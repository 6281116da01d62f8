"""Issue 17, item 5 in routing: rule payloads refuse unknown keys; a stored
rule whose condition no longer parses is skipped (with the reason in the
decision record) and breaks neither routing nor the admin pages."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from routing import services
from routing.models import Assignment, Rule, RuleSet
from tests.factories import LeadFactory
from tests.martech.api_support import *  # noqa: F403
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/routing"
BAD = "created_at > now - 1000000 days"


def test_api_refuses_a_misspelt_rule_key_naming_it(token_api):
    api = token_api("routing:read", "routing:write")
    team = TeamFactory()
    resp = api.post(f"{BASE}/rule-sets", {"fallback_team": team.pk, "rules": [
        {"name": "US", "action": "team", "team": team.pk, "conditon": 'country = "US"'}]}, format="json")
    assert resp.status_code == 400, resp.json()
    body = resp.json()["error"]
    assert body["code"] and "conditon" in str(body["fields"])
    assert not RuleSet.objects.exists()


def test_service_refuses_unknown_rule_keys():
    team = TeamFactory()
    with pytest.raises(ValidationError) as info:
        services.rule_set_save_draft(rule_set=None, data={"fallback_team": team}, rules=[
            {"name": "ok", "action": "nurture"}, {"name": "US", "action": "team", "team": team, "conditon": "x"}])
    assert list(info.value.message_dict) == ["rules[1].conditon"]
    assert "Unknown key 'conditon'" in info.value.message_dict["rules[1].conditon"][0]


def test_condition_out_of_range_refused_on_save_and_publish(token_api):
    api = token_api("routing:read", "routing:write")
    team = TeamFactory()
    resp = api.post(f"{BASE}/rule-sets", {"fallback_team": team.pk, "rules": [
        {"name": "old", "action": "team", "team": team.pk, "condition": BAD}]}, format="json")
    assert resp.status_code == 400
    assert "interval too large" in str(resp.json()["error"]["fields"])
    resp = api.post(f"{BASE}/rule-sets", {"fallback_team": team.pk, "rules": [
        {"name": "huge", "action": "team", "team": team.pk, "condition": "score > " + "9" * 4301}]}, format="json")
    assert resp.status_code == 400 and "digits" in str(resp.json()["error"]["fields"])
    draft = RuleSetFactory(fallback_team=team)
    RepFactory(team=team)
    Rule.objects.create(rule_set=draft, name="old", condition=BAD, action="team", team=team)  # bypasses clean()
    with pytest.raises(ValidationError) as info:
        services.rule_set_publish(rule_set=draft)
    assert "interval too large" in str(info.value.message_dict["rules.old.condition"])


@pytest.fixture
def live_with_bad_rule():
    """A published set holding a rule stored before the language refused it."""
    team, other = TeamFactory(name="Inbound"), TeamFactory(name="Other")
    RepFactory(team=team, name="Ann")
    RepFactory(team=other, name="Otto")
    draft = RuleSetFactory(fallback_team=team)
    RuleFactory(rule_set=draft, name="US", condition='country = "US"', action="team", team=other, order=2)
    published = services.rule_set_publish(rule_set=draft)
    RuleFactory(rule_set=published, name="Old rule", condition="", action="team", team=other, order=1)
    Rule.objects.filter(rule_set=published, name="Old rule").update(condition=BAD)
    services._clear_cache()
    return published


def test_routing_skips_a_stored_rule_that_no_longer_parses(live_with_bad_rule):
    us, de = LeadFactory(country="US"), LeadFactory(country="DE")
    a, _ = services.lead_route(lead_id=us.pk, trigger="api")
    assert a.status == Assignment.Status.ASSIGNED and a.rule_name == "US" and a.rep.name == "Otto"
    skipped = [s for s in a.explanation["steps"] if s["step"] == "rule skipped"]
    assert skipped == [{"step": "rule skipped", "rule": "Old rule", "rule_id": skipped[0]["rule_id"],
                        "reason": skipped[0]["reason"]}]
    assert "invalid condition: column 20: interval too large" in skipped[0]["reason"]
    preview = services.lead_preview(lead_id=de.pk)
    assert preview["result"]["team"] == "Inbound" and preview["steps"][0]["step"] == "rule skipped"
    counts = services.leads_route_batch(lead_ids=[de.pk], trigger="api")
    assert counts["assigned"] == 1
    assert Assignment.objects.get(lead=de, is_current=True).explanation["steps"][0]["step"] == "rule skipped"


def test_admin_pages_and_simulation_do_not_fail_on_a_bad_rule(client, sales_ops, live_with_bad_rule):
    LeadFactory(country="US")
    client.force_login(sales_ops)
    page = client.get(reverse("admin:routing_ruleset_change", args=[live_with_bad_rule.pk]))
    assert page.status_code == 200 and "invalid condition" in page.content.decode()
    sim = client.get(reverse("admin:routing_ruleset_simulate", args=[live_with_bad_rule.pk]), {"days": 30})
    assert sim.status_code == 200
    text = sim.content.decode()
    assert 'id="simulation-result"' in text and "Old rule" in text and "interval too large" in text
