"""Rule-set versions: publish, immutability, rollback, simulation."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from routing import services
from routing.models import Assignment, Rep, Rule, RuleSet, Team
from routing.simulation import leads_for_simulation, rule_set_simulate
from tests.factories import LeadFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db


def test_publish_needs_a_fallback_team_and_valid_rules():
    draft = RuleSet.objects.create()
    with pytest.raises(ValidationError) as exc:
        services.rule_set_publish(rule_set=draft)
    assert "fallback_team" in exc.value.message_dict
    draft.fallback_team = TeamFactory()
    draft.save()
    RuleFactory(rule_set=draft, name="No team", action=Rule.Action.TEAM, team=None)
    with pytest.raises(ValidationError) as exc:
        services.rule_set_publish(rule_set=draft)
    assert "rules.No team.team" in exc.value.message_dict


def test_versions_are_numbered_immutable_and_rollback_is_one_action():
    us, de = TeamFactory(name="US"), TeamFactory(name="DE")
    RepFactory(team=us, name="Ann")
    RepFactory(team=de, name="Dirk")
    v1 = services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=us))
    assert v1.version == 1 and not v1.is_draft
    with pytest.raises(ValidationError):
        services.rule_set_publish(rule_set=v1)
    with pytest.raises(ValidationError):
        services.rule_edit_check(v1)

    draft = services.rule_set_copy(source=v1)
    RuleFactory(rule_set=draft, name="Germany", territory=TerritoryFactory(countries=["DE"]), team=de)
    v2 = services.rule_set_publish(rule_set=draft)
    assert v2.version == 2 and services.live_rule_set() == v2
    a, _ = services.lead_route(lead_id=LeadFactory(country="DE").pk, trigger="api")
    assert a.team == de and a.rule_set_version == 2

    v3 = services.rule_set_rollback(to=v1)
    assert v3.version == 3 and v3.copied_from == v1 and services.live_rule_set() == v3
    assert list(v3.rules.values_list("name", flat=True)) == []
    b, _ = services.lead_route(lead_id=LeadFactory(country="DE").pk, trigger="api")
    assert b.team == us and b.rule_set_version == 3
    # Earlier decisions keep their version.
    a.refresh_from_db()
    assert a.rule_set_version == 2


def test_simulation_writes_nothing_and_compares_with_the_live_set():
    us, de = TeamFactory(name="US"), TeamFactory(name="DE", method=Team.Method.WEIGHTED)
    RepFactory(team=us, name="Ann")
    RepFactory(team=de, name="Dirk", weight=3)
    RepFactory(team=de, name="Dora", weight=1)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=us))
    for _ in range(8):
        LeadFactory(country="DE")
    for _ in range(4):
        LeadFactory(country="US")
    draft = services.rule_set_copy(source=services.live_rule_set())
    RuleFactory(rule_set=draft, name="Germany", territory=TerritoryFactory(countries=["DE"]), team=de)
    state = lambda: (list(Team.objects.values_list("rr_clock", flat=True)), list(Rep.objects.values_list("rr_pass", flat=True)))  # noqa: E731
    before = state()
    with CaptureQueriesContext(connection) as ctx:
        result = rule_set_simulate(rule_set=draft, leads=leads_for_simulation(days=30))
    writes = [q["sql"] for q in ctx.captured_queries if q["sql"].split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]
    assert writes == []
    assert state() == before and not Assignment.objects.exists()
    assert result["leads"] == 12
    assert result["draft"]["by_team"] == {"DE": 8, "US": 4}
    assert result["draft"]["by_rep"] == {"Dirk": 6, "Ann": 4, "Dora": 2}
    assert result["published"]["by_team"] == {"US": 12}
    assert result["changed"] == {"rule": 8, "team": 8}
    assert result["team_delta"] == {"DE": 8, "US": -8}
