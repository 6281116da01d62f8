"""Where scoring listens: the in-transaction lead hook (queue a rescoring
when a scored field changes) and after-commit signals (events, opportunities,
stage changes for the SQL handoff)."""
from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import receiver

from martech import hooks, signals
from martech.scoring import services, tasks
from martech.services import capture

log = logging.getLogger(__name__)

# A change queues a rescoring when a fit rule or a lifecycle rule condition
# reads one of the changed fields (services.lead_fields_read, or the lead is
# new), never for the score columns alone (our own writes, which also carry
# source="scoring"). A CRM id written back after a push, read by no rule,
# queues nothing: that was most of a form's tasks.
_SCORE_COLUMNS = {"fit_score", "engagement_score", "total_score"}


@hooks.on_leads_changed
def _lead_changed(*, ids, fields, created, source):
    if source == "scoring" or (not created and not (set(fields) - _SCORE_COLUMNS)):
        return
    # A form or an event batch being stored: its capture task scores the
    # lead (noted here; no look-up of the rules in the request).
    if capture.deferring():
        capture.note_changed(ids)
        return
    if not created and not set(fields) & services.lead_fields_read():
        return
    # In the capture task: scored once more at its end, not in another task.
    if capture.note_changed(ids, fields):
        return
    ids = list(ids)
    transaction.on_commit(lambda: tasks.enqueue("martech.scoring.tasks.rescore_leads", ids, "lead changed"))


@hooks.on_accounts_changed
def _account_changed(*, ids, fields, created, source):
    from martech.models import Lead

    if source == "scoring":
        return
    lead_ids = list(Lead.objects.filter(account_id__in=list(ids)).values_list("pk", flat=True))

    def _queue():
        # One task per 5,000 leads so a big account does not make one huge task.
        for start in range(0, len(lead_ids), 5000):
            tasks.enqueue("martech.scoring.tasks.rescore_leads", lead_ids[start:start + 5000], "account changed")

    if lead_ids:
        transaction.on_commit(_queue)


@receiver(signals.events_ingested)
def _events_ingested(sender, event_ids, with_lead=None, **kwargs):
    # Only a lead is scored: events stored without one need no task.
    if capture.in_task():
        return  # the capture task scored its leads already
    ids = sorted(with_lead.event_ids) if with_lead is not None else list(event_ids)
    if ids:
        tasks.enqueue("martech.scoring.tasks.events_arrived", ids)


@receiver(signals.opportunity_changed)
def _opportunity_changed(sender, kind=None, lead_ids=(), **kwargs):
    if kind in ("created", "won") and lead_ids:
        tasks.enqueue("martech.scoring.tasks.opportunity_changed", kind, list(lead_ids))


@receiver(signals.lead_stage_changed)
def _stage_changed(sender, lead=None, transition=None, **kwargs):
    if transition is None or transition.to_stage.key != "sql":
        return
    if capture.handoff_started(transition.pk):
        return  # started by the capture task's lifecycle step, in the move's transaction
    if capture.in_task():
        # The capture task starts the handoff itself (no second task);
        # a failure leaves it to a task, and the handoff sweep after that.
        try:
            tasks.handoff_start(transition.pk)
            return
        except Exception:  # noqa: BLE001 - queued below instead
            log.exception("SQL handoff of transition %s failed in the capture task; queued", transition.pk)
    tasks.enqueue("martech.scoring.tasks.handoff_start", transition.pk)


def _score_explanation_html(*, lead) -> str:
    """The lead page's "Why this score" (provided to martech's LeadAdmin)."""
    from django.template.loader import render_to_string

    return render_to_string("admin/scoring/score_explanation.html", {**_score_section(lead=lead, user=None), "lead": lead})


def _score_section(*, lead, user) -> dict:
    """The lead 360 page's score section: the latest computation's per-rule
    breakdown (one query)."""
    from martech.scoring.selectors import score_explanation

    latest = score_explanation(lead.pk)
    return {"latest": latest, "parts": latest.breakdown if latest else []}


hooks.provide("score_explanation_html", _score_explanation_html)
hooks.provide_lead_section(hooks.LeadSection("score", "Score and why", 20, "admin/scoring/score_explanation.html",
                                             ("scoring.view_scorehistory",), _score_section))
