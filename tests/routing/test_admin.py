"""Routing admin: sales ops edit (rules inline, publish, simulate), marketing ops read."""
from __future__ import annotations

import pytest
from django.urls import reverse

from routing import services
from routing.models import Assignment, Rep
from tests.factories import LeadFactory
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db


def _inline_post(rule_set, rows, **extra):
    data = {"name": rule_set.name, "fallback_team": rule_set.fallback_team_id or "", "note": "",
            "rules-TOTAL_FORMS": str(len(rows)), "rules-INITIAL_FORMS": "0", "rules-MIN_NUM_FORMS": "0",
            "rules-MAX_NUM_FORMS": "1000", **extra}
    for i, row in enumerate(rows):
        for k, v in row.items():
            data[f"rules-{i}-{k}"] = v
    return data


def test_sales_ops_edits_a_draft_condition_validated_and_publishes(client, sales_ops):
    team = TeamFactory(name="DACH")
    RepFactory(team=team)
    territory = TerritoryFactory(name="Germany", countries=["DE"])
    draft = RuleSetFactory(fallback_team=team)
    client.force_login(sales_ops)
    url = reverse("admin:routing_ruleset_change", args=[draft.pk])
    row = {"order": "1", "name": "Germany", "territory": territory.pk, "condition": "", "action": "team", "team": team.pk,
           "rep": "", "is_active": "on"}
    bad = client.post(url, _inline_post(draft, [{**row, "team": ""}]))
    assert bad.status_code == 200 and "Choose the team this rule assigns to." in bad.content.decode()
    ok = client.post(url, _inline_post(draft, [row]))
    assert ok.status_code == 302, ok.content.decode()[:2000]
    LeadFactory(country="DE")
    LeadFactory(country="DE")
    page = client.get(url).content.decode()
    assert '<span class="rule-matches">2 leads</span>' in page
    sim = client.get(reverse("admin:routing_ruleset_simulate", args=[draft.pk]), {"days": 30}).content.decode()
    assert 'id="simulation-result"' in sim and "<td>DACH</td><td>2</td>" in sim
    assert not Assignment.objects.exists()
    resp = client.post(reverse("admin:routing_ruleset_publish", args=[draft.pk]))
    assert resp.status_code == 302
    draft.refresh_from_db()
    assert draft.version == 1
    # Published: read-only.
    assert client.post(url, _inline_post(draft, [row])).status_code == 403


def test_marketing_ops_reads_only(client, marketing_ops):
    draft = RuleSetFactory()
    client.force_login(marketing_ops)
    assert client.get(reverse("admin:routing_ruleset_changelist")).status_code == 200
    assert client.get(reverse("admin:routing_rep_changelist")).status_code == 200
    assert client.get(reverse("admin:routing_ruleset_add")).status_code == 403
    assert client.post(reverse("admin:routing_ruleset_publish", args=[draft.pk])).status_code == 403
    assert client.post(reverse("admin:routing_team_add"), {"name": "x", "method": "round_robin"}).status_code == 403


def test_rep_list_shows_who_is_eligible_now(client, sales_ops, django_assert_max_num_queries):
    team = TeamFactory()
    RepFactory(team=team, name="Here")
    RepFactory(team=team, name="Gone", is_active=False)
    RepFactory(team=team, name="Full", max_open_leads=0)
    client.force_login(sales_ops)
    with django_assert_max_num_queries(12):
        page = client.get(reverse("admin:routing_rep_changelist")).content.decode()
    assert page.count('class="routing-eligible"') == 1 and page.count('class="routing-away"') == 1
    assert page.count('class="routing-cap"') == 1
    eligible = client.get(reverse("admin:routing_rep_changelist"), {"eligible": "yes"}).content.decode()
    assert "Here" in eligible and "Gone" not in eligible


def test_lead_page_shows_the_routing_explanation(client, sales_ops):
    team = TeamFactory(name="Inbound")
    RepFactory(team=team, name="Ann")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    services.lead_route(lead_id=lead.pk, trigger="api")
    client.force_login(sales_ops)
    page = client.get(reverse("admin:martech_lead_change", args=[lead.pk])).content.decode()
    assert "Routing (assignments, newest first)" in page and "Ann: eligible" in page


def test_deactivate_action_reroutes(client, sales_ops):
    team = TeamFactory()
    a, b = RepFactory(team=team, name="A"), RepFactory(team=team, name="B")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    services.lead_route(lead_id=lead.pk, trigger="api")
    client.force_login(sales_ops)
    resp = client.post(reverse("admin:routing_rep_changelist"),
                       {"action": "deactivate_and_reroute", "_selected_action": [a.pk], "apply": "1"})
    assert resp.status_code == 302
    assert Rep.objects.get(pk=a.pk).is_active is False
    assert Assignment.objects.get(lead=lead, is_current=True).rep == b


def test_sla_report_page(client, marketing_ops):
    from tests.routing.factories import SlaPolicyFactory

    team = TeamFactory(name="Inbound", sla_policy=SlaPolicyFactory(first_touch_hours=1))
    RepFactory(team=team, name="Ann")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    services.lead_route(lead_id=lead.pk, trigger="api")
    services.first_touch_record(lead_id=lead.pk, source="t")
    client.force_login(marketing_ops)  # viewing is enough
    page = client.get(reverse("admin:routing_sla_report"), {"days": 7}).content.decode()
    assert "<td>Inbound</td><td>1</td><td>1</td><td>0</td><td>0</td><td>100%</td>" in page
    assert "<td>Ann</td><td>1</td><td>1</td>" in page


def test_lead_admin_route_action(client, sales_ops, marketing_ops, monkeypatch):
    """The admin-action trigger: Sales Ops route selected leads (stored with
    trigger admin and the actor); Marketing Ops have no such action; a
    selection over the limit is refused whole, not routed in part."""
    from routing.admin import assignments

    team = TeamFactory()
    RepFactory(team=team, name="A")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    leads = [LeadFactory(), LeadFactory()]
    url = reverse("admin:martech_lead_changelist")
    post = {"action": "route_leads", "_selected_action": [l.pk for l in leads]}
    client.force_login(marketing_ops)
    assert "route_leads" not in client.get(url).content.decode()
    client.post(url, post)
    assert not Assignment.objects.exists()
    client.force_login(sales_ops)
    monkeypatch.setattr(assignments, "MAX_ROUTE_ACTION", 1)
    page = client.post(url, post, follow=True).content.decode()
    assert "Select at most 1 leads to route at once; nothing was routed." in page
    assert not Assignment.objects.exists()
    monkeypatch.setattr(assignments, "MAX_ROUTE_ACTION", 1000)
    page = client.post(url, post, follow=True).content.decode()
    assert "2 lead(s) routed." in page
    rows = Assignment.objects.filter(lead__in=leads)
    assert rows.count() == 2 and {(a.trigger, a.actor_id) for a in rows} == {("admin", sales_ops.pk)}
