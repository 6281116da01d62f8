"""django-q2 tasks: thin, take ids, call one service. A task only
wakes work up; every one is safe to run twice, so one whose transaction the
database aborted for a concurrent one runs again (``retry_on_conflict``).
The handoff notifications are retried by their sweep
(``handoffs_notify_sweep``): they send before they write, and each send is
recorded on its own."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction

from martech.db import retry_on_conflict


def enqueue(func: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(func, *args, sync=settings.MARTECH_SCORING["TASKS_SYNC"])


@retry_on_conflict
def rescore_leads(lead_ids: list[int], reason: str = "lead changed") -> int:
    from martech import configcache
    from martech.scoring import services

    with configcache.snapshot():  # the task's configuration checked with one query
        changed = services.scores_recompute(lead_ids=lead_ids, reason=reason)
        services.lifecycle_apply(lead_ids=lead_ids)
    return changed


@retry_on_conflict
def events_arrived(event_ids: list[int]) -> int:
    """Rescore the leads of new events, then run lifecycle rules (including
    event rules such as demo_requested -> SQL)."""
    from martech import configcache
    from martech.models import Event
    from martech.scoring import services

    rows = list(Event.objects.filter(pk__in=event_ids, lead__isnull=False).values_list("lead_id", "event_type_id"))
    lead_ids = sorted({lead for lead, _ in rows})
    with configcache.snapshot():  # the task's configuration checked with one query
        changed = services.scores_recompute(lead_ids=lead_ids, reason="event")
        for lead_id in lead_ids:
            services.lifecycle_apply(lead_ids=[lead_id], event_type_ids={t for lead, t in rows if lead == lead_id})
    return changed


@retry_on_conflict
def opportunity_changed(kind: str, lead_ids: list[int]) -> int:
    from martech.scoring import services

    with transaction.atomic():
        return len(services.opportunity_stage_apply(kind=kind, lead_ids=lead_ids))


@retry_on_conflict
def handoff_start(transition_id: int) -> None:
    from martech.scoring import services

    services.handoff_start(transition_id=transition_id)


def handoffs_sweep() -> int:
    """The schedule's sweep of SQL moves a lost wake-up left without a handoff."""
    from martech.scoring import services

    return services.handoffs_sweep()


@retry_on_conflict
def nightly_decay() -> int:
    """Decay lowers engagement with age: recompute every lead."""
    from martech.scoring import services

    changed = services.scores_recompute_all(reason="nightly decay")
    services.stale_mqls_flag()
    return changed


HANDOFF_NOTIFY_WAKE_KEY = "scoring.handoff_notify"


def handoffs_notify_wake_on_commit() -> None:
    """Run ``handoffs_notify_woken`` when the current transaction commits
    (debounced by key: one waiting task for every handoff started meanwhile).
    With TASKS_SYNC, inline after the commit."""
    if settings.MARTECH_SCORING["TASKS_SYNC"]:
        transaction.on_commit(handoffs_notify_woken)
        return
    from martech.taskqueue import wake_on_commit

    wake_on_commit("martech.scoring.tasks.handoffs_notify_woken", key=HANDOFF_NOTIFY_WAKE_KEY)


def handoffs_notify_woken() -> dict[str, int]:
    """Woken when a handoff started: the first try of the notifications of
    every handoff waiting for them (services.handoffs_notify)."""
    from martech.scoring import services
    from martech.taskqueue import woken

    woken(HANDOFF_NOTIFY_WAKE_KEY)  # before reading: a handoff committed later wakes another run
    return services.handoffs_notify()


def handoffs_notify_sweep() -> dict[str, int]:
    """The schedule's run: what a lost wake-up left, and the failed tries again
    (up to HANDOFF_NOTIFY_ATTEMPTS)."""
    from martech.scoring import services

    return services.handoffs_notify(retry=True)


def handoff_notify(handoff_id: int) -> None:
    """Email and webhook for one handoff, each at most once (tasks queued
    before the batch, ``handoffs_notify_woken``, and a manual resend): the
    sent time is recorded right after each succeeds, so a retry sends only
    what failed. A failure is kept on the handoff and raised, so django-q2
    records the task as failed and runs it again."""
    from django.db.models import F
    from django.utils import timezone

    from martech.scoring.models import Handoff
    from martech.scoring.services import handoff_notify_send

    handoff = Handoff.objects.select_related("lead", "owner").get(pk=handoff_id)
    sent, errors = handoff_notify_send(handoff)
    if errors:
        Handoff.objects.filter(pk=handoff.pk).update(**sent, last_error="; ".join(errors)[:2000],
                                                     notify_attempts=F("notify_attempts") + 1)
        raise RuntimeError("; ".join(errors))
    Handoff.objects.filter(pk=handoff.pk).update(**sent, notified_at=timezone.now())
