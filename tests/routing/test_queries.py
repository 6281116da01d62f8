"""Query counts of the hot paths (issue 5, performance): a route is a fixed
number of queries whatever the team size; a batch is a fixed number per
team whatever the number of leads."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from routing import services
from routing.models import Assignment, OutOfOffice, Team
from tests.factories import LeadFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db


def _sql(ctx) -> list[str]:
    # Savepoints are the test's transaction wrapping, not the route's work.
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE"))]


def _team(n_reps: int, name: str) -> Team:
    team = TeamFactory(name=name, method=Team.Method.WEIGHTED)
    for i in range(n_reps):
        rep = RepFactory(team=team, weight=1 + i % 3, working_hours={"mon": [["09:00", "17:00"]]} if i % 2 else {})
        if i % 4 == 0:
            OutOfOffice.objects.create(rep=rep, starts_at=timezone.now() + timedelta(days=1),
                                       ends_at=timezone.now() + timedelta(days=2))
    return team


@pytest.mark.parametrize("n_reps", [3, 40])
def test_one_route_is_a_fixed_number_of_queries(n_reps):
    team = _team(n_reps, "T")
    draft = RuleSetFactory(fallback_team=team)
    for _ in range(30):  # rules that do not match: matched in memory, no queries
        RuleFactory(rule_set=draft, territory=TerritoryFactory(countries=["ZZ"]), team=team)
    services.rule_set_publish(rule_set=draft)
    services.lead_route(lead_id=LeadFactory().pk, trigger="api")  # warm the per-process caches
    lead, other = LeadFactory(country="US"), LeadFactory()
    with CaptureQueriesContext(connection) as ctx:
        a, created = services.lead_route(lead_id=lead.pk, trigger="api")
    assert created and a.rep is not None
    sql = _sql(ctx)
    # PostgreSQL: lead (+ live rule-set id), current assignment, team lock
    # (+ its SLA policy), reps (+ their absences), then both fair-queue
    # positions and the insert as one statement.
    # SQLite: absences, the two position updates and the insert are separate.
    assert len(sql) == (5 if connection.vendor == "postgresql" else 8), sql
    if connection.vendor == "postgresql":
        assert sql[-1].startswith("WITH t AS (UPDATE") and "INSERT INTO" in sql[-1], sql[-1]
    a.rep.refresh_from_db()
    assert a.rep.rr_pass > 0  # the chosen rep's fair-queue position was written with the insert
    assert Assignment.objects.get(pk=a.pk).explanation == a.explanation
    with CaptureQueriesContext(connection) as ctx:
        services.lead_preview(lead_id=other.pk)
    # lead (+ live set id), team, reps (+ absences on PostgreSQL).
    assert len(_sql(ctx)) == (3 if connection.vendor == "postgresql" else 4), _sql(ctx)


@pytest.mark.parametrize("n_leads", [10, 120])
def test_a_batch_is_a_fixed_number_of_queries_per_team(n_leads):
    us, de = _team(5, "US"), _team(5, "DE")
    draft = RuleSetFactory(fallback_team=us)
    RuleFactory(rule_set=draft, name="Germany", territory=TerritoryFactory(countries=["DE"]), team=de)
    services.rule_set_publish(rule_set=draft)
    ids = [LeadFactory(country="DE" if i % 2 else "US").pk for i in range(n_leads)]
    services.rules_of(services.live_rule_set())  # the published set and its rules, cached per process
    now = timezone.now().replace(microsecond=123456)
    with CaptureQueriesContext(connection) as ctx:
        counts = services.leads_route_batch(lead_ids=ids, trigger="api", now=now)
    assert counts["assigned"] == n_leads
    # The rows as the ORM reads them back: JSON explanation, exact times.
    a = Assignment.objects.get(lead_id=ids[1])
    assert a.team == de and a.is_current and a.created_at == a.assigned_at == now and a.escalation_level == 0
    assert a.explanation["result"]["team"] == "DE" and a.explanation["steps"][0]["matched"] == "Germany"
    assert [c["skipped"] for c in a.explanation["steps"][1]["candidates"]].count(None) >= 1
    # configuration token, live set, leads, taken, every team's lock (one
    # statement, PostgreSQL); per team: read, reps (+ absences). PostgreSQL:
    # the teams' clocks and reps' positions ride on the one insert statement
    # (batches of 1000). SQLite: absences, a clock update per team, the rep
    # positions, then several inserts (its limit on parameters per statement).
    pg = connection.vendor == "postgresql"
    sql = _sql(ctx)
    inserts = [q for q in sql if q.startswith("INSERT") or q.startswith("WITH t AS")]
    assert len(sql) - len(inserts) == (5 + 2 * 2 if pg else 4 + 2 * 4 + 1), "\n".join(q[:90] for q in sql)
    if pg:
        assert len(inserts) == 1 and "unnest" in inserts[0]
    # The fair queue positions were written: from a fresh start each pick
    # advances the chosen rep's pass by 1/weight, so pass * weight summed
    # over a team's reps is the number of leads the team was given.
    for team in (us, de):
        given = Assignment.objects.filter(lead_id__in=ids, team=team).count()
        assert given and sum(r.rr_pass * r.weight for r in team.reps.all()) == pytest.approx(given)
