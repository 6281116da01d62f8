"""Simulate a rule set over past leads, writing nothing.

Leads are matched to rules in memory (the same ``rule_match`` the live
route uses); within a team the rep is chosen by the team's method on an
in-memory copy of its fair queue; account-owner rules look the account up
as the live route does (``account_match``, reads only). Availability is taken as it is *now* for
what lasts (inactive, out of office); working hours, holidays and capacity
are not simulated: the leads arrived at other times, so this answers "how
would the rules split these leads", not "who would have been at their desk".
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
from routing.services import account_match, rule_match, rules_invalid, rules_of


def leads_for_simulation(*, days: int | None = 30, segment=None, created_from: datetime | None = None,
                         created_to: datetime | None = None) -> QuerySet[Lead]:
    """The leads of a segment (its members now), else those created in
    [created_from, created_to) when either is given, else in the last
    ``days`` days."""
    if segment is not None:
        from martech.scoring.selectors import segment_members

        return segment_members(segment).select_related("account")
    qs = Lead.objects.select_related("account")
    if created_from is not None or created_to is not None:
        if created_from is not None:
            qs = qs.filter(created_at__gte=created_from)
        if created_to is not None:
            qs = qs.filter(created_at__lt=created_to)
        return qs
    since = timezone.now() - timedelta(days=days or 30)
    return qs.filter(created_at__gte=since)


class _Run:
    def __init__(self, rule_set: RuleSet, now: datetime, teams: dict[int, Team], reps: dict[int, list[Rep]], away: set[int],
                 by_id: dict[int, Rep]):
        self.rule_set = rule_set
        self.by_id = by_id
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

    def _direct(self, rep: Rep | None) -> Rep | None:
        """``rep`` if available now, else their backup if available."""
        rep = self.by_id.get(rep.pk) if rep is not None else None  # as loaded now, not as cached with the rules
        for who in (rep, self.by_id.get(rep.backup_id) if rep is not None and rep.backup_id else None):
            if who is not None and who.is_active and who.pk not in self.away:
                return who
        return None

    def route(self, lead: Lead, account_owner: Rep | None) -> None:
        rule = rule_match(self.rules, lead, now=self.now)
        rule_name = rule.name if rule else "(fallback)"
        team_id, rep, status = None, None, "waiting"
        direct = None
        if rule is not None and rule.action == Rule.Action.REP:
            direct = self._direct(rule.rep)
        elif rule is not None and rule.action == Rule.Action.ACCOUNT_OWNER:
            direct = self._direct(account_owner)
        if rule is not None and rule.action == Rule.Action.NURTURE:
            status = "nurture"
        elif direct is not None:
            rep, team_id, status = direct, direct.team_id, "assigned"
        else:
            owner_team = account_owner.team_id if account_owner is not None else None
            rule_team = None
            if rule is not None:
                rule_team = rule.team_id or (rule.rep.team_id if rule.action == Rule.Action.REP else None) or \
                    (owner_team if rule.action == Rule.Action.ACCOUNT_OWNER else None)
            team_id = rule_team or self.rule_set.fallback_team_id
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
        self.outcomes[lead.pk] = (rule_name, team_name, status, rep.name if rep else "")

    def summary(self) -> dict[str, Any]:
        return {"rule_set": str(self.rule_set), "by_team": dict(self.by_team.most_common()),
                "by_rep": dict(self.by_rep.most_common()), "by_rule": dict(self.by_rule.most_common()),
                # Stored rules whose condition no longer parses: skipped, as the live route skips them.
                "invalid_rules": [{"rule": r.name, "reason": why} for r, why in rules_invalid(self.rules)]}


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
    all_reps = list(Rep.objects.order_by("id"))
    for rep in all_reps:
        if rep.team_id is not None:
            reps.setdefault(rep.team_id, []).append(rep)
    by_id = {rep.pk: rep for rep in all_reps}
    by_user = {rep.user_id: rep for rep in all_reps if rep.user_id}
    away = set(OutOfOffice.objects.filter(starts_at__lte=now, ends_at__gt=now).values_list("rep_id", flat=True))
    runs = [_Run(rule_set, now, teams, reps, away, by_id)]
    if compare_to is not None and compare_to.pk != rule_set.pk:
        runs.append(_Run(compare_to, now, teams, reps, away, by_id))
    owner_rules = any(r.action == Rule.Action.ACCOUNT_OWNER for run in runs for r in run.rules)
    count = 0
    labels: dict[int, str] = {}
    for lead in leads.order_by("created_at", "id")[:limit].iterator(chunk_size=2000):
        count += 1
        labels[lead.pk] = lead.email or ""
        owner = None
        if owner_rules:  # one account look-up per lead, shared by both runs
            account, _ = account_match(lead)
            owner = by_user.get(account.owner_id) if account is not None and account.owner_id else None
        for run in runs:
            run.route(lead, owner)
    result: dict[str, Any] = {"leads": count, "draft": runs[0].summary(), "published": None, "changed": None,
                              "moves": []}
    if len(runs) == 2:
        a, b = runs[0].outcomes, runs[1].outcomes
        # The leads that would move: from the live set's team/rep to this set's.
        result["moves"] = [
            {"lead_id": k, "email": labels[k], "from_team": b[k][1], "from_rep": b[k][3], "from_rule": b[k][0],
             "to_team": a[k][1], "to_rep": a[k][3], "to_rule": a[k][0], "to_status": a[k][2]}
            for k in a if (a[k][1], a[k][3], a[k][2]) != (b[k][1], b[k][3], b[k][2])
        ]
        result["published"] = runs[1].summary()
        result["changed"] = {
            "rule": sum(1 for k in a if a[k][0] != b[k][0]),
            "team": sum(1 for k in a if a[k][1] != b[k][1]),
        }
        teams_all = set(runs[0].by_team) | set(runs[1].by_team)
        result["team_delta"] = {t: runs[0].by_team[t] - runs[1].by_team[t] for t in sorted(teams_all)}
    return result


MOVE_COLUMNS = ("lead_id", "email", "from_team", "from_rep", "from_rule", "to_team", "to_rep", "to_rule", "to_status")


def moves_csv(result: dict[str, Any]) -> str:
    """The leads that would move, as CSV; every cell formula-safe
    (``martech.csvsafe``): emails, rule and rep names are typed by people."""
    import csv
    import io

    from martech.csvsafe import cell_escape

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(MOVE_COLUMNS)
    for row in result.get("moves") or []:
        writer.writerow([cell_escape(row[c]) for c in MOVE_COLUMNS])
    return out.getvalue()
