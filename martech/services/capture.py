"""One worker task per captured form or event batch (``capture_process``).

The request of a form (``forms.form_submit``) or of an event batch
(``ingest.events_ingest``: the events API, the website tracker, nurture's
tracking) validates, stores, dedupes and identifies, and answers; what the
capture causes runs in one task enqueued when that transaction commits:
scoring, the announcements of new leads and of stage moves (routing,
journeys), lifecycle rules (a move to SQL starts its handoff in the move's
transaction) and the capture's ``events_ingested`` (journey enrollment,
first touch, attribution, CRM campaign members). A lead is routed once a
task: the stage trigger and the handoff take the assignment its new-lead
route committed (``task_routed``).

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
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

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
    # In the task: leads changed after their scoring (routing's owner, a stage move), and which fields.
    changed: set[int] = field(default_factory=set)
    changed_fields: set[str] = field(default_factory=set)
    # In the task: each lead's current assignment as a committed route of
    # this task left it (``task_routed``), and the SQL moves whose handoff
    # the lifecycle step started (``note_handoff``).
    routed: dict[int, object] = field(default_factory=dict)
    handoffs: set[int] = field(default_factory=set)
    # In the task: the leads it read after scoring (whole rows), by id.
    read: dict[int, object] = field(default_factory=dict)
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
    """Record the capture (one ``CapturePending`` row, in the current
    transaction) and enqueue its task when the transaction commits, with
    what was noted by then and the row's id; nothing when no lead was noted.
    A failed enqueue is logged, not raised into the committed request: the
    sweep (``pending_sweep``) enqueues the row again."""
    capture = _current()[1]
    if not capture.leads or capture.enqueued:
        return
    capture.enqueued = True
    args = capture.args()
    pending_id = _pending_record(args)

    def enqueue():
        # Runs after the commit, perhaps still inside ``deferred()`` in this
        # thread: a synchronous task must not see the request's mode.
        with _mode(None, None):
            _enqueue(args, pending_id)

    transaction.on_commit(enqueue)


# --- The pending captures: the task's outbox ---------------------------------------
# A capture's task can be lost (the process dies between the commit and the
# enqueue, the broker is down, or drops a task whose worker was killed), and
# journey enrollment, first touch and the events' announcement have no other
# sweep. So the request records the capture in its transaction; the task
# deletes the record when it is done; a record left past its lease is
# enqueued again by the ``capture.sweep`` schedule.

# Times the sweep enqueues a capture again (waiting the lease, then twice,
# four times ... as long) before the row is left for ops to see.
SWEEP_ATTEMPTS = 5
SWEEP_BATCH = 500


def _lease() -> timedelta:
    return timedelta(seconds=settings.MARTECH_CAPTURE_SWEEP_AFTER)


def _pending_record(args: tuple) -> int:
    from martech.models import CapturePending

    lead_ids, event_ids, created_ids, transition_ids, source, reason = args
    return CapturePending.objects.create(
        lead_ids=lead_ids, event_ids=event_ids, created_ids=created_ids, transition_ids=transition_ids,
        source=source[:100], reason=reason, next_attempt_at=timezone.now() + _lease()).pk


def _enqueue(args: tuple, pending_id: int | None) -> bool:
    """The capture's task; False (logged) when the broker refused it. In
    synchronous mode (tests) the task runs here and its errors are raised."""
    try:
        task_enqueue("martech.tasks.capture_process", *args, task_name=_task_name(args[0], args[1]),
                     pending_id=pending_id)
    except Exception:
        if settings.MARTECH_SCORING["TASKS_SYNC"]:
            raise
        log.exception("capture #%s: task not enqueued; the capture sweep will enqueue it", pending_id)
        return False
    return True


def pending_claim(pending_id: int) -> bool:
    """The task's first step: push the row's next sweep a lease away (a
    running task is not doubled); False when the row is gone (its capture
    done by an earlier run of the task)."""
    from martech.models import CapturePending

    return bool(CapturePending.objects.filter(pk=pending_id).update(next_attempt_at=timezone.now() + _lease()))


def pending_done(pending_id: int) -> None:
    from django.db import connection

    from martech.models import CapturePending

    # One statement (no relations point at the row): the ORM's delete wrapped
    # it in a transaction of its own (3 round trips a capture).
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(CapturePending._meta.db_table)} WHERE id = %s",
                       [pending_id])


def pending_failed(pending_id: int, exc: BaseException) -> None:
    """The capture's task raised: its error is kept on the row (the admin
    shows it beside a capture given up). Never raised over the task's own
    error: a failure to record it is logged."""
    from martech.models import CapturePending

    try:
        CapturePending.objects.filter(pk=pending_id).update(last_error=f"{type(exc).__name__}: {exc}"[:2000])
    except Exception:  # noqa: BLE001 - the task's own error is what is raised
        log.warning("capture #%s: its task's error not recorded on the row", pending_id, exc_info=True)


def pending_retry(pending_ids) -> int:
    """Ops' "enqueue again now" (the admin): the captures' tasks enqueued
    after this commits, their attempts counted from 0 again and their next
    sweep a lease away (given-up rows included); returns how many. A row
    done meanwhile is gone: its task finds nothing to do."""
    from martech.db import run_in_transaction
    from martech.models import CapturePending

    def take() -> list[CapturePending]:
        qs = CapturePending.objects.filter(pk__in=list(pending_ids)).order_by("pk")
        rows = list(qs.select_for_update())
        CapturePending.objects.filter(pk__in=[r.pk for r in rows]).update(
            attempts=0, next_attempt_at=timezone.now() + _lease())
        return rows

    rows = run_in_transaction(take)
    return sum(1 for row in rows if _enqueue(row.args(), row.pk))


def pending_sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Enqueue again the captures whose task has not finished a lease after
    its enqueue (or its start); returns how many. Each row is taken under a
    row lock skipping rows another sweep holds (PostgreSQL; SQLite has one
    writer), marked (``attempts``, the next try twice as far) and enqueued
    after the commit. A row already enqueued ``SWEEP_ATTEMPTS`` times is
    given up (``next_attempt_at`` emptied, logged) and stays for ops. When
    the broker refuses one, it and the rest are left for the next sweep,
    their attempt not counted."""
    from django.db import connection

    from martech.db import run_in_transaction
    from martech.models import CapturePending

    def take() -> tuple[list[CapturePending], list[CapturePending]]:
        now = timezone.now()
        qs = CapturePending.objects.filter(next_attempt_at__lte=now).order_by("next_attempt_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        rows = list(qs[:limit])
        due = [r for r in rows if r.attempts < SWEEP_ATTEMPTS]
        dead = [r for r in rows if r.attempts >= SWEEP_ATTEMPTS]
        for row in due:
            row.attempts += 1
            row.next_attempt_at = now + _lease() * 2 ** row.attempts
        for row in dead:
            row.next_attempt_at = None
        CapturePending.objects.bulk_update(due + dead, ["attempts", "next_attempt_at"])
        return due, dead

    due, dead = run_in_transaction(take)
    for row in dead:
        log.error("capture #%s from %s (leads %s): its task did not finish after %s attempts; left for ops "
                  "(last error: %s)", row.pk, row.source, row.lead_ids[:10], row.attempts, row.last_error or "none")
    for n, row in enumerate(due):
        log.warning("capture #%s from %s: task not done after %s; enqueued again (attempt %s of %s)",
                    row.pk, row.source, row.created_at, row.attempts, SWEEP_ATTEMPTS)
        if not _enqueue(row.args(), row.pk):
            # The broker is down: the rest wait for the next sweep, their attempt not counted.
            back = [r.pk for r in due[n:]]
            CapturePending.objects.filter(pk__in=back).update(
                attempts=Greatest(F("attempts") - 1, 0), next_attempt_at=timezone.now())
            return n
    return len(due)


def pending_status() -> dict[str, int]:
    """For ops: captures waiting for their task, overdue (past their lease)
    and given up."""
    from django.db.models import Count, Q

    from martech.models import CapturePending

    now = timezone.now()
    return CapturePending.objects.aggregate(
        waiting=Count("pk", filter=Q(next_attempt_at__gt=now)),
        overdue=Count("pk", filter=Q(next_attempt_at__lte=now)),
        given_up=Count("pk", filter=Q(next_attempt_at__isnull=True)))


def _task_name(lead_ids: list[int], event_ids: list[int]) -> str:
    if len(lead_ids) == 1:
        return f"capture: lead {lead_ids[0]}"
    return f"capture: {len(event_ids)} event(s) of {len(lead_ids)} leads"


def note_changed(lead_ids, fields=()) -> bool:
    """Scoring's lead hook during a capture: in the request, the changed lead
    is the capture's (its task scores it); in the task, the lead changed
    after its scoring (``fields``) and the task scores it once more at its
    end when a fit rule reads one of them. True when noted."""
    mode, capture = _current()
    if mode == REQUEST:
        capture.leads.update(dict.fromkeys(lead_ids))
        return True
    if mode == TASK:
        capture.changed.update(lead_ids)
        capture.changed_fields.update(fields)
        return True
    return False


def task_created() -> frozenset[int]:
    """In the capture task: the leads it announces as new (routed by the
    task after their scoring); empty elsewhere."""
    mode, capture = _current()
    return frozenset(capture.created) if mode == TASK else frozenset()


def task_routed(lead_id: int):
    """In the capture task: the lead's current assignment as a route of this
    task committed it (the new-lead route), else None. The stage trigger
    and the SQL handoff of the same task take it instead of routing the lead
    again (``lead_route`` would lock the lead and find that assignment)."""
    mode, capture = _current()
    return capture.routed.get(lead_id) if mode == TASK else None


def note_routed(lead_id: int, assignment) -> None:
    """A route of the capture task committed (not inside an outer
    transaction that might still roll back): see ``task_routed``."""
    mode, capture = _current()
    if mode == TASK:
        capture.routed[lead_id] = assignment


def task_lead(lead_id: int):
    """In the capture task: the lead as the task read it after scoring
    (a whole row; None elsewhere or for a lead it did not read)."""
    mode, capture = _current()
    return capture.read.get(lead_id) if mode == TASK else None


def note_handoff(transition_id: int) -> None:
    """The capture task's lifecycle step started the SQL handoff of this
    move in the move's own transaction; its announcement starts no other."""
    mode, capture = _current()
    if mode == TASK:
        capture.handoffs.add(transition_id)


def handoff_started(transition_id: int) -> bool:
    mode, capture = _current()
    return mode == TASK and transition_id in capture.handoffs


def task_enqueue(func: str, *args, cluster: str | None = None, task_name: str | None = None, **kwargs) -> None:
    """django-q2's async_task; inline when scoring's tasks are
    (MARTECH_SCORING["TASKS_SYNC"]): the capture task is the capture's scoring."""
    from django_q.tasks import async_task

    options = {"sync": settings.MARTECH_SCORING["TASKS_SYNC"]}
    if cluster:
        options["cluster"] = cluster
    if task_name:
        options["task_name"] = task_name
    async_task(func, *args, **kwargs, **options)


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
    from martech.crm import outbox as crm_outbox  # its rows held until the task ends (docs/crm.md)

    capture = _Capture(source=source, reason=reason, leads=dict.fromkeys(lead_ids),
                       created=dict.fromkeys(created_ids))
    # One read of the configuration's tokens for the whole task (it read them
    # up to 10 times a form: each receiver's cache check), and the wake-ups of
    # its commits sent once per key at its end.
    with configcache.snapshot(), taskqueue.coalesced_wakes(), crm_outbox.coalesced(lead_ids):
        _process(capture, lead_ids, event_ids, created_ids, transition_ids, source, reason)


def _process(capture: _Capture, lead_ids: list[int], event_ids: list[int], created_ids: list[int],
             transition_ids: list[int], source: str, reason: str) -> None:
    from martech import signals
    from martech.db import retry_on_conflict, run_in_transaction
    from martech.models import Event, Lead, StageTransition
    from martech.scoring import services as scoring
    from martech.signals import EventsWithLead

    with _mode(TASK, capture):
        # Its own transaction (scoring's), run again on a conflict.
        retry_on_conflict(scoring.scores_recompute)(lead_ids=lead_ids, reason=reason)
        # Read after scoring: receivers (journey conditions) see the score.
        # Leads merged or erased since are gone, and their events with them.
        leads = Lead.objects.select_related("lifecycle_stage").in_bulk(lead_ids)
        if not leads:
            return
        capture.read = leads
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
        # The rows read above serve the rules when nothing they read changed
        # since (routing's owner, when a condition reads the owner).
        rows = leads if scoring.lifecycle_rows_current(capture.changed_fields) else None
        for type_ids, group in by_types.items():
            scoring.lifecycle_apply(lead_ids=group, event_type_ids=type_ids, leads=rows)
        if events:
            signals.events_ingested.send(sender=Event, event_ids=[e[0] for e in events], with_lead=EventsWithLead(
                event_ids=frozenset(e[0] for e in events), lead_ids=frozenset(e[1] for e in events),
                type_names=frozenset(e[3] for e in events), campaign_ids=frozenset(e[4] for e in events if e[4])))
        again = sorted(capture.changed)
        # A change no fit rule reads (the owner routing set, a stage move
        # when no fit rule reads the stage) cannot move a score.
        rescore = bool(again) and (not capture.changed_fields
                                   or bool(capture.changed_fields & scoring.score_fields_read()))
    if again:
        # Out of the task's mode: what this changes wakes its usual tasks.
        if rescore:
            run_in_transaction(lambda: scoring.scores_recompute(lead_ids=again, reason="lead changed"))
        scoring.lifecycle_apply(lead_ids=again)
