"""One worker task per captured form or event batch (``capture_process``).

The request of a form (``forms.form_submit``) or of an event batch
(``ingest.events_ingest``: the events API, the website tracker, nurture's
tracking) validates, stores, dedupes and identifies, and answers; what the
capture causes runs in one task enqueued when that transaction commits:
scoring, the announcements of new leads and of stage moves (routing,
journeys), lifecycle rules (with the SQL handoff, run in the same task) and
the capture's ``events_ingested`` (journey enrollment, first touch,
attribution, CRM campaign members).

While a capture is stored (``deferred()``), the announcements the write
paths would send after commit are collected here instead (``lead_upsert``
and ``lead_change_stage`` ask ``deferring()``), and scoring's
in-transaction hook queues nothing: it notes the lead, the task scores it.
The task keeps the ordering rules: a lead is scored before it is announced,
so routing reads the score.
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
    # Why the task scores (ScoreHistory.reason): "form" or "event".
    reason: str = "form"
    # The leads the capture wrote or stored events of, in the order noted (a dict as an ordered set).
    leads: dict[int, None] = field(default_factory=dict)
    created: dict[int, None] = field(default_factory=dict)
    transition_ids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    # In the task: leads changed after their scoring (routing's owner, a stage move).
    changed: set[int] = field(default_factory=set)
    enqueued: bool = False

    @property
    def lead_id(self) -> int | None:
        return next(iter(self.leads), None)

    def mark(self) -> tuple[int, int, int, int]:
        return len(self.leads), len(self.created), len(self.transition_ids), len(self.event_ids)

    def restore(self, mark: tuple[int, int, int, int]) -> None:
        # Keys noted again keep their place, new ones come last: the first
        # n keys are exactly those noted before the mark.
        leads, created, transitions, events = mark
        self.leads = dict.fromkeys(list(self.leads)[:leads])
        self.created = dict.fromkeys(list(self.created)[:created])
        del self.transition_ids[transitions:]
        del self.event_ids[events:]

    def args(self) -> tuple:
        return (list(self.leads), list(self.event_ids), list(self.created), list(self.transition_ids),
                self.source, self.reason)


def _current() -> tuple[str | None, _Capture | None]:
    return getattr(_local, "mode", None), getattr(_local, "capture", None)


def deferring() -> bool:
    """A capture (a form, an event batch) is being stored in this thread:
    its announcements go to its task (``note_*``), not to after-commit
    receivers."""
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
def deferred(*, source: str, reason: str = "form"):
    """Around the transaction that stores one form submission or one event
    batch. When that transaction commits, one ``capture_process`` task is
    enqueued with what was noted (``enqueue_on_commit``; nothing noted: no
    task, e.g. a duplicate, or a batch of anonymous page views)."""
    from martech import configcache

    capture = _Capture(source=source, reason=reason)
    # One read of the configuration's tokens for the store (a form read them
    # 9 times: the CRM hooks, the tombstone check, the UTM rules).
    with _mode(REQUEST, capture), configcache.snapshot():
        yield capture


@contextmanager
def atomic():
    """``transaction.atomic()`` (a savepoint inside a transaction) whose
    rollback also forgets what was noted inside it: a lead or a stage move
    rolled back is not announced (on SQLite its id may even be taken again)."""
    mode, capture = _current()
    mark = capture.mark() if mode == REQUEST else None
    try:
        with transaction.atomic():
            yield
    except BaseException:
        if mark is not None:
            capture.restore(mark)
        raise


def note_lead(lead_id: int, *, created: bool) -> None:
    _, capture = _current()
    capture.leads[lead_id] = None
    if created:
        capture.created[lead_id] = None


def note_transition(transition_id: int) -> None:
    _current()[1].transition_ids.append(transition_id)


def note_event(event_id: int) -> None:
    """The form's event, stored: registers the task's enqueue on commit."""
    _current()[1].event_ids.append(event_id)
    enqueue_on_commit()


def note_events(event_ids, lead_ids) -> None:
    """An event batch's stored events of leads (and their leads)."""
    capture = _current()[1]
    capture.event_ids.extend(event_ids)
    capture.leads.update(dict.fromkeys(lead_ids))


def enqueue_on_commit() -> None:
    """Enqueue the capture's task when the current transaction commits, with
    what was noted by then; nothing when no lead was noted."""
    capture = _current()[1]
    if not capture.leads or capture.enqueued:
        return
    capture.enqueued = True
    args = capture.args()

    def enqueue():
        # Runs after the commit, perhaps still inside ``deferred()`` in this
        # thread: a synchronous task must not see the request's mode.
        with _mode(None, None):
            task_enqueue("martech.tasks.capture_process", *args, task_name=_task_name(args[0], args[1]))

    transaction.on_commit(enqueue)


def _task_name(lead_ids: list[int], event_ids: list[int]) -> str:
    if len(lead_ids) == 1:
        return f"capture: lead {lead_ids[0]}"
    return f"capture: {len(event_ids)} event(s) of {len(lead_ids)} leads"


def note_changed(lead_ids) -> bool:
    """Scoring's lead hook during a capture: in the request, the changed lead
    is the capture's (its task scores it); in the task, the lead changed
    after its scoring and the task scores it once more at its end. True when
    noted."""
    mode, capture = _current()
    if mode == REQUEST:
        capture.leads.update(dict.fromkeys(lead_ids))
        return True
    if mode == TASK:
        capture.changed.update(lead_ids)
        return True
    return False


def task_enqueue(func: str, *args, cluster: str | None = None, task_name: str | None = None) -> None:
    """django-q2's async_task; inline when scoring's tasks are
    (MARTECH_SCORING["TASKS_SYNC"]): the capture task is the capture's scoring."""
    from django_q.tasks import async_task

    options = {"sync": settings.MARTECH_SCORING["TASKS_SYNC"]}
    if cluster:
        options["cluster"] = cluster
    if task_name:
        options["task_name"] = task_name
    async_task(func, *args, **options)


def capture_process(*, lead_ids: list[int], event_ids: list[int], created_ids: list[int],
                    transition_ids: list[int], source: str, reason: str = "form") -> None:
    """What one stored capture causes, in order, for all its leads at once:
    the leads scored; their stage moves and the new leads announced, so
    routing reads the score; lifecycle rules for each lead's event types (an
    SQL move starts its handoff here); the events announced (journeys, first
    touch, attribution, CRM). A lead changed on the way (its owner) is scored
    once more. Each step is its own transaction, run again on a conflict;
    safe to run twice (every receiver is idempotent)."""
    from martech import configcache, taskqueue

    capture = _Capture(source=source, reason=reason, leads=dict.fromkeys(lead_ids))
    # One read of the configuration's tokens for the whole task (it read them
    # up to 10 times a form: each receiver's cache check), and the wake-ups of
    # its commits sent once per key at its end.
    with configcache.snapshot(), taskqueue.coalesced_wakes():
        _process(capture, lead_ids, event_ids, created_ids, transition_ids, source, reason)


def _process(capture: _Capture, lead_ids: list[int], event_ids: list[int], created_ids: list[int],
             transition_ids: list[int], source: str, reason: str) -> None:
    from martech import signals
    from martech.db import run_in_transaction
    from martech.models import Event, Lead, StageTransition
    from martech.scoring import services as scoring
    from martech.signals import EventsWithLead

    with _mode(TASK, capture):
        run_in_transaction(lambda: scoring.scores_recompute(lead_ids=lead_ids, reason=reason))
        # Read after scoring: receivers (journey conditions) see the score.
        # Leads merged or erased since are gone, and their events with them.
        leads = Lead.objects.select_related("lifecycle_stage").in_bulk(lead_ids)
        if not leads:
            return
        ids = sorted(leads)
        # (id, lead, type id, type name, campaign) of the capture's events with a lead.
        events = list(Event.objects.filter(pk__in=event_ids, lead_id__in=ids).values_list(
            "pk", "lead_id", "event_type_id", "event_type__name", "campaign_id"))
        for transition in (StageTransition.objects.filter(pk__in=transition_ids, lead_id__in=ids)
                           .select_related("to_stage").order_by("pk")):
            signals.lead_stage_changed.send(sender=Lead, lead=leads[transition.lead_id], transition=transition)
        created = [pk for pk in created_ids if pk in leads]
        if len(created) == 1:
            signals.lead_created.send(sender=Lead, lead=leads[created[0]], source=source)
        elif created:
            # A batch's new leads in one announcement (routing routes them as a batch).
            signals.leads_created.send(sender=Lead, lead_ids=created, source=source)
        # Lifecycle event rules read each lead's own event types: one call per distinct set.
        by_types: dict[frozenset[int], list[int]] = {}
        types_of: dict[int, set[int]] = {pk: set() for pk in ids}
        for _, lead_id, type_id, _, _ in events:
            types_of[lead_id].add(type_id)
        for pk in ids:
            by_types.setdefault(frozenset(types_of[pk]), []).append(pk)
        for type_ids, group in by_types.items():
            scoring.lifecycle_apply(lead_ids=group, event_type_ids=type_ids)
        if events:
            signals.events_ingested.send(sender=Event, event_ids=[e[0] for e in events], with_lead=EventsWithLead(
                event_ids=frozenset(e[0] for e in events), lead_ids=frozenset(e[1] for e in events),
                type_names=frozenset(e[3] for e in events), campaign_ids=frozenset(e[4] for e in events if e[4])))
        again = sorted(capture.changed)
    if again:
        # Out of the task's mode: what this changes wakes its usual tasks.
        run_in_transaction(lambda: scoring.scores_recompute(lead_ids=again, reason="lead changed"))
        scoring.lifecycle_apply(lead_ids=again)
