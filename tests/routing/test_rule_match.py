"""Rule matching as compiled for speed (territories normalized once,
conditions parsed once, rules indexed by country) gives exactly the rule the
plain reading of the rules gives: the first, in order, whose territory
matches (``Territory.matches``) and whose condition holds."""
from __future__ import annotations

import itertools

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from routing import services
from routing.conditions import condition_matches
from routing.models import Rule
from tests.factories import AccountFactory, LeadFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db


def reference_match(rules, lead):
    for rule in rules:
        if rule.territory_id and not rule.territory.matches(lead):
            continue
        if condition_matches(rule.condition, lead):
            return rule
    return None


def test_compiled_matching_agrees_with_the_plain_reading():
    team = TeamFactory()
    rs = RuleSetFactory(fallback_team=team)
    specs = [
        # (territory kwargs or None, condition)
        ({"countries": ["de"], "postal_prefixes": ["10 1"]}, ""),
        ({"countries": ["US", "CA"], "regions": [" California "]}, ""),
        (None, "score >= 80"),  # no territory: under every country, in its place
        ({"countries": ["DE"], "industries": ["software"]}, ""),
        ({"min_employees": 100, "max_employees": 500}, 'country != "US"'),
        ({"countries": ["US"]}, 'job_title contains "sales"'),
        ({"postal_prefixes": ["9"]}, ""),
        ({"countries": ["FR", "DE"]}, ""),
    ]
    for i, (terr, condition) in enumerate(specs):
        RuleFactory(rule_set=rs, order=i, name=f"r{i}", team=team, condition=condition,
                    territory=TerritoryFactory(**terr) if terr else None)
    RepFactory(team=team)  # publishing needs a fallback team with a rep
    published = services.rule_set_publish(rule_set=rs)
    rules = services.rules_of(published)
    small = AccountFactory(industry="Software", employee_count=200)
    big = AccountFactory(industry="Retail", employee_count=5000)
    leads = []
    for country, region, postal, score, title, account in itertools.product(
        ["DE", "de", "US", "FR", ""], ["", "california"], ["", "10115", "9000"], [10, 90],
        ["Sales Lead", "Engineer"], [None, small, big],
    ):
        leads.append(LeadFactory(country=country, region=region, postal_code=postal, total_score=score,
                                 job_title=title, account=account))
    seen = set()
    for lead in leads:
        lead.refresh_from_db()
        expected = reference_match(rules, lead)
        assert services.rule_match(rules, lead) == expected, (lead.country, lead.region, lead.postal_code)
        seen.add(expected.name if expected else None)
    # The grid reaches every rule and the no-match case, so the check above
    # covers each kind of criterion.
    assert seen == {f"r{i}" for i in range(len(specs))} | {None}


def test_a_draft_list_is_compiled_per_list_and_reflects_its_rules():
    team = TeamFactory()
    rs = RuleSetFactory(fallback_team=team)
    RuleFactory(rule_set=rs, order=0, name="DE", team=team, territory=TerritoryFactory(countries=["DE"]))
    lead = LeadFactory(country="DE")
    assert services.rule_match(services.rules_of(rs), lead).name == "DE"
    Rule.objects.filter(rule_set=rs).update(is_active=False)
    assert services.rule_match(services.rules_of(rs), lead) is None  # a draft is read and compiled afresh


def test_preview_reads_the_lead_with_its_account_and_refuses_an_unknown_lead():
    team = TeamFactory()
    rs = RuleSetFactory(fallback_team=team)
    RuleFactory(rule_set=rs, order=0, name="Software", team=team,
                territory=TerritoryFactory(industries=["software"]))
    RepFactory(team=team)
    services.rule_set_publish(rule_set=rs)
    lead = LeadFactory(account=AccountFactory(industry="Software"), country="US")
    services.lead_preview(lead_id=LeadFactory().pk)  # warm the prepared statements
    with CaptureQueriesContext(connection) as ctx:
        explanation = services.lead_preview(lead_id=lead.pk)
    assert explanation["rule"] == "Software"
    # The account came with the lead: no query names the account table alone.
    assert not [q for q in ctx.captured_queries if q["sql"].startswith('SELECT "martech_account"')]
    with pytest.raises(ValidationError) as exc:
        services.lead_preview(lead_id=10**9)
    assert exc.value.message_dict == {"lead_id": [f"No lead with id {10**9}."]}
    with pytest.raises(ValidationError) as exc:
        services.lead_route(lead_id=10**9, trigger="api")
    assert "lead_id" in exc.value.message_dict
