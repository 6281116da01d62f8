"""Routing one lead: the decision written as its assignment, the lead's
owner set, previews, reroutes (a rep deactivated, a lead's first score,
leads never routed)."""
from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Case, F, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from martech import configcache, hooks
from martech.db import retry_on_conflict, run_in_transaction
from martech.models import Lead
from martech.services import capture
from martech.services.leads import lead_set_owner
from routing import engine
from routing.models import Assignment, Rep, RuleSet, Team, open_assignments_q
from routing.services import config
from routing.services.config import _config_token_query, _live_pk_query, config_changed, live_rule_set, rules_of
from routing.services.decision import Decision, _lock_rep_with_team, decide
from routing.services.prepared import _SENTINEL_ID, _prepared
from routing.services.rules import rule_match, rules_read_score
from routing.services.selectors import rep_absences_from

log = logging.getLogger(__name__)
Status = Assignment.Status
Trigger = Assignment.Trigger
Lifecycle = Assignment.Lifecycle
CloseReason = Assignment.CloseReason


# --- Writing an assignment ------------------------------------------------------


_QUEUE_UPDATE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = %s WHERE "id" = %s) '
    f'UPDATE "{Rep._meta.db_table}" SET "rr_pass" = %s WHERE "id" = %s'
)


def _commit_queue_updates(decision: Decision) -> None:
    for team, clock, rep, rep_pass in decision.updates:
        if connection.vendor == "postgresql":
            # Both fair-queue positions in one statement: one round trip
            # fewer on the path every single route takes.
            with connection.cursor() as cursor:
                cursor.execute(_QUEUE_UPDATE_PG, [clock, team.pk, rep_pass, rep.pk])
        else:
            Team.objects.filter(pk=team.pk).update(rr_clock=clock)
            Rep.objects.filter(pk=rep.pk).update(rr_pass=rep_pass)
        team.rr_clock, rep.rr_pass = clock, rep_pass


def _sla_for(decision: Decision, now: datetime):
    team = decision.team or (decision.rep.team if decision.rep else None)
    policy = team.sla_policy if team and team.sla_policy_id else None
    if policy is None or decision.rep is None:
        return None, None
    absences = decision.absences
    if absences is None:
        absences = rep_absences_from(decision.rep.pk, now)
    return policy, engine.business_deadline(decision.rep, now, policy.first_touch_hours, absences)


_INSERT_COLUMNS = ("lead_id", "status", "is_current", "rep_id", "team_id", "rule_set_id", "rule_set_version", "rule_id",
                   "rule_name", "method", "trigger", "reason", "explanation", "actor_id", "created_at", "assigned_at",
                   "ended_at", "end_reason", "sla_policy_id", "sla_due_at", "first_touch_at", "first_touch_source",
                   "escalation_level", "lifecycle", "closed_at", "close_reason")
_INSERT_VALUES = ", ".join("%s::jsonb" if c == "explanation" else "%s" for c in _INSERT_COLUMNS)
_INSERT_PG = (f'INSERT INTO "{Assignment._meta.db_table}" ({", ".join(chr(34) + c + chr(34) for c in _INSERT_COLUMNS)}) '
              f'VALUES ({_INSERT_VALUES}) RETURNING "id"')
# A route's fair-queue positions and its assignment in ONE statement: the
# writes of a route were three round trips (team clock, rep pass, insert).
# Data-modifying CTEs always run to completion, read or not.
_WRITE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = %s WHERE "id" = %s), '
    f'r AS (UPDATE "{Rep._meta.db_table}" SET "rr_pass" = %s WHERE "id" = %s) ' + _INSERT_PG
)


def _write(*, lead: Lead, decision: Decision, trigger: str, reason: str, actor, now: datetime,
           previous: Assignment | None) -> Assignment:
    pg = connection.vendor == "postgresql"
    combine = pg and len(decision.updates) <= 1
    if not combine:
        _commit_queue_updates(decision)
    if previous is not None:
        # The replaced assignment is closed as reassigned (one closed before,
        # e.g. converted, keeps its reason).
        Assignment.objects.filter(pk=previous.pk).update(
            is_current=False, ended_at=now, end_reason=trigger[:100], lifecycle=Lifecycle.CLOSED,
            closed_at=Coalesce("closed_at", Value(now)),
            close_reason=Case(When(lifecycle=Lifecycle.CLOSED, then=F("close_reason")), default=Value(CloseReason.REASSIGNED)))
    policy, due = _sla_for(decision, now) if decision.status == Status.ASSIGNED else (None, None)
    assignment = Assignment(
        lead=lead, status=decision.status, rep_id=decision.rep.pk if decision.rep else None, team=decision.team,
        rule_set=decision.rule_set, rule_set_version=decision.rule_set.version if decision.rule_set else None,
        rule=decision.rule, rule_name=decision.rule.name if decision.rule else "", method=decision.method,
        trigger=trigger, reason=reason[:255], explanation=decision.explanation(),
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        created_at=now, assigned_at=now if decision.status == Status.ASSIGNED else None,
        sla_policy=policy, sla_due_at=due,
    )
    if not combine:
        assignment.save(force_insert=True)
    else:
        values = [json.dumps(assignment.explanation, default=_json_default, separators=(",", ":")) if c == "explanation"
                  else getattr(assignment, c) for c in _INSERT_COLUMNS]
        sql = _INSERT_PG
        if decision.updates:
            [(team, clock, rep, rep_pass)] = decision.updates
            sql, values = _WRITE_PG, [clock, team.pk, rep_pass, rep.pk, *values]
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            assignment.pk = cursor.fetchone()[0]
        assignment._state.adding, assignment._state.db = False, connection.alias
        for team, clock, rep, rep_pass in decision.updates:
            team.rr_clock, rep.rr_pass = clock, rep_pass
    if decision.status == Status.ASSIGNED and decision.rep is not None:
        owner_set(lead=lead, rep=decision.rep, reason=reason, actor=actor)
    return assignment


def owner_set(*, lead: Lead, rep, reason: str, actor=None) -> None:
    """Make ``rep`` the lead's owner here and in the CRM. ``Lead.owner``
    changes only through ``lead_set_owner`` (the one owner-change path; its
    lead hooks queue the CRM outbox, whose payload asks ``crm_owner_id`` for
    the rep's HubSpot/Salesforce id). A rep without a Django user clears a
    stale owner (the lead is no longer theirs). When ``Lead.owner`` stays as
    it is but the rep has a CRM owner id, only the CRM owner changes, so the
    lead hooks are told directly; with no CRM id there is nothing to push
    (an empty owner is never sent). ``lead.owner_id`` is as read under the
    lead's row lock."""
    if lead.owner_id != rep.user_id:
        lead_set_owner(lead=lead, owner=rep.user_id, reason=f"routing: {reason}"[:255], source="routing", actor=actor)
    elif rep.hubspot_owner_id or rep.salesforce_user_id:
        hooks.leads_changed(ids=[lead.pk], fields=["owner"], source="routing")


_CURRENT_SQL = f'SELECT "id" FROM "{Assignment._meta.db_table}" WHERE "lead_id" = %s AND "is_current"'


def _current_assignment(lead_id: int) -> Assignment | None:
    """The lead's current assignment, locked. Plain SQL for the common case
    (none yet): the ORM's query building was a tenth of a route's CPU."""
    sql = _CURRENT_SQL + (" FOR UPDATE" if connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [lead_id])
        row = cursor.fetchone()
    return Assignment.objects.get(pk=row[0]) if row else None


def _lead_with_live_set(lead_id: int, *, lock: bool) -> tuple[Lead, int | None, Any]:
    """The lead (locked for a route) with its account, the live rule set's
    id and the configuration token (see ``CONFIG_KEY``), in one prepared
    statement."""
    fresh = config._FRESHNESS

    def build():
        qs = Lead.objects.select_for_update(of=("self",)) if lock else Lead.objects.all()
        qs = qs.select_related("account").annotate(routing_live_set_id=Subquery(_live_pk_query()))
        if fresh:
            qs = qs.annotate(routing_config_token=Subquery(_config_token_query()))
        return qs.filter(pk=_SENTINEL_ID)
    found = _prepared("lead+live" + (":lock" if lock else "") + (":fresh" if fresh else ""), build).objects(lead_id)
    if not found:
        raise ValidationError({"lead_id": [f"No lead with id {lead_id}."]})
    lead, annotations = found[0]
    return lead, annotations["routing_live_set_id"], annotations.get("routing_config_token", configcache._UNREAD)


def lead_route(
    *, lead_id: int, trigger: str, reason: str = "", actor=None, reroute: bool = False,
    now: datetime | None = None, exclude: set[int] | None = None,
) -> tuple[Assignment, bool]:
    """Route one lead by the live rule set and store the decision with its
    explanation. A lead that already has a current assignment keeps it
    (returns it with False) unless ``reroute``, so the new-lead trigger,
    the stage trigger and the SQL handoff may all fire safely. Called
    outside a transaction it is its own, run again if the database aborts
    it for a concurrent one (``martech.db``).

    In a form's capture task a lead is routed once: the route its new-lead
    announcement committed is the current assignment the stage trigger and
    the SQL handoff of the same task would lock the lead to find, so they
    are given it without a query (``capture.task_routed``)."""
    if not reroute:
        known = capture.task_routed(lead_id)
        if known is not None:
            return known, False
    outermost = not connection.in_atomic_block
    assignment, created = _lead_route(lead_id=lead_id, trigger=trigger, reason=reason, actor=actor, reroute=reroute,
                                      now=now, exclude=exclude)
    if outermost:  # committed: an outer transaction could still roll it back
        capture.note_routed(lead_id, assignment)
    return assignment, created


@retry_on_conflict
@transaction.atomic
def _lead_route(
    *, lead_id: int, trigger: str, reason: str, actor, reroute: bool, now: datetime | None,
    exclude: set[int] | None,
) -> tuple[Assignment, bool]:
    now = now or timezone.now()
    # The live rule set's id and the configuration token come with the lead
    # (no round trip of their own).
    lead, live_set_id, token = _lead_with_live_set(lead_id, lock=True)
    # Read after the lead lock is held (its own statement, so it sees a route
    # that another worker committed while this one waited for the lock).
    current = _current_assignment(lead_id)
    if current is not None and not reroute:
        return current, False
    rule_set = live_rule_set(pk=live_set_id, token=token)
    decision = decide(lead=lead, rule_set=rule_set, now=now, lock=True, exclude=exclude,
                      rules=rules_of(rule_set, token=token) if rule_set is not None else None)
    # No savepoint around the write: the lead row lock above serializes
    # routes of one lead, and the unique "one current assignment" index is
    # the backstop that turns a bug into an error, never a second owner.
    assignment = _write(lead=lead, decision=decision, trigger=trigger, reason=reason or trigger,
                        actor=actor, now=now, previous=current)
    return assignment, True


def lead_preview(*, lead_id: int, now: datetime | None = None, rule_set: RuleSet | None = None) -> dict[str, Any]:
    """The decision ``lead_route`` would make now, with its explanation.
    Takes no locks and writes nothing."""
    now = now or timezone.now()
    lead, live_set_id, token = _lead_with_live_set(lead_id, lock=False)
    if rule_set is None:
        rule_set = live_rule_set(pk=live_set_id, token=token)
    decision = decide(lead=lead, rule_set=rule_set, now=now, lock=False,
                      rules=rules_of(rule_set, token=token) if rule_set is not None else None)
    return decision.explanation()


def assign_owner_provider(*, lead_id: int, reason: str, actor=None) -> bool:
    """``martech.hooks.call("assign_owner", ...)``: route the lead unless it
    already has a current assignment. True when it is assigned or queued."""
    try:
        assignment, _ = lead_route(lead_id=lead_id, trigger=Trigger.HANDOFF, reason=reason, actor=actor)
    except ValidationError:
        log.warning("assign_owner: lead %s not routed (no published rule set?)", lead_id, exc_info=True)
        return False
    return assignment.status in (Status.ASSIGNED, Status.WAITING)


def rep_deactivate(*, rep: Rep, actor=None, reason: str = "rep deactivated", now: datetime | None = None) -> int:
    """Mark the rep inactive and reroute their open leads (each one through
    ``lead_route`` with the rep excluded). Returns the number rerouted."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_rep_with_team(rep.pk)
        Rep.objects.filter(pk=rep.pk).update(is_active=False)
        config_changed()
        rep.is_active = False
    lead_ids = list(Assignment.objects.filter(open_assignments_q(), rep=rep).values_list("lead_id", flat=True))
    for lead_id in lead_ids:
        lead_route(lead_id=lead_id, trigger=Trigger.DEACTIVATION, reason=reason, actor=actor, reroute=True,
                   now=now, exclude={rep.pk})
    return len(lead_ids)


def unrouted_sweep(*, hours: int = 24, limit: int = 1000) -> int:
    """Route recent leads that have no assignment at all: a new-lead trigger
    lost to a crash is only delayed (the database is the record of pending work).

    A new lead is routed by its capture task after that task scored it
    (martech.services.capture); under a backlog the task may still be
    queued when the sweep finds the lead "unrouted". When the live rules
    read the score, the sweep therefore scores the leads first, as the task
    would (the task then finds nothing left to change), so no rule ever
    decides on an unscored lead."""
    rule_set = live_rule_set()
    if rule_set is None:
        return 0
    since = timezone.now() - timedelta(hours=hours)
    ids = list(Lead.objects.filter(created_at__gte=since, routing_assignments__isnull=True)
               .values_list("id", flat=True)[:limit])
    if ids and rules_read_score(rules_of(rule_set)):
        from martech.scoring.services import scores_recompute

        run_in_transaction(lambda: scores_recompute(lead_ids=ids, reason="routing sweep", batch_signal=True))
    for lead_id in ids:
        lead_route(lead_id=lead_id, trigger=Trigger.NEW_LEAD, reason="sweep of unrouted leads")
    return len(ids)


def leads_reroute_after_first_score(*, lead_ids: list[int], now: datetime | None = None) -> int:
    """New leads are routed when they are created, and scored after that
    commit (the scoring task), so a rule reading a score never saw a new
    lead's score. When the live rule set reads a score, a lead's FIRST
    scoring routes it once more: if its current assignment came from the
    new-lead trigger, is still open (no touch yet) and the live rules now
    match a different rule, it is rerouted (trigger ``first_score``; the
    old assignment is closed as reassigned). Later score moves never
    reroute (the assignment then comes from ``first_score``, or the lead has
    more than one score history row). Returns how many were rerouted."""
    from martech.scoring.models import ScoreHistory

    rule_set = live_rule_set() if lead_ids else None
    if rule_set is None:
        return 0
    rules = rules_of(rule_set)
    if not rules_read_score(rules):
        return 0
    rows = list(Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, trigger=Trigger.NEW_LEAD,
                                          lifecycle=Lifecycle.OPEN).values_list("pk", "lead_id", "rule_id"))
    if not rows:
        return 0
    scored = Counter(ScoreHistory.objects.filter(lead_id__in=[r[1] for r in rows]).values_list("lead_id", flat=True))
    moved = 0
    for assignment_id, lead_id, rule_id in rows:
        if scored[lead_id] > 1:
            continue
        lead = Lead.objects.select_related("account").get(pk=lead_id)
        rule = rule_match(rules, lead, now=now)
        if (rule.pk if rule else None) == rule_id:
            continue
        with transaction.atomic():
            # Checked again under the lead's lock: a touch or another route
            # in between wins, and a repeated signal finds nothing to do.
            Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk", flat=True).first()
            if not Assignment.objects.filter(pk=assignment_id, is_current=True, lifecycle=Lifecycle.OPEN).exists():
                continue
            lead_route(lead_id=lead_id, trigger=Trigger.FIRST_SCORE, reroute=True, now=now,
                       reason=f"first score: rule {rule.name if rule else '(fallback)'} now matches")
            moved += 1
    return moved


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()  # full precision (DjangoJSONEncoder cuts to milliseconds)
    return DjangoJSONEncoder().default(value)
