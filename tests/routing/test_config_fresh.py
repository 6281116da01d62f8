"""Routing configuration is current in every process: a change to a rep,
team, territory, absence, cap or rule set made by one process applies to
the very next lead another process routes (martech.configcache, key
``routing.config``).

"Another process" is simulated as tests/martech/test_configcache.py does:
the router's memory keeps what it loaded before the change (it is put back
after the change is made), only the token in the database moved.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from martech import configcache
from martech.models import ConfigVersion
from routing import services
from routing.models import Assignment, OutOfOffice, Rep, Rule, Team
from tests.factories import LeadFactory
from tests.martech.api_support import *  # noqa: F403
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/routing"


@contextmanager
def in_another_process():
    """Run the block as another process would: afterwards this process
    holds in memory exactly what it held before (its cached rules, reps,
    teams, territories), while the database holds the change and its token."""
    held = dict(configcache._values)
    yield
    configcache._values.clear()
    configcache._values.update(held)


def publish(*, fallback, rules=()):
    rs = RuleSetFactory(fallback_team=fallback)
    for i, kw in enumerate(rules):
        RuleFactory(rule_set=rs, order=i, **kw)
    return services.rule_set_publish(rule_set=rs)


def route(**lead):
    assignment, _ = services.lead_route(lead_id=LeadFactory(**lead).pk, trigger=Assignment.Trigger.API)
    return assignment


@pytest.fixture
def rep_rule():
    """An "assign to rep" rule for Ann (backup Bea), her team the fallback."""
    fallback = TeamFactory(name="Fallback")
    RepFactory(team=fallback, name="Fallback rep")
    team = TeamFactory(name="Sales")
    bea = RepFactory(team=team, name="Bea")
    ann = RepFactory(team=team, name="Ann", backup=bea)
    publish(fallback=fallback, rules=[{"action": Rule.Action.REP, "rep": ann, "name": "Ann's"}])
    assert route().rep == ann  # the router has loaded and cached the rules with Ann
    return ann


def test_a_rep_deactivated_through_the_api_gets_no_further_lead(rep_rule, token_api):
    api = token_api("routing:read", "routing:write")
    with in_another_process():
        response = api.patch(f"{BASE}/reps/{rep_rule.pk}", {"is_active": False}, format="json")
        assert response.status_code == 200, response.json()
    assignment = route()
    assert assignment.rep.name == "Bea"
    assert assignment.explanation["steps"][1]["candidates"][0]["skipped"] == "inactive"


def test_a_rep_deactivated_by_the_admin_action_path_gets_no_further_lead(rep_rule):
    with in_another_process():
        services.rep_deactivate(rep=rep_rule)  # a QuerySet.update(), no model save
    assert route().rep.name == "Bea"


def test_a_cap_removed_or_added_applies_to_the_next_lead(rep_rule):
    with in_another_process():
        services.config_save(instance=Rep.objects.get(pk=rep_rule.pk), data={"max_open_leads": 1})
    assert route().rep.name == "Bea"  # Ann has 1 open: at capacity
    with in_another_process():
        services.config_save(instance=Rep.objects.get(pk=rep_rule.pk), data={"max_open_leads": None})
    assert route().rep == rep_rule  # the removed cap is not enforced any more


def test_a_new_backup_applies_to_the_next_lead(rep_rule):
    cat = RepFactory(team=rep_rule.team, name="Cat")
    Rep.objects.filter(name="Bea").update(is_active=False)  # (a plain update: no token; Bea is not cached)
    with in_another_process():
        services.config_save(instance=Rep.objects.get(pk=rep_rule.pk), data={"max_open_leads": 1, "backup": cat})
    assert route().rep == cat


def test_an_absence_applies_to_the_next_lead(rep_rule):
    now = timezone.now()
    with in_another_process():
        absence = OutOfOffice.objects.create(rep=rep_rule, starts_at=now - timedelta(hours=1), ends_at=now + timedelta(hours=2))
    assert route().rep.name == "Bea"
    with in_another_process():
        absence.delete()
    assert route().rep == rep_rule


def test_a_territory_moved_routes_the_next_lead_by_its_new_countries():
    fallback, us_team = TeamFactory(name="Fallback"), TeamFactory(name="Territory team")
    RepFactory(team=fallback, name="F")
    RepFactory(team=us_team, name="T")
    territory = TerritoryFactory(countries=["US"])
    publish(fallback=fallback, rules=[{"territory": territory, "team": us_team}])
    assert route(country="US").team == us_team
    with in_another_process():
        services.config_save(instance=territory, data={"countries": ["DE"]})
    assert route(country="US").team == fallback
    assert route(country="DE").team == us_team


def test_a_team_deactivated_sends_the_next_lead_to_the_fallback():
    fallback, team = TeamFactory(name="Fallback"), TeamFactory(name="Rule team")
    RepFactory(team=fallback, name="F")
    RepFactory(team=team, name="T")
    publish(fallback=fallback, rules=[{"team": team}])
    assert route().team == team
    with in_another_process():
        services.config_save(instance=Team.objects.get(pk=team.pk), data={"is_active": False})
    assignment = route()
    assert assignment.team == fallback
    assert assignment.explanation["steps"][1]["outcome"] == "team inactive"


def test_a_rule_set_published_or_rolled_back_elsewhere_is_live_for_the_next_lead():
    a, b = TeamFactory(name="A"), TeamFactory(name="B")
    RepFactory(team=a)
    RepFactory(team=b)
    v1 = publish(fallback=a)
    assert route().team == a
    with in_another_process():
        publish(fallback=b)
    assert route().team == b
    with in_another_process():
        services.rule_set_rollback(to=v1)
    assert route().team == a


def test_a_change_rolled_back_leaves_the_router_on_the_committed_configuration(rep_rule):
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        services.config_save(instance=Rep.objects.get(pk=rep_rule.pk), data={"is_active": False})
        assert route().rep.name == "Bea"  # inside the change's transaction, the change holds
        raise RuntimeError("rolled back")
    assert route().rep == rep_rule


def test_the_freshness_check_costs_no_query(rep_rule):
    """The token comes in the statement that locks the lead: a route reads
    as many statements as before, and a cached configuration is reused."""
    lead = LeadFactory()
    with CaptureQueriesContext(connection) as ctx:
        services.lead_route(lead_id=lead.pk, trigger="api")
    sql = [q["sql"] for q in ctx.captured_queries]
    assert sum("martech_configversion" in q for q in sql) == 1
    assert not any(q.startswith('SELECT key, token') for q in sql)
    assert not any('FROM "routing_rule" ' in q for q in sql)  # the rules came from memory
    assert ConfigVersion.objects.filter(key=services.CONFIG_KEY).exists()


def test_a_deleted_users_rep_is_routed_to_without_the_user(rep_rule):
    """Deleting a user clears their rep's user with an update (no save
    signal): the token still moves, so no route sets a deleted owner."""
    from tests.factories import UserFactory

    user = UserFactory()
    services.config_save(instance=Rep.objects.get(pk=rep_rule.pk), data={"user": user})
    assert route().lead.owner_id == user.pk
    with in_another_process():
        user.delete()
    assignment = route()
    assert assignment.rep == rep_rule and assignment.lead.owner_id is None


def test_a_changed_sla_policy_applies_to_the_next_assignment(rep_rule):
    from routing.models import SlaPolicy
    from tests.routing.factories import SlaPolicyFactory

    policy = SlaPolicyFactory(first_touch_hours=2)
    services.config_save(instance=Team.objects.get(pk=rep_rule.team_id), data={"sla_policy": policy})
    first = route()
    assert first.sla_due_at - first.assigned_at == timedelta(hours=2)
    with in_another_process():
        services.config_save(instance=SlaPolicy.objects.get(pk=policy.pk), data={"first_touch_hours": 5})
    second = route()
    assert second.sla_due_at - second.assigned_at == timedelta(hours=5)
