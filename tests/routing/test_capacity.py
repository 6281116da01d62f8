"""Caps (max open leads, max new leads per local day) hold on every path
and in every method, combine with weights, and the router, the decision
record and the admin count them the same way (``services.rep_loads``)."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from routing import services
from routing.services import selectors
from routing.models import Assignment, Rule, Team
from tests.factories import LeadFactory
from tests.routing.factories import away_rep, RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
NOW = timezone.now()


def publish(*, fallback, rules=()):
    rs = RuleSetFactory(fallback_team=fallback)
    for i, kw in enumerate(rules):
        RuleFactory(rule_set=rs, order=i, **kw)
    return services.rule_set_publish(rule_set=rs)


def route(now=NOW, **lead):
    assignment, _ = services.lead_route(lead_id=LeadFactory(**lead).pk, trigger=Assignment.Trigger.API, now=now)
    return assignment


def open_of(rep) -> int:
    return Assignment.objects.filter(services.open_assignments_q(), rep=rep).count()


@pytest.mark.parametrize("method", [Team.Method.WEIGHTED, Team.Method.ROUND_ROBIN])
def test_fair_queue_methods_skip_reps_at_capacity_and_weights_share_the_rest(method):
    team = TeamFactory(method=method)
    capped = RepFactory(team=team, name="capped", weight=3, max_open_leads=5)
    RepFactory(team=team, name="heavy", weight=2)
    RepFactory(team=team, name="light", weight=1)
    publish(fallback=team)
    names = Counter(route().rep.name for _ in range(35))
    assert names["capped"] == 5 == open_of(capped)
    if method == Team.Method.WEIGHTED:
        # Among the reps with room the weights still hold: 2:1 of the other 30.
        assert names["heavy"] == 20 and names["light"] == 10
    last = route()
    row = next(c for c in last.explanation["steps"][1]["candidates"] if c["rep"] == "capped")
    assert row == {"rep_id": capped.pk, "rep": "capped", "skipped": "at_capacity", "open": 5, "today": 5}


def test_a_full_team_leaves_the_lead_waiting_with_the_real_figures_recorded():
    team, empty = TeamFactory(method=Team.Method.WEIGHTED), TeamFactory(name="Nobody")
    RepFactory(team=team, name="A", max_open_leads=2)
    RepFactory(team=team, name="B", max_per_day=1)
    away_rep(empty)  # publishing needs a fallback team with an active rep
    publish(fallback=empty, rules=[{"team": team}])
    statuses = Counter(route().status for _ in range(5))
    assert statuses == {"assigned": 3, "waiting": 2}
    waiting = Assignment.objects.filter(status="waiting").latest("id")
    rows = {c["rep"]: c for c in waiting.explanation["steps"][1]["candidates"]}
    assert rows["A"]["skipped"] == "at_capacity" and rows["A"]["open"] == 2
    assert rows["B"]["skipped"] == "daily_limit" and rows["B"]["today"] == 1


def test_daily_caps_count_the_reps_local_day():
    team = TeamFactory(method=Team.Method.ROUND_ROBIN)
    kiwi = RepFactory(team=team, name="kiwi", time_zone="Pacific/Auckland", max_per_day=2)
    RepFactory(team=team, name="other")
    publish(fallback=team)
    zone = ZoneInfo("Pacific/Auckland")
    local_noon = datetime(2026, 6, 10, 12, 0, tzinfo=zone)
    # Two leads yesterday evening (local) and one this morning: one counts today.
    for at in (local_noon - timedelta(hours=14), local_noon - timedelta(hours=13), local_noon - timedelta(hours=11)):
        Assignment.objects.create(lead=LeadFactory(), status="assigned", rep=kiwi, team=team, trigger="api",
                                  assigned_at=at, is_current=False)
    now = local_noon.astimezone(dt_timezone.utc)  # 00:00 UTC: the UTC day would count all three
    names = [route(now=now).rep.name for _ in range(4)]
    assert names.count("kiwi") == 1  # one more today, then the daily limit
    tomorrow = now + timedelta(days=1)
    assert [route(now=tomorrow).rep.name for _ in range(4)].count("kiwi") == 2


def test_rep_rule_backup_and_account_owner_paths_respect_caps():
    from tests.factories import AccountFactory, UserFactory

    team = TeamFactory(name="Team")
    RepFactory(team=team, name="team rep")
    backup = RepFactory(team=team, name="backup", max_open_leads=1)
    ann = RepFactory(team=team, name="ann", max_open_leads=2, backup=backup)
    owner_user = UserFactory()
    RepFactory(team=team, name="owner", user=owner_user, max_open_leads=1)
    account = AccountFactory(owner=owner_user, domain="acme.example")
    publish(fallback=team, rules=[
        {"condition": 'country = "US"', "action": Rule.Action.REP, "rep": ann},
        {"condition": 'country = "DE"', "action": Rule.Action.ACCOUNT_OWNER},
    ])
    assert [route(country="US").rep.name for _ in range(4)] == ["ann", "ann", "backup", "team rep"]
    de = [route(country="DE", email=f"x{i}@acme.example", account=account).rep.name for i in range(2)]
    assert de[0] == "owner" and de[1] != "owner"


def test_batch_routing_respects_caps_on_team_and_rep_rules():
    team = TeamFactory(method=Team.Method.WEIGHTED)
    capped = RepFactory(team=team, name="capped", weight=5, max_open_leads=3)
    RepFactory(team=team, name="free")
    direct = RepFactory(team=team, name="direct", max_open_leads=2)
    publish(fallback=team, rules=[{"condition": 'country = "US"', "action": Rule.Action.REP, "rep": direct}])
    ids = [LeadFactory(country="US" if i % 2 else "FR").pk for i in range(20)]
    counts = services.leads_route_batch(lead_ids=ids, trigger="api", now=NOW)
    assert counts["assigned"] == 20
    assert open_of(capped) == 3 and open_of(direct) == 2


def test_the_admin_shows_capacity_as_the_router_counts_it(client, superuser):
    team = TeamFactory()
    rep = RepFactory(team=team, name="Daily", max_per_day=1)
    publish(fallback=team)
    # The admin counts today by the clock, so the routes do too (NOW, taken
    # when the module was imported, may be yesterday by the time this runs).
    now = timezone.now()
    assert route(now=now).rep == rep
    Assignment.objects.filter(rep=rep).update(is_current=False)  # no longer open, still today's
    client.force_login(superuser)
    page = client.get("/admin/routing/rep/").content.decode()
    assert "daily limit reached" in page
    assert services.rep_capacity(rep, timezone.now()) == (0, 1, "daily_limit")
    lead = route(now=timezone.now())
    assert lead.status == "waiting"
    assert lead.explanation["steps"][1]["candidates"][0] == {"rep_id": rep.pk, "rep": "Daily", "skipped": "daily_limit",
                                                             "open": 0, "today": 1}


@pytest.mark.postgres_only
def test_the_plain_sql_loads_count_what_the_orm_definition_counts():
    """PostgreSQL counts loads with SQL compiled from ``open_assignments_q``;
    it agrees with the ORM query SQLite runs, time zone by time zone."""
    team = TeamFactory()
    reps = [RepFactory(team=team, time_zone=zone, max_per_day=100)
            for zone in ("UTC", "Pacific/Auckland", "America/Los_Angeles")]
    now = datetime(2026, 6, 10, 9, 30, tzinfo=dt_timezone.utc)
    for i in range(36):
        rep = reps[i % 3]
        Assignment.objects.create(lead=LeadFactory(), status="assigned" if i % 4 else "waiting", rep=rep, team=team,
                                  trigger="api", is_current=i % 5 != 0, assigned_at=now - timedelta(hours=i))
    loads = services.rep_loads(reps, now)
    assert loads == selectors._rep_loads_orm(reps, now, dict.fromkeys([r.pk for r in reps], (0, 0)))
    assert len(set(loads.values())) == 3 and all(sum(v) for v in loads.values())
