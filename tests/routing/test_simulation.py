"""Simulating a draft over a segment (issue 5, item 8): the distribution by
team and rep, the difference from the live set, and nothing written."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from martech.models import Lead, SalesTask
from martech.scoring.services import segment_save
from routing import services
from routing.models import Assignment, Escalation, OutOfOffice, Rep, Rule, RuleSet, Team
from routing.simulation import leads_for_simulation, rule_set_simulate
from tests.factories import AccountFactory, LeadFactory, UserFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    us = TeamFactory(name="US")
    de = TeamFactory(name="DE", method=Team.Method.WEIGHTED)
    named = TeamFactory(name="Named")
    RepFactory(team=us, name="Ann")
    RepFactory(team=us, name="Al")
    RepFactory(team=de, name="Dirk", weight=3)
    RepFactory(team=de, name="Dora", weight=1)
    away = RepFactory(team=de, name="Dana", weight=5)  # out of office now: never chosen
    OutOfOffice.objects.create(rep=away, starts_at=timezone.now() - timedelta(hours=1),
                               ends_at=timezone.now() + timedelta(hours=3))
    owner_user = UserFactory(username="olga")
    RepFactory(team=named, name="Olga", user=owner_user)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=us))  # v1: everything to US
    draft = services.rule_set_copy(source=services.live_rule_set())
    RuleFactory(rule_set=draft, name="Named accounts", order=1, condition="account is not empty",
                action=Rule.Action.ACCOUNT_OWNER)
    RuleFactory(rule_set=draft, name="Germany", order=2, territory=TerritoryFactory(countries=["DE"]), team=de)
    segment = segment_save(name="VPs", condition='job_title contains "vp"')
    inside = [LeadFactory(country="DE", job_title="VP Sales") for _ in range(4)]
    inside += [LeadFactory(country="US", job_title="VP Marketing") for _ in range(2)]
    inside.append(LeadFactory(country="US", job_title="VP Ops", account=AccountFactory(owner=owner_user)))
    outside = [LeadFactory(country="DE", job_title="Intern") for _ in range(5)]
    return {"draft": draft, "segment": segment, "inside": inside, "outside": outside}


def _state():
    """Everything a route could write."""
    return (
        {m.__name__: m.objects.count() for m in (Assignment, Escalation, SalesTask, Lead, Rule, RuleSet, Rep, Team)},
        list(Team.objects.order_by("id").values_list("rr_clock", flat=True)),
        list(Rep.objects.order_by("id").values_list("rr_pass", flat=True)),
        list(Lead.objects.order_by("id").values_list("owner_id", "updated_at")),
    )


def test_segment_simulation_distribution_difference_and_no_writes(world):
    before = _state()
    with CaptureQueriesContext(connection) as ctx:
        result = rule_set_simulate(rule_set=world["draft"], leads=leads_for_simulation(segment=world["segment"]))
    # Reads only: SELECTs, and on PostgreSQL the server-side cursor the
    # lead iterator declares over a SELECT.
    kinds = {q["sql"].lstrip().split()[0].upper() for q in ctx.captured_queries}
    assert kinds <= {"SELECT", "DECLARE"} and "SELECT" in kinds, kinds
    declares = [q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("DECLARE")]
    assert all(" CURSOR " in d and " FOR SELECT " in d for d in declares), declares
    assert _state() == before
    # Only the segment's 7 leads; the 5 German interns are outside it.
    assert result["leads"] == 7
    assert result["draft"]["by_team"] == {"DE": 4, "US": 2, "Named": 1}
    assert result["draft"]["by_rep"] == {"Dirk": 3, "Ann": 1, "Al": 1, "Dora": 1, "Olga": 1}
    assert result["draft"]["by_rule"] == {"Germany": 4, "(fallback)": 2, "Named accounts": 1}
    assert result["published"]["by_team"] == {"US": 7}
    assert result["published"]["by_rep"] == {"Ann": 4, "Al": 3}
    assert result["changed"] == {"rule": 5, "team": 5}
    assert result["team_delta"] == {"DE": 4, "Named": 1, "US": -5}


def test_segment_simulation_queries_do_not_grow_with_leads(world):
    def count():
        with CaptureQueriesContext(connection) as ctx:
            rule_set_simulate(rule_set=world["draft"], leads=leads_for_simulation(segment=world["segment"]))
        return len(ctx.captured_queries)

    first = count()
    for _ in range(10):
        LeadFactory(country="DE", job_title="VP Sales")
    # The account-owner rule looks each lead's account up (a lead without a
    # linked account: the email domain, then the company name); the rest is fixed.
    assert count() <= first + 10 * 2


def test_admin_simulate_over_a_segment(client, sales_ops, analyst, world):
    url = reverse("admin:routing_ruleset_simulate", args=[world["draft"].pk])
    client.force_login(sales_ops)
    page = client.get(url, {"segment": world["segment"].pk}).content.decode()
    assert 'id="simulation-result"' in page and "<h2>7 lead(s)</h2>" in page
    assert '<tr class="sim-team"><td>DE</td><td>4</td><td>0</td><td>+4</td></tr>' in page
    assert '<tr class="sim-team"><td>US</td><td>2</td><td>7</td><td>-5</td></tr>' in page
    # Neither a segment nor days: a clear error, no result.
    page = client.get(url, {"days": ""}).content.decode()
    assert "Give a number of days or choose a segment." in page and "simulation-result" not in page
    # The last N days still works: all 12 leads.
    assert "<h2>12 lead(s)</h2>" in client.get(url, {"days": 30}).content.decode()
    # Simulating reads only: an analyst (view permission) may run it too.
    client.force_login(analyst)
    assert "<h2>7 lead(s)</h2>" in client.get(url, {"segment": world["segment"].pk}).content.decode()
    assert not Assignment.objects.exists()
