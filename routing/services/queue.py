"""The waiting queue: leads no rep could take yet, tried again team by team."""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from martech.db import run_in_transaction
from martech.models import Lead
from routing.models import Assignment, Team
from routing.services.decision import Decision, _candidates, _try_team
from routing.services.route import _write
from routing.services.selectors import team_reps

Status = Assignment.Status
Trigger = Assignment.Trigger


# --- Waiting queue, deactivation, unrouted sweep -------------------------------


def waiting_assign(*, limit: int = 500, now: datetime | None = None) -> int:
    """Try the waiting assignments again, team by team (the team whose
    oldest lead waits longest first, each team's leads oldest first);
    returns how many got a rep. A team with nobody eligible is skipped after
    one look (no lock), and a team is left as soon as one of its leads finds
    nobody, so leads waiting for full teams, however many, never keep the
    others from a team with room. ``limit`` bounds the leads tried in one
    run. Each lead is its own transaction (run again on a deadlock); rows
    another worker is on are skipped, and a repeated run finds nothing left
    to do."""
    now = now or timezone.now()
    waiting = Assignment.objects.filter(status=Status.WAITING, is_current=True, team__isnull=False)
    teams = list(waiting.values_list("team_id").annotate(oldest=Min("created_at")).order_by("oldest", "team_id")
                 .values_list("team_id", flat=True))
    done = tried = 0
    for team_id in teams:
        if tried >= limit:
            break
        team = Team.objects.filter(pk=team_id).first()
        if team is None or not team.is_active:
            continue
        reps = team_reps(team_id, now)
        if not any(c.skipped is None for c in _candidates(reps, now, team_id=team_id)):
            continue  # full (or nobody at work): nothing to try until that changes
        last_at, last_id = None, 0
        while tried < limit:
            page = waiting.filter(team_id=team_id)
            if last_at is not None:
                page = page.filter(Q(created_at__gt=last_at) | Q(created_at=last_at, id__gt=last_id))
            rows = list(page.order_by("created_at", "id").values_list("id", "lead_id", "created_at")[:min(200, limit - tried)])
            if not rows:
                break
            full = False
            for assignment_id, lead_id, created_at in rows:
                last_at, last_id = created_at, assignment_id
                tried += 1
                outcome = run_in_transaction(lambda a=assignment_id, l=lead_id: _waiting_one(a, l, now))
                if outcome is True:
                    done += 1
                elif outcome is False:
                    full = True  # the team has nobody left for now
                    break
            if full:
                break
    return done


def _waiting_one(assignment_id: int, lead_id: int, now: datetime) -> bool | None:
    """One waiting lead: True assigned, False nobody eligible in its team,
    None skipped (another worker holds it, or it is no longer waiting)."""
    # The lead first, as lead_route does (same lock order, no deadlock).
    if not list(Lead.objects.select_for_update(skip_locked=True).filter(pk=lead_id).values_list("pk", flat=True)):
        return None
    current = (Assignment.objects.select_for_update(skip_locked=True, of=("self",)).select_related("team")
               .filter(pk=assignment_id, is_current=True, status=Status.WAITING).first())
    if current is None or current.team is None:
        return None
    lead = Lead.objects.select_related("account").get(pk=current.lead_id)
    decision = Decision(status=Status.WAITING, rule_set=current.rule_set, rule=current.rule,
                        steps=[{"step": "waiting queue", "since": current.created_at.isoformat()}])
    if not _try_team(decision, current.team, now, lock=True, why="team", exclude=set()):
        return False
    _write(lead=lead, decision=decision, trigger=Trigger.WAITING, reason="became eligible",
           actor=None, now=now, previous=current)
    return True


def waiting_assign_later() -> None:
    """Serve the waiting queue in the background after this transaction
    commits (django-q2): an admin or API edit that may free a rep must not
    run the queue inside its request (it took 8-17 s). Nothing is enqueued
    when nothing waits; a lost wake-up only delays to the scheduled run."""
    def enqueue():
        if Assignment.objects.filter(status=Status.WAITING, is_current=True).exists():
            from django_q.tasks import async_task

            async_task("routing.tasks.assign_waiting", task_name="routing: waiting queue after an edit")
    transaction.on_commit(enqueue)
