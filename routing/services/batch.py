"""Routing many leads in one transaction (bulk jobs, the sweep, the
benchmark) with the decisions ``lead_route`` makes one by one."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from martech import configcache, hooks
from martech.db import retry_on_conflict
from martech.models import Lead
from routing import engine
from routing.models import Assignment, Rep, Rule, Team
from routing.services.config import live_rule_set, rules_of
from routing.services.decision import (
    Decision,
    _batch,
    _candidates,
    _lock_reps,
    _lock_teams,
    _team_read,
    account_owner_rep,
    decide,
    decision_start,
    decision_wait,
    pick_record,
    teams_in_turn,
)
from routing.services.route import _json_default, _sla_for, _write, owner_set
from routing.services.rules import rule_match
from routing.services.selectors import has_cap, rep_loads, team_reps

Status = Assignment.Status
Lifecycle = Assignment.Lifecycle


# --- Batch routing (bulk jobs, the sweep, the benchmark) -----------------------------


_QUEUE_CTE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = v.c FROM unnest(%s::bigint[], %s::float8[]) AS v(id, c) '
    f'WHERE "{Team._meta.db_table}"."id" = v.id), '
    f'r AS (UPDATE "{Rep._meta.db_table}" SET "rr_pass" = v.p FROM unnest(%s::bigint[], %s::float8[]) AS v(id, p) '
    f'WHERE "{Rep._meta.db_table}"."id" = v.id) '
)


def assignments_insert(rows: list[dict[str, Any]], *, batch_size: int = 1000,
                       queue: tuple[dict[int, float], dict[int, float]] | None = None) -> None:
    """Insert assignment rows (dicts of every column but the id).

    On PostgreSQL each batch goes as ONE JSON document expanded by
    ``jsonb_populate_recordset``: the explanations are serialized once, by
    the C JSON encoder, and the driver escapes one string. Through
    ``bulk_create`` every explanation became an element of an UNNEST text
    array that the driver escapes quote by quote in Python: 40% of bulk
    routing's CPU. Elsewhere (SQLite) ``bulk_create``.

    ``queue`` (PostgreSQL): fair-queue positions to write in the first
    statement, as ({team id: clock}, {rep id: pass})."""
    if queue is not None and (queue[0] or queue[1]) and (connection.vendor != "postgresql" or not rows):
        raise ValueError("queue positions ride on a PostgreSQL insert")
    if not rows:
        return
    if connection.vendor != "postgresql":
        Assignment.objects.bulk_create([Assignment(**row) for row in rows], batch_size=batch_size)
        return
    table = Assignment._meta.db_table
    columns = ", ".join(f'"{c}"' for c in rows[0])
    sql = f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::"{table}", %s::jsonb)'
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch_size):
            doc = json.dumps(rows[start:start + batch_size], default=_json_default, separators=(",", ":"))
            if start == 0 and queue is not None and (queue[0] or queue[1]):
                teams, reps = queue
                cursor.execute(_QUEUE_CTE_PG + sql, [list(teams), list(teams.values()), list(reps), list(reps.values()), doc])
            else:
                cursor.execute(sql, [doc])


@retry_on_conflict
@transaction.atomic
def leads_route_batch(*, lead_ids: list[int], trigger: str, reason: str = "", actor=None,
                      now: datetime | None = None) -> Counter:
    """Route many leads in one transaction with the same decisions
    ``lead_route`` makes one by one: leads locked (in id order) and those
    already assigned left alone; rules matched in memory; then every team
    the batch may need (ascending id, the fallback team last) and every
    capped rep of those teams or named by a rep rule (ascending id) are
    locked up front, so the batch never waits for a team while it holds a
    rep (docs/architecture.md, "Write paths"); each team's fair queue,
    capacities and daily counts are advanced in memory as leads are handed
    out; assignments are inserted in bulk. Rules that target a rep or an
    account owner go through ``decide`` one lead at a time; the others'
    decisions are made by the same steps as ``decide``'s (``decision_start``,
    ``teams_in_turn``, ``pick_record``, ``decision_wait``) on pools of
    candidates kept in memory. Returns counts by status."""
    now = now or timezone.now()
    with configcache.snapshot():  # the configuration token, read once
        rule_set = live_rule_set()
        if rule_set is None:
            raise ValidationError({"rule_set": ["No routing rule set is published yet."]})
        rules = rules_of(rule_set)
    fallback = rule_set.fallback_team
    leads = list(Lead.objects.select_for_update(of=("self",)).select_related("account").filter(pk__in=lead_ids).order_by("pk"))
    taken = set(Assignment.objects.filter(lead_id__in=[l.pk for l in leads], is_current=True).values_list("lead_id", flat=True))
    counts: Counter = Counter(kept=len(taken))
    decisions: list[tuple[Lead, Decision]] = []
    # Leads by the first team they are offered to, with their teams in turn.
    by_team: dict[int, list[tuple[Lead, Decision, list[tuple[Team, str]]]]] = {}
    direct: list[Lead] = []  # leads of rep and account-owner rules
    needed_teams: set[int] = set()
    direct_reps: list = []
    for lead in leads:
        if lead.pk in taken:
            continue
        rule = rule_match(rules, lead, now=now)
        if rule is not None and rule.action in (Rule.Action.REP, Rule.Action.ACCOUNT_OWNER):
            # Decided below, once the locks are held; what it may lock is gathered now.
            who = rule.rep if rule.action == Rule.Action.REP else account_owner_rep(lead)[2]
            if who is not None:
                direct_reps.append(who)
                if who.backup_id:
                    direct_reps.append(who.backup)
            needed_teams.update(t for t in (rule.team_id, who.team_id if who else None) if t)
            direct.append(lead)
            continue
        d = decision_start(rule_set=rule_set, rules=rules, rule=rule)
        decisions.append((lead, d))
        if d.status == Status.NURTURE:
            continue
        turns = teams_in_turn(rule.team if rule is not None else fallback, fallback)
        by_team.setdefault(turns[0][0].pk, []).append((lead, d, turns))
    if by_team or direct:
        needed_teams.update(by_team)
        needed_teams.add(fallback.pk)  # any of them may overflow to it
    _lock_teams(needed_teams, fallback_id=fallback.pk)
    # Each team read once (locked above): its reps, their loads counted
    # after their locks, and its in-memory queue shared by the team's own
    # leads and the fallback queue's.
    order = sorted(t for t in needed_teams if t != fallback.pk) + ([fallback.pk] if fallback.pk in needed_teams else [])
    team_reads = {t: _team_read(t, lock=True) for t in order}
    reps_of = {t: team_reps(t, now) if team_reads[t].is_active else [] for t in order}
    held = {r.pk for reps in reps_of.values() for r in reps if has_cap(r)} | {r.pk for r in direct_reps if has_cap(r)}
    _lock_reps(held)
    _batch.reps = held
    try:
        for lead in direct:
            # Written at once, as lead_route writes: the next lead's count of a
            # capped rep (and the teams' counts below) must include this one.
            d = decide(lead=lead, rule_set=rule_set, now=now, lock=True, rules=rules)
            _write(lead=lead, decision=d, trigger=trigger, reason=reason or trigger, actor=actor, now=now, previous=None)
            counts[d.status] += 1
    finally:
        _batch.reps = ()
    if direct:  # their picks moved fair queues: read them again
        team_reads = {t: _team_read(t, lock=True) for t in order}
        reps_of = {t: team_reps(t, now) if team_reads[t].is_active else [] for t in order}
    overflow: list[tuple[Lead, Decision, list[tuple[Team, str]]]] = []
    rep_updates: dict[int, Rep] = {}
    team_updates: dict[int, float] = {}
    pools: dict[int, tuple[Team, list[engine.Candidate]]] = {}
    for team_id in [t for t in order if t in by_team] + [None]:
        if team_id is None:  # the fallback queue takes what the teams could not
            if not overflow:
                break
            team_id, batch, turn = fallback.pk, overflow, 1
        else:
            batch, turn = by_team[team_id], 0
        if team_id not in pools:
            team, reps = team_reads[team_id], reps_of[team_id]
            pools[team_id] = (team, _candidates(reps, now, team_id=team.pk, loads=rep_loads(
                reps, now, everyone=team.method == Team.Method.LEAST_LOADED)))
        team, candidates = pools[team_id]
        by_rep = {c.rep.pk: c for c in candidates}
        counted = any(has_cap(c.rep) for c in candidates) or team.method == Team.Method.LEAST_LOADED
        rows = None
        for lead, d, turns in batch:
            if rows is None or counted:
                rows = [c.as_json() for c in candidates]
            pick = engine.choose(team, candidates)
            c = by_rep[pick.rep.pk] if pick.rep is not None else None
            if not pick_record(d, team, pick, c, why=turns[turn][1], candidates=rows):
                if turn + 1 < len(turns):  # the fallback queue is tried next
                    d.team = team
                    overflow.append((lead, d, turns))
                else:
                    decision_wait(d, d.team or team)
                continue
            team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
            rep_updates[pick.rep.pk] = pick.rep
            if counted:
                c.open_count += 1
                c.today_count += 1
                if has_cap(c.rep):
                    c.skipped = engine.capacity_reason(c.rep, open_count=c.open_count, today_count=c.today_count)
        team_updates[team.pk] = team.rr_clock
        if turn == 1:
            break
    pg = connection.vendor == "postgresql"
    if not pg:
        for team_id, clock in team_updates.items():
            Team.objects.filter(pk=team_id).update(rr_clock=clock)
        if rep_updates:
            Rep.objects.bulk_update([Rep(id=r.pk, rr_pass=r.rr_pass) for r in rep_updates.values()], ["rr_pass"],
                                    batch_size=500)
    deadlines: dict[tuple[int, int], Any] = {}
    rows = []
    for lead, d in decisions:
        policy, due = None, None
        if d.status == Status.ASSIGNED:
            key = (d.rep.pk, d.team.pk if d.team else 0)
            if key not in deadlines:
                deadlines[key] = _sla_for(d, now)
            policy, due = deadlines[key]
        rows.append({
            "lead_id": lead.pk, "status": d.status, "is_current": True, "rep_id": d.rep.pk if d.rep else None,
            "team_id": d.team.pk if d.team else None, "rule_set_id": rule_set.pk, "rule_set_version": rule_set.version,
            "rule_id": d.rule.pk if d.rule else None, "rule_name": d.rule.name if d.rule else "", "method": d.method,
            "trigger": trigger, "reason": (reason or trigger)[:255], "explanation": d.explanation(),
            "actor_id": actor.pk if getattr(actor, "is_authenticated", False) else None, "created_at": now,
            "assigned_at": now if d.status == Status.ASSIGNED else None, "ended_at": None, "end_reason": "",
            "sla_policy_id": policy.pk if policy else None, "sla_due_at": due, "first_touch_at": None,
            "first_touch_source": "", "escalation_level": 0, "lifecycle": Lifecycle.OPEN, "closed_at": None,
            "close_reason": "",
        })
        counts[d.status] += 1
    if pg:
        # The teams' clocks and the reps' positions go with the first insert
        # statement: the team locks are held until commit, so every round
        # trip after the first lock is time the other workers wait.
        assignments_insert(rows, queue=(team_updates, {r.pk: r.rr_pass for r in rep_updates.values()}))
    else:
        assignments_insert(rows)
    # Owners: leads whose owner changes go one by one through lead_set_owner
    # (owner_set); those whose rep has no Django user but a CRM owner id
    # only need the CRM told: one hooks call for the batch.
    crm_only = []
    for lead, d in decisions:
        if d.status != Status.ASSIGNED or d.rep is None:
            continue
        if lead.owner_id != d.rep.user_id:
            owner_set(lead=lead, rep=d.rep, reason=reason or trigger, actor=actor)
        elif d.rep.hubspot_owner_id or d.rep.salesforce_user_id:
            crm_only.append(lead.pk)
    hooks.leads_changed(ids=crm_only, fields=["owner"], source="routing")
    return counts
