"""Caps and rule-set versions under concurrent routing (PostgreSQL row
locks): 8 routers, each its own connection, hitting a cap of 5; routes
while the live rule set is rolled back and forth."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest
from django.db import connections
from django.db.models import Count

from routing import services
from routing.models import Assignment, Rule, Team
from tests.factories import LeadFactory
from tests.routing.factories import away_rep, RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]
ROUTERS = 8


def publish(*, fallback, rules=()):
    rs = RuleSetFactory(fallback_team=fallback)
    for i, kw in enumerate(rules):
        RuleFactory(rule_set=rs, order=i, **kw)
    return services.rule_set_publish(rule_set=rs)


def run_routers(lead_ids: list[int], *, routers: int = ROUTERS) -> list[BaseException]:
    """Each router (a thread with its own connection) routes its share of
    the leads, all starting at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(routers)

    def router(mine: list[int]):
        try:
            barrier.wait()
            for lead_id in mine:
                services.lead_route(lead_id=lead_id, trigger="api")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=router, args=(lead_ids[i::routers],)) for i in range(routers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def open_by_rep() -> Counter:
    return Counter(dict(Assignment.objects.filter(services.open_assignments_q()).values_list("rep__name")
                        .annotate(n=Count("id")).values_list("rep__name", "n")))


def test_an_assign_to_rep_rule_stops_at_the_cap_and_sends_the_rest_to_the_rules_team(caplog):
    team = TeamFactory(name="Next")
    RepFactory(team=team, name="next")
    capped = RepFactory(team=None, name="capped", max_open_leads=5)
    fallback = TeamFactory(name="Fallback")
    away_rep(fallback)  # publishing needs a fallback team with an active rep
    publish(fallback=fallback, rules=[{"action": Rule.Action.REP, "rep": capped, "team": team}])
    lead_ids = [LeadFactory().pk for _ in range(3 * ROUTERS)]
    with caplog.at_level(logging.WARNING, logger="martech.db"):
        assert run_routers(lead_ids) == []
    assert open_by_rep() == {"capped": 5, "next": 3 * ROUTERS - 5}
    assert Assignment.objects.count() == len(lead_ids)
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]  # no deadlock, nothing retried


def test_a_weighted_team_stops_each_rep_at_the_cap_and_the_rest_waits(caplog):
    team, nobody = TeamFactory(name="Weighted", method=Team.Method.WEIGHTED), TeamFactory(name="Nobody")
    RepFactory(team=team, name="heavy", weight=3, max_open_leads=5)
    RepFactory(team=team, name="light", weight=1, max_open_leads=5)
    away_rep(nobody)  # publishing needs a fallback team with an active rep
    publish(fallback=nobody, rules=[{"team": team}])
    lead_ids = [LeadFactory().pk for _ in range(3 * ROUTERS)]
    with caplog.at_level(logging.WARNING, logger="martech.db"):
        assert run_routers(lead_ids) == []
    assert open_by_rep() == {"heavy": 5, "light": 5}
    assert Counter(Assignment.objects.values_list("status", flat=True)) == {"assigned": 10, "waiting": 3 * ROUTERS - 10}
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]


def test_a_rep_reached_by_a_rep_rule_and_by_the_team_at_once_stops_at_the_cap():
    team = TeamFactory(name="Team", method=Team.Method.ROUND_ROBIN)
    capped = RepFactory(team=team, name="capped", max_open_leads=5)
    RepFactory(team=team, name="other")
    publish(fallback=team, rules=[{"condition": 'country = "US"', "action": Rule.Action.REP, "rep": capped}])
    lead_ids = [LeadFactory(country="US" if i % 2 else "FR").pk for i in range(4 * ROUTERS)]
    assert run_routers(lead_ids) == []
    assert open_by_rep()["capped"] == 5
    assert Assignment.objects.filter(status="assigned").count() == len(lead_ids)


def test_rolling_the_rule_set_back_and_forth_while_routing_never_deadlocks(caplog):
    """Routes fill capped reps and overflow to the fallback team (two team
    locks, then a rep's) while the live set is rolled back and forth every
    0.2 s between two versions whose rules name those teams and reps (a
    rollback inserts rows referencing them). The routers keep going until
    the last rollback (new leads first, then rerouting them), so every
    rollback meets routes. Nothing fails, nothing is even retried, and every
    lead has one current assignment."""
    fallback = TeamFactory(name="Fallback", method=Team.Method.ROUND_ROBIN)
    for i in range(3):
        RepFactory(team=fallback, name=f"f{i}")
    us = TeamFactory(name="US", method=Team.Method.WEIGHTED)
    for i in range(3):
        RepFactory(team=us, name=f"us{i}", weight=1 + i, max_open_leads=4)
    de = TeamFactory(name="DE")
    direct = RepFactory(team=de, name="direct", max_open_leads=6)
    RepFactory(team=de, name="de")
    rules = [{"condition": 'country = "US"', "team": us},
             {"condition": 'country = "DE"', "action": Rule.Action.REP, "rep": direct, "team": de}]
    v1 = publish(fallback=fallback, rules=rules)
    v2 = publish(fallback=fallback, rules=list(reversed(rules)))
    lead_ids = [LeadFactory(country=("US", "DE", "FR")[i % 3]).pk for i in range(120)]
    rounds, errors, stop = 15, [], threading.Event()
    passes = Counter()

    def roller():
        try:
            for i in range(rounds):
                services.rule_set_rollback(to=(v1, v2)[i % 2])
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()
            connections.close_all()

    def router(n: int, mine: list[int]):
        try:
            reroute = False
            while True:
                for lead_id in mine:
                    services.lead_route(lead_id=lead_id, trigger="api", reroute=reroute)
                passes[n] += 1
                if stop.is_set():
                    break
                reroute = True
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    with caplog.at_level(logging.WARNING, logger="martech.db"):
        threads = [threading.Thread(target=roller)] + [
            threading.Thread(target=router, args=(i, lead_ids[i::4])) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]  # no deadlock, not even retried
    assert all(passes[i] >= 2 for i in range(4))  # routing ran until the last rollback
    current = Counter(Assignment.objects.filter(is_current=True).values_list("lead_id", flat=True))
    assert len(current) == len(lead_ids) and set(current.values()) == {1}
    assert Assignment.objects.filter(is_current=True, status="assigned").count() == len(lead_ids)
    loads = open_by_rep()
    assert loads["direct"] <= 6 and all(loads[f"us{i}"] <= 4 for i in range(3))
    assert services.live_rule_set().version == 2 + rounds


def test_reps_edited_and_deactivated_while_routing_into_their_team_never_deadlock(caplog):
    """A rep saved through ``config_save`` (the admin and the API) locks the
    rep's team before the rep, as routes do; deactivating reroutes their
    open leads through that same team. Routers keep routing into the team
    meanwhile: nothing fails, nothing is retried."""
    from routing.models import Rep

    team = TeamFactory(name="Team", method=Team.Method.WEIGHTED)
    for i in range(3):
        RepFactory(team=team, name=f"r{i}", weight=1 + i, max_open_leads=1000)
    toggled = RepFactory(team=team, name="toggled", max_open_leads=1000)
    publish(fallback=team)
    lead_ids = [LeadFactory().pk for _ in range(160)]
    errors, stop = [], threading.Event()

    def editor():
        try:
            for i in range(12):
                rep = Rep.objects.get(pk=toggled.pk)
                services.config_save(instance=rep, data={"is_active": i % 2 == 1, "weight": 1 + i % 3})
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()
            connections.close_all()

    def router(mine: list[int]):
        try:
            reroute = False
            while True:
                for lead_id in mine:
                    services.lead_route(lead_id=lead_id, trigger="api", reroute=reroute)
                if stop.is_set():
                    break
                reroute = True
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    with caplog.at_level(logging.WARNING, logger="martech.db"):
        threads = [threading.Thread(target=editor)] + [
            threading.Thread(target=router, args=(lead_ids[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]
    current = Counter(Assignment.objects.filter(is_current=True).values_list("lead_id", flat=True))
    assert len(current) == len(lead_ids) and set(current.values()) == {1}
    # The last save left the rep active, after a deactivation that took all their leads away.
    assert Rep.objects.get(pk=toggled.pk).is_active
