"""Routing a lead: rules, methods, fallbacks, waiting queue, triggers, audit."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from martech import hooks
from martech.models import Lead
from routing import services
from routing.models import Assignment, OutOfOffice, Rep, Rule, Team
from tests.factories import AccountFactory, LeadFactory, UserFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory, TerritoryFactory

pytestmark = pytest.mark.django_db
NOW = timezone.now()


def published(*, fallback=None, rules=()):
    rs = RuleSetFactory(fallback_team=fallback or TeamFactory(name="Fallback"))
    for i, kw in enumerate(rules):
        RuleFactory(rule_set=rs, order=i, **kw)
    return services.rule_set_publish(rule_set=rs)


def route(lead, **kw):
    kw.setdefault("trigger", Assignment.Trigger.API)
    return services.lead_route(lead_id=lead.pk, **kw)


def routed_reps(team, n):
    return [route(LeadFactory(), now=NOW)[0].rep.name for _ in range(n)]


def test_round_robin_takes_turns_and_skips_the_unavailable():
    team = TeamFactory(method=Team.Method.ROUND_ROBIN)
    a, b, c = (RepFactory(team=team, name=n) for n in "ABC")
    published(fallback=team)
    assert routed_reps(team, 6) == ["A", "B", "C", "A", "B", "C"]
    OutOfOffice.objects.create(rep=b, starts_at=NOW - timedelta(hours=1), ends_at=NOW + timedelta(hours=1))
    Rep.objects.filter(pk=c.pk).update(is_active=False)
    assignment, _ = route(LeadFactory(), now=NOW)
    assert assignment.rep == a
    reasons = {row["rep"]: row["skipped"] for row in assignment.explanation["steps"][1]["candidates"]}
    assert reasons == {"A": None, "B": "out_of_office", "C": "inactive"}


def test_weighted_round_robin_shares():
    team = TeamFactory(method=Team.Method.WEIGHTED)
    RepFactory(team=team, name="heavy", weight=3)
    RepFactory(team=team, name="light", weight=1)
    published(fallback=team)
    names = routed_reps(team, 40)
    assert names.count("heavy") == 30 and names.count("light") == 10


def test_capacity_skips_full_reps_then_waits_then_assigns():
    team = TeamFactory(method=Team.Method.CAPACITY)
    RepFactory(team=team, name="A", max_open_leads=1)
    b = RepFactory(team=team, name="B", max_open_leads=2)
    published(fallback=team)
    assert sorted(routed_reps(team, 3)) == ["A", "B", "B"]
    waiting, _ = route(LeadFactory(), now=NOW)
    assert waiting.status == Assignment.Status.WAITING and waiting.rep is None and waiting.team == team
    skipped = {row["rep"]: row["skipped"] for row in waiting.explanation["steps"][1]["candidates"]}
    assert skipped == {"A": "at_capacity", "B": "at_capacity"}
    assert services.waiting_assign(now=NOW) == 0  # still nobody
    b.max_open_leads = 3
    b.save()
    assert services.waiting_assign(now=NOW) == 1
    current = Assignment.objects.get(lead=waiting.lead, is_current=True)
    assert current.rep == b and current.trigger == Assignment.Trigger.WAITING
    assert Assignment.objects.filter(lead=waiting.lead).count() == 2  # the waiting row is kept
    assert services.waiting_assign(now=NOW) == 0  # a repeated run finds nothing


def test_daily_limit_counts_the_reps_local_day():
    team = TeamFactory(method=Team.Method.CAPACITY)
    RepFactory(team=team, name="A", max_per_day=1)
    published(fallback=team)
    assert route(LeadFactory(), now=NOW)[0].rep.name == "A"
    second, _ = route(LeadFactory(), now=NOW)
    assert second.status == Assignment.Status.WAITING
    assert services.waiting_assign(now=NOW + timedelta(days=1)) == 1


def test_least_loaded_picks_fewest_open():
    team = TeamFactory(method=Team.Method.LEAST_LOADED)
    a, b = RepFactory(team=team, name="A"), RepFactory(team=team, name="B")
    published(fallback=team)
    for _ in range(3):
        services.lead_route(lead_id=LeadFactory().pk, trigger="api", now=NOW)
    # A has 2, B has 1; move one of A's away by hand so B has more.
    Assignment.objects.filter(rep=a).update(rep=b)
    assert route(LeadFactory(), now=NOW)[0].rep == a


def test_everyone_out_falls_back_to_the_fallback_queue_then_waits():
    team = TeamFactory(name="EMEA")
    fallback = TeamFactory(name="Fallback")
    RepFactory(team=team, is_active=False)
    spare = RepFactory(team=fallback, name="Spare")
    territory = TerritoryFactory(countries=["DE"])
    published(fallback=fallback, rules=[dict(name="EMEA", territory=territory, action=Rule.Action.TEAM, team=team)])
    a, _ = route(LeadFactory(country="DE"), now=NOW)
    assert a.rep == spare and a.team == fallback and a.rule_name == "EMEA"
    assert [s["step"] for s in a.explanation["steps"]] == ["rule", "team", "fallback queue"]
    Rep.objects.filter(pk=spare.pk).update(is_active=False)
    b, _ = route(LeadFactory(country="DE"), now=NOW)
    assert b.status == Assignment.Status.WAITING and b.team == team


def test_rep_rule_falls_back_to_backup():
    team = TeamFactory()
    backup = RepFactory(team=team, name="Backup")
    star = RepFactory(team=team, name="Star", backup=backup)
    OutOfOffice.objects.create(rep=star, starts_at=NOW - timedelta(minutes=5), ends_at=NOW + timedelta(hours=3))
    published(fallback=team, rules=[dict(name="VIP", action=Rule.Action.REP, rep=star)])
    a, _ = route(LeadFactory(), now=NOW)
    assert a.rep == backup
    assert [s["step"] for s in a.explanation["steps"]] == ["rule", "rule rep", "backup rep"]


def test_account_owner_by_domain_then_company_name():
    owner_user = UserFactory(username="owner")
    team = TeamFactory()
    owner_rep = RepFactory(team=team, name="Owner", user=owner_user)
    RepFactory(team=team, name="Other")
    AccountFactory(name="Globex Corporation", domain="globex.example", owner=owner_user)
    published(fallback=team, rules=[dict(name="Owned accounts", action=Rule.Action.ACCOUNT_OWNER, team=team)])
    by_domain = Lead.objects.create(email="x@globex.example")  # no account linked
    a, _ = route(by_domain, now=NOW)
    assert a.rep == owner_rep and a.explanation["steps"][1]["matched_by"] == "domain"
    by_name = Lead.objects.create(email="y@gmail.com", company_name="GLOBEX, Inc.")
    b, _ = route(by_name, now=NOW)
    assert b.rep == owner_rep and b.explanation["steps"][1]["matched_by"] == "company_name"
    # The owner is set through lead_set_owner (the rep has a user).
    by_name.refresh_from_db()
    assert by_name.owner == owner_user


def test_first_match_wins_and_nurture_queue():
    team = TeamFactory()
    RepFactory(team=team)
    de = TerritoryFactory(countries=["DE"])
    published(fallback=team, rules=[
        dict(name="Students to nurture", territory=TerritoryFactory(countries=["DE"], postal_prefixes=["10"]),
             action=Rule.Action.NURTURE),
        dict(name="Germany", territory=de, action=Rule.Action.TEAM, team=team),
    ])
    n, _ = route(LeadFactory(country="DE", postal_code="10115"), now=NOW)
    assert n.status == Assignment.Status.NURTURE and n.rule_name == "Students to nurture" and n.rep is None
    g, _ = route(LeadFactory(country="DE", postal_code="80331"), now=NOW)
    assert g.status == Assignment.Status.ASSIGNED and g.rule_name == "Germany"
    assert g.rule_set_version == 1 and g.explanation["rule_set_version"] == 1


def test_second_route_is_a_noop_unless_reroute():
    team = TeamFactory()
    RepFactory(team=team, name="A")
    RepFactory(team=team, name="B")
    published(fallback=team)
    lead = LeadFactory()
    first, created = route(lead, now=NOW)
    again, created_again = route(lead, now=NOW)
    assert created and not created_again and again.pk == first.pk
    assert hooks.call("assign_owner", lead_id=lead.pk, reason="handoff") is True
    assert Assignment.objects.filter(lead=lead).count() == 1
    rerouted, _ = route(lead, now=NOW, reroute=True)
    assert rerouted.pk != first.pk and Assignment.objects.filter(lead=lead, is_current=True).get() == rerouted


def test_new_lead_trigger_routes_after_commit(django_capture_on_commit_callbacks):
    team = TeamFactory()
    RepFactory(team=team, name="A")
    published(fallback=team)
    from martech.services.leads import lead_upsert

    with django_capture_on_commit_callbacks(execute=True):
        lead, _ = lead_upsert(data={"email": "new@corp.example"}, source="test")
    a = Assignment.objects.get(lead=lead)
    assert a.trigger == Assignment.Trigger.NEW_LEAD and a.rep.name == "A"


def test_new_leads_of_a_bulk_write_are_routed_in_one_batch_after_commit(django_capture_on_commit_callbacks):
    # A CSV import's or a CRM pull's page (lead_upsert_many) announces its new
    # leads once (leads_created); routing takes them as one batch.
    team = TeamFactory()
    RepFactory(team=team, name="A")
    RepFactory(team=team, name="B")
    published(fallback=team)
    from martech.services.leads import LeadInput, lead_upsert_many

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = lead_upsert_many(rows=[LeadInput(cleaned={"email": f"bulk{i}@corp.example"}) for i in range(4)],
                                  source="import:test")
    # One rescoring request and one announcement for the four, not one per lead.
    assert len(callbacks) == 2
    assigned = Assignment.objects.filter(lead__in=result.leads, is_current=True)
    assert assigned.count() == 4
    assert {a.trigger for a in assigned} == {Assignment.Trigger.NEW_LEAD}
    assert Counter(a.rep.name for a in assigned) == {"A": 2, "B": 2}


def test_unrouted_sweep_routes_leads_missed_by_the_trigger():
    team = TeamFactory()
    RepFactory(team=team)
    published(fallback=team)
    lead = LeadFactory()
    assert services.unrouted_sweep() == 1
    assert Assignment.objects.filter(lead=lead).count() == 1
    assert services.unrouted_sweep() == 0


def test_deactivating_a_rep_reroutes_their_open_leads():
    team = TeamFactory()
    a = RepFactory(team=team, name="A")
    RepFactory(team=team, name="B")
    published(fallback=team)
    leads = [LeadFactory() for _ in range(4)]
    for lead in leads:
        route(lead, now=NOW)
    assert services.rep_deactivate(rep=a, now=NOW) == 2
    assert set(Assignment.objects.filter(is_current=True).values_list("rep__name", flat=True)) == {"B"}
    assert Assignment.objects.filter(trigger=Assignment.Trigger.DEACTIVATION).count() == 2


def test_preview_writes_nothing():
    team = TeamFactory()
    rep = RepFactory(team=team, name="A")
    published(fallback=team)
    lead = LeadFactory()
    before = (Team.objects.get(pk=team.pk).rr_clock, Rep.objects.get(pk=rep.pk).rr_pass)
    result = services.lead_preview(lead_id=lead.pk, now=NOW)
    assert result["result"] == {"status": "assigned", "rep_id": rep.pk, "rep": "A", "team_id": team.pk, "team": team.name}
    assert not Assignment.objects.exists()
    assert (Team.objects.get(pk=team.pk).rr_clock, Rep.objects.get(pk=rep.pk).rr_pass) == before


def test_crm_owner_id_provider():
    team = TeamFactory()
    RepFactory(team=team, hubspot_owner_id="hs-77", salesforce_user_id="005000000000001")
    published(fallback=team)
    lead = LeadFactory()
    assert hooks.call("crm_owner_id", lead_id=lead.pk, provider="hubspot") is None
    route(lead, now=NOW)
    assert hooks.call("crm_owner_id", lead_id=lead.pk, provider="hubspot") == "hs-77"
    assert hooks.call("crm_owner_id", lead_id=lead.pk, provider="salesforce") == "005000000000001"


def test_owner_push_runs_the_lead_hooks():
    seen = []

    def spy(*, ids, fields, created, source):
        seen.append((ids, set(fields), source))

    hooks.on_leads_changed(spy)
    try:
        team = TeamFactory()
        user = UserFactory(username="rep-user")
        RepFactory(team=team, user=user)
        published(fallback=team)
        lead = LeadFactory()
        route(lead, now=NOW)
    finally:
        hooks._lead_hooks.remove(spy)
    assert ([lead.pk], {"owner"}, "routing") in seen
    lead.refresh_from_db()
    assert lead.owner == user


def test_rep_without_user_clears_a_stale_owner():
    """The lead is no longer the old owner's: a rep with no Django user
    leaves Lead.owner empty (the CRM gets the rep's CRM id, test_crm_owner)."""
    team = TeamFactory()
    RepFactory(team=team)
    published(fallback=team)
    other = UserFactory(username="old-owner")
    lead = LeadFactory(owner=other)
    route(lead, now=NOW)
    lead.refresh_from_db()
    assert lead.owner is None


def test_no_published_rule_set_is_a_clear_error():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as exc:
        route(LeadFactory(), now=NOW)
    assert "rule_set" in exc.value.message_dict


def test_batch_routing_matches_one_by_one_decisions():
    heavy_team = TeamFactory(name="W", method=Team.Method.WEIGHTED)
    RepFactory(team=heavy_team, name="x3", weight=3)
    RepFactory(team=heavy_team, name="x1", weight=1)
    cap = TeamFactory(name="Cap", method=Team.Method.CAPACITY)
    RepFactory(team=cap, name="c1", max_open_leads=2)
    fallback = TeamFactory(name="Fallback")
    RepFactory(team=fallback, name="spare")
    de = TerritoryFactory(countries=["DE"])
    fr = TerritoryFactory(countries=["FR"])
    published(fallback=fallback, rules=[
        dict(name="DE", territory=de, action=Rule.Action.TEAM, team=heavy_team),
        dict(name="FR", territory=fr, action=Rule.Action.TEAM, team=cap),
    ])
    already = LeadFactory(country="DE")
    route(already, now=NOW)  # x3 has one
    leads = [LeadFactory(country="DE") for _ in range(7)] + [LeadFactory(country="FR") for _ in range(3)]
    counts = services.leads_route_batch(lead_ids=[already.pk] + [l.pk for l in leads], trigger="api", now=NOW)
    assert counts == {"kept": 1, "assigned": 10}
    names = Counter(Assignment.objects.filter(is_current=True).values_list("rep__name", flat=True))
    assert names == {"x3": 6, "x1": 2, "c1": 2, "spare": 1}
    third_fr = Assignment.objects.get(lead=leads[-1])
    assert [s["step"] for s in third_fr.explanation["steps"]] == ["rule", "team", "fallback queue"]
    assert third_fr.explanation["steps"][1]["candidates"][0]["skipped"] == "at_capacity"
    assert Assignment.objects.filter(lead=already).count() == 1


def test_a_rep_becoming_eligible_wakes_the_waiting_queue_in_the_background(django_capture_on_commit_callbacks,
                                                                            monkeypatch):
    team = TeamFactory()
    rep = RepFactory(team=team)
    published(fallback=team)
    Rep.objects.filter(pk=rep.pk).update(is_active=False)
    waiting, _ = route(LeadFactory())
    assert waiting.status == Assignment.Status.WAITING
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: queued.append(func))
    with django_capture_on_commit_callbacks(execute=True):
        services.config_save(instance=Rep.objects.get(pk=rep.pk), data={"is_active": True})
    # Enqueued after commit, not run in the request: the lead still waits.
    assert queued == ["routing.tasks.assign_waiting"]
    assert Assignment.objects.get(lead=waiting.lead, is_current=True).status == Assignment.Status.WAITING
    from routing import tasks

    assert tasks.assign_waiting() == 1
    assert Assignment.objects.get(lead=waiting.lead, is_current=True).rep == rep


def test_rule_conditions_use_the_shared_language():
    from django.core.exceptions import ValidationError

    from routing.models import RuleSet

    team, hot = TeamFactory(name="Default"), TeamFactory(name="Hot")
    RepFactory(team=team, name="cold-rep")
    RepFactory(team=hot, name="hot-rep")
    draft = RuleSetFactory(fallback_team=team)
    bad = Rule(rule_set=draft, name="bad", condition="score >>= 5", action=Rule.Action.TEAM, team=hot)
    with pytest.raises(ValidationError) as exc:
        bad.full_clean()
    assert exc.value.message_dict["condition"][0].startswith("column ")
    RuleFactory(rule_set=draft, name="Hot US", condition='score >= 80 and country in ("US", "CA")',
                territory=TerritoryFactory(countries=["US", "CA", "DE"]), action=Rule.Action.TEAM, team=hot)
    services.rule_set_publish(rule_set=RuleSet.objects.get(pk=draft.pk))
    a, _ = route(LeadFactory(country="CA", total_score=90), now=NOW)
    b, _ = route(LeadFactory(country="DE", total_score=90), now=NOW)  # territory yes, condition no
    c, _ = route(LeadFactory(country="US", total_score=10), now=NOW)
    assert (a.rep.name, a.rule_name) == ("hot-rep", "Hot US")
    assert b.rule_name == "" and b.rep.name == "cold-rep" and c.rep.name == "cold-rep"
    # The same rule compiled to SQL counts the same leads as matched in memory.
    rule = Rule.objects.get(name="Hot US")
    assert list(Lead.objects.filter(services.rule_lead_q(rule)).values_list("pk", flat=True)) == [a.lead_id]


def test_stage_change_trigger_routes_an_unassigned_lead(django_capture_on_commit_callbacks, settings):
    """A lead entering a ROUTE_ON_STAGES stage (the lifecycle signal) is routed."""
    from martech.services.leads import lead_change_stage

    settings.MARTECH_ROUTING = {**settings.MARTECH_ROUTING, "ROUTE_NEW_LEADS": False, "ROUTE_ON_STAGES": ["mql"]}
    team = TeamFactory()
    rep = RepFactory(team=team)
    published(fallback=team)
    with django_capture_on_commit_callbacks(execute=True):
        lead = LeadFactory()
    assert not Assignment.objects.filter(lead=lead).exists()
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="mql", reason="score crossed 50")
    a = Assignment.objects.get(lead=lead, is_current=True)
    assert a.rep == rep and a.trigger == Assignment.Trigger.STAGE and a.reason == "stage changed to mql"
