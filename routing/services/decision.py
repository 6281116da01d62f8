"""The decision step: which rep (or queue) a lead goes to, and why, with the
team and rep row locks a committing route takes (the lock order is in
``routing.services``). ``decide`` (one lead) and ``leads_route_batch`` (many)
record a team's pick through the same steps."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Subquery

from martech.models import Account, Lead
from routing import engine
from routing.models import Assignment, Rep, Rule, RuleSet, Team
from routing.services.config import _live_pk_query, rules_of
from routing.services.prepared import _SENTINEL_ID, _prepared
from routing.services.rules import _skipped_steps, rule_match
from routing.services.selectors import RepRow, _absences, account_match, has_cap, rep_loads, team_reps

Status = Assignment.Status


# --- Choosing a rep ---------------------------------------------------------------


@dataclass
class Decision:
    status: str
    rep: Rep | None = None
    team: Team | None = None
    rule: Rule | None = None
    rule_set: RuleSet | None = None
    method: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    # fair-queue updates to write when committing: (team, clock), (rep, pass)
    updates: list[tuple[Team, float, Rep, float]] = field(default_factory=list)
    # The chosen rep's out-of-office periods not yet over (the SLA deadline skips them).
    absences: list[tuple[datetime, datetime]] | None = None

    def explanation(self) -> dict[str, Any]:
        return {
            "rule_set_version": self.rule_set.version if self.rule_set else None,
            "rule_set_id": self.rule_set.pk if self.rule_set else None,
            "rule": self.rule.name if self.rule else None,
            "rule_id": self.rule.pk if self.rule else None,
            "method": self.method,
            "steps": self.steps,
            "result": {
                "status": self.status,
                "rep_id": self.rep.pk if self.rep else None,
                "rep": self.rep.name if self.rep else None,
                "team_id": self.team.pk if self.team else None,
                "team": self.team.name if self.team else None,
            },
        }


_LOCK_REPS_PG = f'SELECT "id" FROM "{Rep._meta.db_table}" WHERE "id" = ANY(%s::bigint[]) ORDER BY "id" FOR NO KEY UPDATE'


def _lock_reps(ids) -> None:
    """Lock rep rows (ascending id) before counting their load. FOR NO KEY
    UPDATE, like the team lock: it does not block the foreign-key checks of
    rows that reference the rep (a rule copied by a rollback, an assignment)."""
    if ids and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_REPS_PG, [sorted(ids)])


_batch = threading.local()  # .reps: the rep ids the running batch has locked
_HOLD_PG = (f'SAVEPOINT routing_rep_hold; '
            f'SELECT "id" FROM "{Rep._meta.db_table}" WHERE "id" = %s FOR NO KEY UPDATE')


def _hold(candidate: engine.Candidate, now: datetime) -> bool:
    """A capped rep chosen for a lead: lock their row, count again (another
    route may have committed one since the unlocked count) and keep the lock
    when they still have room. Every path that assigns to a capped rep goes
    through here, so concurrent routes take turns on the rep's count.

    The lock is taken in a savepoint and let go (rolled back to) when the
    rep is full, so a route holds at most ONE rep lock, its last lock: after
    it only the writes follow, never a wait for a team (docs/architecture.md,
    "Write paths"). The savepoint is set with the lock (one
    round trip) and, when kept, ends with the transaction."""
    rep = candidate.rep
    if not has_cap(rep):
        return True
    # Batch routing locked its capped reps up front: count again, no savepoint
    # (one per lead would nest hundreds of subtransactions).
    pg = connection.vendor == "postgresql" and rep.pk not in getattr(_batch, "reps", ())
    if pg:
        with connection.cursor() as cursor:
            cursor.execute(_HOLD_PG, [rep.pk])
    candidate.open_count, candidate.today_count = rep_loads([rep], now)[rep.pk]
    reason = engine.capacity_reason(rep, open_count=candidate.open_count, today_count=candidate.today_count)
    if reason is None:
        return True
    if pg:
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK TO SAVEPOINT routing_rep_hold")
    candidate.skipped = reason
    return False


def _candidates(reps: list, now: datetime, *, team_id: int | None = None,
                loads: dict[int, tuple[int, int]] | None = None) -> list[engine.Candidate]:
    """Every rep with why they are skipped (availability, then capacity:
    every method skips reps at capacity, so weights and caps combine)."""
    if reps and all(type(r) is RepRow and r.away is not None for r in reps):
        absences = {r.pk: r.away for r in reps}  # loaded with the reps
    else:
        absences = _absences([r.pk for r in reps], now, team_id=team_id)
    if loads is None:
        loads = rep_loads(reps, now)
    out = []
    local = engine.local_times(now)
    unavailable, Candidate, no_absence, capacity = engine.unavailable_reason, engine.Candidate, [], engine.capacity_reason
    for rep in reps:
        pk = rep.pk
        away = absences.get(pk, no_absence)
        open_count, today = loads.get(pk, (0, 0))
        c = Candidate(rep, unavailable(rep, now, away, local[rep.time_zone]), open_count, today,
                      away if away is not no_absence else [])
        if c.skipped is None and pk in loads:
            c.skipped = capacity(rep, open_count=open_count, today_count=today)
        out.append(c)
    return out


def _team_read(team_id: int, *, lock: bool) -> Team:
    def build():
        # FOR NO KEY UPDATE: the clock is not a key, and a FOR UPDATE lock
        # would block every foreign-key check on the team (a rollback
        # copying rules that name it) while the route waits for others.
        qs = Team.objects.select_for_update(of=("self",), no_key=True) if lock else Team.objects.all()
        return qs.select_related("sla_policy").filter(pk=_SENTINEL_ID)
    [(team, _)] = _prepared("team" + (":lock" if lock else ""), build).objects(team_id)
    return team


# One statement; rows are locked in the ORDER BY's order: ascending id, the fallback team last.
_LOCK_TEAMS_PG = (f'SELECT "id" FROM "{Team._meta.db_table}" WHERE "id" = ANY(%s::bigint[]) '
                  f'ORDER BY ("id" = %s), "id" FOR NO KEY UPDATE')


def _lock_teams(ids, *, fallback_id: int | None) -> None:
    """Several team rows in the one order: ascending id, the fallback team last."""
    if connection.vendor != "postgresql" or not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_TEAMS_PG, [sorted(ids), fallback_id or 0])


def pick_record(decision: Decision, team: Team, pick: engine.Pick, chosen: engine.Candidate | None, *, why: str,
                candidates: list[dict[str, Any]]) -> bool:
    """The decision step for one team: its pick (``engine.choose``) and the
    candidates it chose from (as JSON) recorded on ``decision``; the rep
    assigned when there is one. True when assigned. ``decide`` and
    ``leads_route_batch`` both record a team's pick here."""
    decision.steps.append({
        "step": why, "team": team.name, "team_id": team.pk, "method": team.method, "candidates": candidates,
        "outcome": f"chose {pick.rep.name}" if pick.rep else "nobody eligible",
    })
    decision.method = decision.method or team.method
    if pick.rep is None:
        return False
    decision.status, decision.rep, decision.team, decision.method = Status.ASSIGNED, pick.rep, team, team.method
    decision.absences = chosen.absences
    return True


def decision_wait(decision: Decision, team: Team | None) -> None:
    """Nobody eligible in the lead's team nor the fallback queue: the lead
    waits in ``team``'s queue (``queue.waiting_assign`` tries it again)."""
    decision.status, decision.rep, decision.team = Status.WAITING, None, team
    decision.steps.append({"step": "waiting", "team": team.name if team else None,
                           "outcome": "waiting until someone is eligible"})


def teams_in_turn(team: Team | None, fallback: Team | None) -> list[tuple[Team, str]]:
    """The teams a lead is offered to, in turn, each once: its team (the
    rule's, the rep's), then the fallback queue."""
    out: list[tuple[Team, str]] = []
    for candidate, why in ((team, "team"), (fallback, "fallback queue")):
        if candidate is not None and all(candidate.pk != t.pk for t, _ in out):
            out.append((candidate, why))
    return out


def decision_start(*, rule_set: RuleSet, rules: list[Rule], rule: Rule | None) -> Decision:
    """A decision's first steps: the rules skipped (their condition does not
    parse) and the rule matched. A nurture rule decides it at once."""
    decision = Decision(status=Status.WAITING, rule_set=rule_set, rule=rule, steps=_skipped_steps(rules))
    decision.steps.append({"step": "rule", "matched": rule.name if rule else None,
                           "action": rule.action if rule else "fallback"})
    if rule is not None and rule.action == Rule.Action.NURTURE:
        decision.status, decision.method = Status.NURTURE, "nurture"
    return decision


def account_owner_rep(lead: Lead) -> tuple[Account | None, str, Rep | None]:
    """The lead's account (``account_match``: linked, by domain or by
    company name), how it was found, and the rep who is its owner."""
    account, how = account_match(lead)
    owner_rep = Rep.objects.filter(user_id=account.owner_id).select_related("team", "backup").first() \
        if account and account.owner_id else None
    return account, how, owner_rep


def _try_team(decision: Decision, team: Team, now: datetime, *, lock: bool, why: str, exclude: set[int]) -> bool:
    # Re-read (and, committing, lock) the team: its clock is the round-robin pointer.
    team = _team_read(team.pk, lock=lock)
    if not team.is_active:
        decision.steps.append({"step": why, "team": team.name, "outcome": "team inactive"})
        return False
    reps = [r for r in team_reps(team.pk, now) if r.pk not in exclude]
    candidates = _candidates(reps, now, team_id=None if exclude else team.pk,
                             loads=rep_loads(reps, now, everyone=team.method == Team.Method.LEAST_LOADED))
    while True:
        pick = engine.choose(team, candidates)
        chosen = next((c for c in candidates if c.rep is pick.rep), None)
        # Committing: a capped pick is counted again under the rep's lock;
        # full by now, the next rep in the queue is tried.
        if chosen is None or not lock or _hold(chosen, now):
            break
    if not pick_record(decision, team, pick, chosen, why=why, candidates=[c.as_json() for c in candidates]):
        return False
    decision.updates.append((team, pick.team_clock, pick.rep, pick.rep_pass))
    return True


def _try_rep(decision: Decision, rep: Rep, now: datetime, *, why: str, exclude: set[int], lock: bool = False) -> bool:
    if rep.pk in exclude:
        decision.steps.append({"step": why, "rep": rep.name, "outcome": "excluded"})
        return False
    [candidate] = _candidates([rep], now)
    if candidate.skipped is None and lock:
        _hold(candidate, now)
    decision.steps.append({"step": why, "candidates": [candidate.as_json()],
                           "outcome": f"chose {rep.name}" if candidate.skipped is None else "unavailable"})
    if candidate.skipped is None:
        decision.status, decision.rep, decision.team = Status.ASSIGNED, rep, rep.team
        decision.absences = candidate.absences
        decision.method = decision.method or "direct"
        return True
    return False


def decide(
    *, lead: Lead, rule_set: RuleSet | None, now: datetime, lock: bool, exclude: set[int] | None = None,
    rules: list[Rule] | None = None,
) -> Decision:
    """Which rep (or queue) ``lead`` goes to, and why. ``lock`` takes the
    team row locks a committing route needs; a preview passes False and
    writes nothing. ``exclude`` keeps reps out (a reassignment)."""
    exclude = exclude or set()
    if rule_set is None:
        raise ValidationError({"rule_set": ["No routing rule set is published yet."]})
    rules = rules if rules is not None else rules_of(rule_set)
    rule = rule_match(rules, lead, now=now)
    decision = decision_start(rule_set=rule_set, rules=rules, rule=rule)
    if decision.status == Status.NURTURE:
        return decision
    fallback = rule_set.fallback_team
    waiting_team = fallback
    if rule is not None and rule.action == Rule.Action.REP:
        if _try_rep(decision, rule.rep, now, why="rule rep", exclude=exclude, lock=lock):
            return decision
        if rule.rep.backup_id and _try_rep(decision, rule.rep.backup, now, why="backup rep", exclude=exclude, lock=lock):
            return decision
        waiting_team = rule.team or rule.rep.team or fallback
    elif rule is not None and rule.action == Rule.Action.ACCOUNT_OWNER:
        account, how, owner_rep = account_owner_rep(lead)
        decision.steps.append({"step": "account", "account": account.name if account else None, "matched_by": how,
                               "owner_rep": owner_rep.name if owner_rep else None})
        if owner_rep:
            if _try_rep(decision, owner_rep, now, why="account owner", exclude=exclude, lock=lock):
                return decision
            if owner_rep.backup_id and _try_rep(decision, owner_rep.backup, now, why="backup rep", exclude=exclude, lock=lock):
                return decision
        waiting_team = rule.team or (owner_rep.team if owner_rep else None) or fallback
    elif rule is not None:
        waiting_team = rule.team
    for team, why in teams_in_turn(waiting_team, fallback):
        if _try_team(decision, team, now, lock=lock, why=why, exclude=exclude):
            return decision
    decision_wait(decision, waiting_team or fallback)
    return decision


def _live_fallback_id() -> int | None:
    return RuleSet.objects.filter(pk=Subquery(_live_pk_query())).values_list("fallback_team_id", flat=True).first()


def _lock_rep_with_team(rep_id: int, *team_ids: int | None) -> None:
    """Before a rep row is written outside a route: their team (and the one
    they move to), then the rep, the order routes lock them (docs/architecture.md,
    "Write paths"). Without it, a rep saved while a route held
    their team and waited for the rep deadlocked as soon as the save went on
    to reroute the rep's leads through that team."""
    if connection.vendor != "postgresql":
        return
    current = Rep.objects.filter(pk=rep_id).values_list("team_id", flat=True).first()
    _lock_teams({t for t in (current, *team_ids) if t}, fallback_id=_live_fallback_id())
    _lock_reps([rep_id])
