"""One worker task per captured form (``capture_process``).

The form's request stores, dedupes and identifies (``forms.form_submit``)
and answers; what the submission causes runs in one task enqueued when that
transaction commits: scoring, the announcements of the new lead and its
stage (routing, journeys), lifecycle rules (with the SQL handoff, run in the
same task) and the form's ``events_ingested`` (journey enrollment, first
touch, attribution, CRM campaign members).

While a form is stored (``deferred()``), the announcements the write paths
would send after commit are collected here instead (``lead_upsert`` and
``lead_change_stage`` ask ``deferring()``), and scoring's in-transaction
hook queues nothing: the task scores. The task keeps the ordering rules:
the lead is scored before it is announced, so routing reads the score.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

_local = threading.local()
REQUEST, TASK = "request", "task"


@dataclass
class _Capture:
    source: str
    lead_id: int | None = None
    created: bool = False
    transition_ids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    # In the task: leads changed after their scoring (routing's owner, a stage move).
    changed: set[int] = field(default_factory=set)


def _current() -> tuple[str | None, _Capture | None]:
    return getattr(_local, "mode", None), getattr(_local, "capture", None)


def deferring() -> bool:
    """A form's capture is being stored in this thread: its announcements
    go to its task (``note_*``), not to after-commit receivers."""
    return _current()[0] == REQUEST


def in_task() -> bool:
    """This thread runs ``capture_process``: scoring already ran here and
    the SQL handoff runs inline."""
    return _current()[0] == TASK


@contextmanager
def _mode(mode: str | None, capture: _Capture | None):
    saved = _current()
    _local.mode, _local.capture = mode, capture
    try:
        yield capture
    finally:
        _local.mode, _local.capture = saved


@contextmanager
def deferred(*, source: str):
    """Around the transaction that stores one form submission. When that
    transaction commits, one ``capture_process`` task is enqueued with what
    was noted (nothing noted: no task, e.g. a duplicate)."""
    from martech import configcache

    capture = _Capture(source=source)
    # One read of the configuration's tokens for the store (it read them 9
    # times a form: the CRM hooks, the tombstone check, the UTM rules).
    with _mode(REQUEST, capture), configcache.snapshot():
        yield capture


def note_lead(lead_id: int, *, created: bool) -> None:
    _, capture = _current()
    capture.lead_id = lead_id
    capture.created = capture.created or created


def note_transition(transition_id: int) -> None:
    _current()[1].transition_ids.append(transition_id)


def note_event(event_id: int) -> None:
    """The form's event, stored: registers the task's enqueue on commit."""
    capture = _current()[1]
    capture.event_ids.append(event_id)
    args = (capture.lead_id, list(capture.event_ids), capture.created, list(capture.transition_ids), capture.source)

    def enqueue():
        # Runs after the commit, still inside ``deferred()`` in this thread:
        # a synchronous task must not see the request's mode.
        with _mode(None, None):
            task_enqueue("martech.tasks.capture_process", *args, task_name=f"capture: lead {args[0]}")

    transaction.on_commit(enqueue)


def note_changed(lead_ids) -> bool:
    """Scoring's lead hook in the task: the lead changed after its scoring;
    the task scores it once more at its end. True when noted."""
    mode, capture = _current()
    if mode != TASK:
        return False
    capture.changed.update(lead_ids)
    return True


def task_enqueue(func: str, *args, cluster: str | None = None, task_name: str | None = None) -> None:
    """django-q2's async_task; inline when scoring's tasks are
    (MARTECH_SCORING["TASKS_SYNC"]): the capture task is a form's scoring."""
    from django_q.tasks import async_task

    options = {"sync": settings.MARTECH_SCORING["TASKS_SYNC"]}
    if cluster:
        options["cluster"] = cluster
    if task_name:
        options["task_name"] = task_name
    async_task(func, *args, **options)


def capture_process(*, lead_id: int, event_ids: list[int], created: bool, transition_ids: list[int],
                    source: str) -> None:
    """What one stored form causes, in order: the lead scored; its stage
    moves and (new lead) its creation announced, so routing reads the score;
    lifecycle rules for the form's event type (an SQL move starts its
    handoff here); the event announced (journeys, first touch, attribution,
    CRM). A lead changed on the way (its owner) is scored once more. Each
    step is its own transaction, run again on a conflict; safe to run twice
    (every receiver is idempotent)."""
    from martech import configcache, taskqueue

    capture = _Capture(source=source, lead_id=lead_id, created=created)
    # One read of the configuration's tokens for the whole task (it read them
    # up to 10 times: each receiver's cache check), and the wake-ups of its commits
    # sent once per key at its end.
    with configcache.snapshot(), taskqueue.coalesced_wakes():
        _process(capture, lead_id, event_ids, created, transition_ids, source)


def _process(capture: _Capture, lead_id: int, event_ids: list[int], created: bool, transition_ids: list[int],
             source: str) -> None:
    from martech import signals
    from martech.db import run_in_transaction
    from martech.models import Event, Lead, StageTransition
    from martech.scoring import services as scoring
    from martech.signals import EventsWithLead

    with _mode(TASK, capture):
        lead = Lead.objects.select_related("lifecycle_stage").filter(pk=lead_id).first()
        if lead is None:  # merged or erased since: its events went with it
            return
        events = list(Event.objects.filter(pk__in=event_ids, lead_id=lead_id).select_related("event_type"))
        run_in_transaction(lambda: scoring.scores_recompute(lead_ids=[lead_id], reason="form"))
        for transition in StageTransition.objects.filter(pk__in=transition_ids).select_related("to_stage"):
            signals.lead_stage_changed.send(sender=Lead, lead=lead, transition=transition)
        if created:
            signals.lead_created.send(sender=Lead, lead=lead, source=source)
        scoring.lifecycle_apply(lead_ids=[lead_id], event_type_ids={e.event_type_id for e in events})
        if events:
            signals.events_ingested.send(sender=Event, event_ids=[e.pk for e in events], with_lead=EventsWithLead(
                event_ids=frozenset(e.pk for e in events), lead_ids=frozenset([lead_id]),
                type_names=frozenset(e.event_type.name for e in events),
                campaign_ids=frozenset(e.campaign_id for e in events if e.campaign_id)))
        again = sorted(capture.changed)
    if again:
        # Out of the task's mode: what this changes wakes its usual tasks.
        run_in_transaction(lambda: scoring.scores_recompute(lead_ids=again, reason="lead changed"))
        scoring.lifecycle_apply(lead_ids=again)
