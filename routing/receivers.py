"""Triggers: martech's after-commit signals route leads and stop SLA clocks.

A receiver that fails logs and returns: the lead was already saved, and the
scheduled sweep (``unrouted_sweep``) routes any recent lead left without an
assignment, so a failure delays routing, never loses it.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ValidationError

from martech import hooks, signals
from martech.models import Event
from martech.services import capture
from routing import services

log = logging.getLogger(__name__)


def _config():
    return settings.MARTECH_ROUTING


def on_lead_created(sender, lead, source="", **kwargs):
    if not _config()["ROUTE_NEW_LEADS"]:
        return
    try:
        services.lead_route(lead_id=lead.pk, trigger=services.Trigger.NEW_LEAD, reason=f"new lead ({source})")
    except ValidationError as exc:  # no published rule set yet: nothing to route by
        log.info("routing: new lead %s not routed: %s", lead.pk, exc)
    except Exception:  # noqa: BLE001 - see the module docstring: the sweep retries
        log.exception("routing: new lead %s not routed; the sweep will retry", lead.pk)


def on_leads_created(sender, lead_ids, source="", **kwargs):
    """A bulk write's new leads (a CSV import, a CRM pull's page): routed in
    one batch (``leads_route_batch``: the decisions ``lead_route`` makes one
    by one, with the locks and reads done once per batch)."""
    if not _config()["ROUTE_NEW_LEADS"] or not lead_ids:
        return
    try:
        services.leads_route_batch(lead_ids=list(lead_ids), trigger=services.Trigger.NEW_LEAD,
                                   reason=f"new lead ({source})")
    except ValidationError as exc:  # no published rule set yet: nothing to route by
        log.info("routing: %s new lead(s) not routed: %s", len(lead_ids), exc)
    except Exception:  # noqa: BLE001 - see the module docstring: the sweep retries
        log.exception("routing: %s new lead(s) not routed; the sweep will retry", len(lead_ids))


def on_stage_changed(sender, lead, transition, **kwargs):
    key = transition.to_stage.key
    try:
        if key in _config()["FIRST_TOUCH_STAGES"]:
            services.first_touch_record(lead_id=lead.pk, source=f"stage:{key}", at=transition.changed_at)
        if key in _config()["CONVERTED_STAGES"]:
            services.assignment_close(lead_id=lead.pk, reason=services.CloseReason.CONVERTED, at=transition.changed_at)
        elif key in _config()["DISQUALIFIED_STAGES"]:
            services.assignment_close(lead_id=lead.pk, reason=services.CloseReason.DISQUALIFIED, at=transition.changed_at)
        if key in _config()["ROUTE_ON_STAGES"]:
            services.lead_route(lead_id=lead.pk, trigger=services.Trigger.STAGE, reason=f"stage changed to {key}")
    except Exception:  # noqa: BLE001
        log.exception("routing: stage change of lead %s not handled", lead.pk)


def on_events_ingested(sender, event_ids, with_lead=None, **kwargs):
    types = _config()["FIRST_TOUCH_EVENT_TYPES"]
    if not types:
        return
    if with_lead is not None:
        if not with_lead.type_names & set(types):
            return  # e.g. page views: not a rep's touch
        event_ids = with_lead.event_ids
    rows = Event.objects.filter(pk__in=event_ids, event_type__name__in=types, lead__isnull=False).values_list(
        "lead_id", "occurred_at", "event_type__name")
    for lead_id, at, name in rows:
        services.first_touch_record(lead_id=lead_id, source=f"event:{name}", at=at)


def on_task_completed(sender, task, source="", **kwargs):
    services.first_touch_record(lead_id=task.lead_id, source=f"task:{source or 'done'}", at=task.completed_at)


def on_leads_changed(*, ids, fields, created, source):
    """A CRM pull that changed leads' owner (in the pull's transaction)
    closes assignments whose rep is no longer the owner."""
    if created or "owner" not in fields or not source.startswith("crm:"):
        return
    services.crm_owner_changed(lead_ids=list(ids))


def on_score_changed(sender, lead_id=None, old_total=None, new_total=None, **kwargs):
    if old_total == 0:
        _first_score([lead_id])


def on_scores_changed(sender, changes=(), **kwargs):
    _first_score([lead_id for lead_id, old_total, _ in changes if old_total == 0])


def _first_score(lead_ids: list[int]) -> None:
    # A first scoring moves a lead from 0, the unscored default: every other
    # score move (an event, the nightly decay) costs routing no query.
    # The capture task scores its new leads before it routes them: their
    # first score is read by their first route, nothing to reroute.
    created = capture.task_created()
    lead_ids = [pk for pk in lead_ids if pk not in created]
    if not lead_ids:
        return
    try:
        services.leads_reroute_after_first_score(lead_ids=lead_ids)
    except Exception:  # noqa: BLE001 - the lead keeps its assignment; logged
        log.exception("routing: reroute after first score failed for %s lead(s)", len(lead_ids))


def connect() -> None:
    hooks.on_leads_changed(on_leads_changed)
    signals.score_changed.connect(on_score_changed, dispatch_uid="routing_score")
    signals.scores_changed.connect(on_scores_changed, dispatch_uid="routing_scores")
    signals.lead_created.connect(on_lead_created, dispatch_uid="routing_new_lead")
    signals.leads_created.connect(on_leads_created, dispatch_uid="routing_new_leads")
    signals.lead_stage_changed.connect(on_stage_changed, dispatch_uid="routing_stage")
    signals.events_ingested.connect(on_events_ingested, dispatch_uid="routing_events")
    signals.task_completed.connect(on_task_completed, dispatch_uid="routing_task_done")
