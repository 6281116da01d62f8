"""Triggers: the core's announcements turned into enrollments.

Signals arrive after the core's commit; each receiver enrolls in its own
transaction through ``enrollment_create`` (idempotent), so a repeated signal
enrolls once. CRM field changes come through the in-transaction lead hook and
are deferred to on_commit (the hook must stay cheap)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from martech import configcache, hooks, signals
from martech.models import Event, Lead
from nurture.conditions import condition_matches
from nurture.models import VERSION_EVENTS_KEY, WORKFLOWS_KEY, Workflow, WorkflowVersion

log = logging.getLogger(__name__)


# Active workflows by trigger, per process (martech.configcache): every event,
# stage move and score change asks for them, and they change only when a
# workflow is saved, published, paused, resumed or archived (each bumps the
# key: nurture/apps.py watches the models, the services bump after update()).


def _load_active() -> dict[str, tuple[Workflow, ...]]:
    by_trigger: dict[str, list[Workflow]] = {}
    for w in (Workflow.objects.filter(status=Workflow.Status.ACTIVE, current_version__isnull=False)
              .select_related("current_version").order_by("pk")):
        by_trigger.setdefault(w.trigger, []).append(w)
    return {t: tuple(ws) for t, ws in by_trigger.items()}


def _active(trigger: str) -> tuple[Workflow, ...]:
    """The active workflows with this trigger (read-only instances)."""
    return configcache.cached(WORKFLOWS_KEY, _load_active).get(trigger, ())


@dataclass(frozen=True)
class _VersionEvents:
    """Over every version (an enrollment stays on the version it started
    on, current or not): the versions exiting on each goal event, and the
    events a wait_until step waits for. Other events move no enrollment."""

    goals: dict[str, frozenset[int]]
    waits: frozenset[str]


def _load_version_events() -> _VersionEvents:
    goals: dict[str, set[int]] = {}
    waits: set[str] = set()
    for pk, settings, definition in WorkflowVersion.objects.values_list("pk", "settings", "definition"):
        goal = (settings or {}).get("goal_event") or ""
        if goal:
            goals.setdefault(goal, set()).add(pk)
        steps = (definition or {}).get("steps") or {}
        for step in steps.values() if isinstance(steps, dict) else ():
            if isinstance(step, dict) and step.get("type") == "wait_until":
                waits.add(step.get("event") or "")
    waits.discard("")
    return _VersionEvents(goals={k: frozenset(v) for k, v in goals.items()}, waits=frozenset(waits))


def _version_events() -> _VersionEvents:
    """The goal and awaited events of every version (martech.configcache:
    a version is written once, by publish, which bumps the key)."""
    return configcache.cached(VERSION_EVENTS_KEY, _load_version_events)


def _enroll(workflow: Workflow, lead: Lead, source: str) -> None:
    from nurture.services import enrollment_create

    try:
        enrollment_create(workflow=workflow, lead=lead, source=source)
    except Exception:  # noqa: BLE001 - one workflow's bad config must not block the others
        log.exception("nurture: enrolling lead %s in workflow %s failed", lead.pk, workflow.pk)


def on_events(sender, event_ids, with_lead=None, **kwargs) -> None:
    from nurture.services import enrollments_apply_events

    def load(ids) -> list[Event]:
        # The lead's stage with it: suppress_stages reads it for every enrollment.
        return list(Event.objects.filter(pk__in=ids, lead__isnull=False)
                    .select_related("event_type", "lead", "lead__lifecycle_stage"))

    events: list[Event] | None = None
    if with_lead is not None:
        # The sender says which events have a lead: the events themselves
        # are read only when an active workflow may enroll on them.
        if not with_lead.event_ids:
            return
        names, lead_ids = set(with_lead.type_names), sorted(with_lead.lead_ids)
    else:
        events = load(event_ids)
        if not events:
            return
        names = {e.event_type.name for e in events}
        lead_ids = list({e.lead_id for e in events})
    versions = _version_events()
    goal_ids = [pk for name in names & versions.goals.keys() for pk in versions.goals[name]]
    waits = names & versions.waits
    if goal_ids or waits:  # goal exits, then woken waits: an UPDATE each, only when one can match
        enrollments_apply_events(lead_ids=lead_ids, goal_version_ids=goal_ids, wait_events=waits)
    flows = [w for w in _active(Workflow.Trigger.EVENT) if w.current_version.settings["trigger_config"].get("event") in names]
    forms = [w for w in _active(Workflow.Trigger.FORM)]
    if not (flows or forms):
        return
    if events is None:
        events = load(with_lead.event_ids)
    for e in events:
        for w in flows:
            cfg = w.current_version.settings["trigger_config"]
            if cfg.get("event") != e.event_type.name:
                continue
            cond = cfg.get("condition", "")
            # Property conditions read the event's properties as ``properties.<name>``.
            if cond and not condition_matches(cond, _EventView(e)):
                continue
            _enroll(w, e.lead, f"event:{e.pk}")
        for w in forms:
            form_key = w.current_version.settings["trigger_config"].get("form")
            if form_key and (e.properties or {}).get("form") == form_key or e.event_type.name == f"form:{form_key}":
                _enroll(w, e.lead, f"form:{form_key}")


class _EventView:
    """The lead as the condition language sees it, with the event's
    properties over the lead's custom properties (for "event with property
    conditions")."""

    def __init__(self, event: Event):
        self._lead = event.lead
        self.properties = {**(event.lead.properties or {}), **(event.properties or {})}

    def __getattr__(self, name):
        return getattr(self._lead, name)


def on_stage(sender, lead, transition, **kwargs) -> None:
    key = transition.to_stage.key
    for w in _active(Workflow.Trigger.STAGE):
        if w.current_version.settings["trigger_config"].get("stage") == key:
            _enroll(w, lead, f"stage:{key}")


def on_score(sender, lead_id, old_total, new_total, **kwargs) -> None:
    """Crossing upward only: the old total below the threshold, the new one
    at or above it. scores_recompute sends score_changed once per real
    change, after commit, so one crossing is one signal; the enrollment's
    re-enrollment policy decides about a later crossing."""
    lead = None
    for w in _active(Workflow.Trigger.SCORE):
        threshold = w.current_version.settings["trigger_config"].get("threshold")
        if threshold is not None and (old_total or 0) < threshold <= (new_total or 0):
            lead = lead or Lead.objects.filter(pk=lead_id).select_related("lifecycle_stage").first()
            if lead is None:  # deleted (merged) since the rescoring
                return
            _enroll(w, lead, f"score:{threshold}")


def on_scores(sender, changes, **kwargs) -> None:
    """The batch form of on_score (a bulk recompute's chunk): the active
    score workflows are read once per chunk, not once per lead."""
    flows = [(w, w.current_version.settings["trigger_config"].get("threshold"))
             for w in _active(Workflow.Trigger.SCORE)]
    flows = [(w, t) for w, t in flows if t is not None]
    if not flows:
        return
    crossings = [
        (lead_id, w, threshold)
        for lead_id, old_total, new_total in changes
        for w, threshold in flows
        if (old_total or 0) < threshold <= (new_total or 0)
    ]
    if not crossings:
        return
    leads = Lead.objects.select_related("lifecycle_stage").in_bulk({lead_id for lead_id, _, _ in crossings})
    for lead_id, w, threshold in crossings:
        if lead_id in leads:  # a lead merged away since the recompute has nothing to enroll
            _enroll(w, leads[lead_id], f"score:{threshold}")


def on_leads_changed(*, ids, fields, created, source) -> None:
    if not source.startswith("crm:"):
        return
    fields = set(fields)
    ids = list(ids)

    def run():
        flows = [w for w in _active(Workflow.Trigger.CRM_FIELD)
                 if fields & set(w.current_version.settings["trigger_config"].get("fields") or [])]
        for lead in Lead.objects.filter(pk__in=ids) if flows else []:
            for w in flows:
                _enroll(w, lead, source)

    transaction.on_commit(run)


def on_consent(sender, record, **kwargs) -> None:
    """Email consent granted (after its commit): journeys waiting for a
    double opt-in click go on now (services.enrollments_wake_for_consent)."""
    if record.topic_id is None and record.channel == "email" and record.status == "granted":
        from nurture.services import enrollments_wake_for_consent

        enrollments_wake_for_consent(lead_id=record.lead_id, confirmed=bool((record.evidence or {}).get("double_opt_in")))


def connect() -> None:
    signals.consent_changed.connect(on_consent, dispatch_uid="nurture.consent")
    signals.events_ingested.connect(on_events, dispatch_uid="nurture.events")
    signals.lead_stage_changed.connect(on_stage, dispatch_uid="nurture.stage")
    signals.score_changed.connect(on_score, dispatch_uid="nurture.score")
    signals.scores_changed.connect(on_scores, dispatch_uid="nurture.scores")  # the bulk recompute's batch form
    hooks.on_leads_changed(on_leads_changed)
    try:
        from anymail.signals import tracking

        from nurture.anymail_hooks import on_tracking

        tracking.connect(on_tracking, dispatch_uid="nurture.anymail")
    except ImportError:  # pragma: no cover
        pass
