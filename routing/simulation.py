"""Simulate a rule set over past leads, writing nothing.

Leads are matched to rules in memory (the same ``rule_match`` the live
route uses); within a team the rep is chosen by the team's method on an
in-memory copy of its fair queue. Availability is taken as it is *now*
(inactive, out of office, hours, holidays) and capacity is not simulated:
historical leads arrived at other times, so this answers "how would the
rules split these leads", not "who would have been at their desk".
"""
from __future__ import annotations

import copy
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from martech.models import Lead
from routing import engine
from routing.models import OutOfOffice, Rep, Rule, RuleSet, Team
from routing.services import rule_match, rules_of


def leads_for_simulation(*, days: int | None = 30, segment=None) -> QuerySet[Lead]:
    if segment is not None:
        from martech.scoring.selectors import segment_members  # issue 4; only when it has landed

        return segment_members(segment).select_related("account")
    since = timezone.now() - timedelta(days=days or 30)
    return Lead.objects.filter(created_at__gte=since).select_related("account")


class _Run:
    def __init__(self, rule_set: RuleSet, now: datetime, teams: dict[int, Team], reps: dict[int, list[Rep]], away: set[int]):
        self.rule_set = rule_set
        self.rules = rules_of(rule_set)
        self.now = now
        self.teams = {pk: copy.copy(t) for pk, t in teams.items()}
        self.reps = {pk: [copy.copy(r) for r in rs] for pk, rs in reps.items()}
        self.away = away
        self.by_team: Counter = Counter()
        self.by_rep: Counter = Counter()
        self.by_rule: Counter = Counter()
        self.outcomes: dict[int, tuple] = {}

    def _pick(self, team_id: int | None) -> Rep | None:
        team = self.teams.get(team_id)
        if team is None or not team.is_active:
            return None
        cands = []
        for rep in self.reps.get(team_id, []):
            c = engine.Candidate(rep=rep)
            c.skipped = engine.INACTIVE if not rep.is_active else (engine.OUT_OF_OFFICE if rep.pk in self.away else None)
            cands.append(c)
        pick = engine.choose(team, cands)
        if pick.rep is not None:
            team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
        return pick.rep

    def route(self, lead: Lead) -> None:
        rule = rule_match(self.rules, lead, now=self.now)
        rule_name = rule.name if rule else "(fallback)"
        team_id, rep, status = None, None, "waiting"
        if rule is not None and rule.action == Rule.Action.NURTURE:
            status = "nurture"
        elif rule is not None and rule.action == Rule.Action.REP and rule.rep.is_active and rule.rep_id not in self.away:
            rep, team_id, status = rule.rep, rule.rep.team_id, "assigned"
        else:
            team_id = (rule.team_id if rule else None) or self.rule_set.fallback_team_id
            rep = self._pick(team_id)
            if rep is None and team_id != self.rule_set.fallback_team_id:
                team_id = self.rule_set.fallback_team_id
                rep = self._pick(team_id)
            status = "assigned" if rep else "waiting"
        team_name = self.teams[team_id].name if team_id in self.teams else "-"
        self.by_team[team_name if status != "nurture" else "(nurture)"] += 1
        self.by_rule[rule_name] += 1
        if rep:
            self.by_rep[rep.name] += 1
        self.outcomes[lead.pk] = (rule_name, team_name, status)

    def summary(self) -> dict[str, Any]:
        return {"rule_set": str(self.rule_set), "by_team": dict(self.by_team.most_common()),
                "by_rep": dict(self.by_rep.most_common()), "by_rule": dict(self.by_rule.most_common())}


def rule_set_simulate(*, rule_set: RuleSet, leads: QuerySet[Lead], compare_to: RuleSet | None = None,
                      limit: int = 50_000) -> dict[str, Any]:
    """Distribution of ``leads`` under ``rule_set`` (and ``compare_to``, by
    default the live set) by team, rep and rule, and how many leads would
    change rule or team. Reads only."""
    if compare_to is None:
        compare_to = RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).order_by("-version").first()
    now = timezone.now()
    teams = {t.pk: t for t in Team.objects.all()}
    reps: dict[int, list[Rep]] = {}
    for rep in Rep.objects.filter(team__isnull=False).order_by("id"):
        reps.setdefault(rep.team_id, []).append(rep)
    away = set(OutOfOffice.objects.filter(starts_at__lte=now, ends_at__gt=now).values_list("rep_id", flat=True))
    runs = [_Run(rule_set, now, teams, reps, away)]
    if compare_to is not None and compare_to.pk != rule_set.pk:
        runs.append(_Run(compare_to, now, teams, reps, away))
    count = 0
    for lead in leads.order_by("created_at", "id")[:limit].iterator(chunk_size=2000):
        count += 1
        for run in runs:
            run.route(lead)
    result: dict[str, Any] = {"leads": count, "draft": runs[0].summary(), "published": None, "changed": None}
    if len(runs) == 2:
        a, b = runs[0].outcomes, runs[1].outcomes
        result["published"] = runs[1].summary()
        result["changed"] = {
            "rule": sum(1 for k in a if a[k][0] != b[k][0]),
            "team": sum(1 for k in a if a[k][1] != b[k][1]),
        }
        teams_all = set(runs[0].by_team) | set(runs[1].by_team)
        result["team_delta"] = {t: runs[0].by_team[t] - runs[1].by_team[t] for t in sorted(teams_all)}
    return result
