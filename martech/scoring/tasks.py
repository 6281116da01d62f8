"""django-q2 tasks: thin, take ids, call one service. A task only
wakes work up; every one is safe to run twice, so one whose transaction the
database aborted for a concurrent one runs again (``retry_on_conflict``).
``handoff_notify`` is left to django-q2's own retry: it sends before it
writes, and each send is recorded on its own."""
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


def handoff_notify(handoff_id: int) -> None:
    """Email and webhook for one handoff (``martech.notify``), each at most
    once: the sent time is recorded right after each succeeds, so a retry
    sends only what failed. A failure is kept on the handoff and raised,
    so django-q2 records the task as failed and runs it again."""
    from martech import notify
    from martech.scoring.models import Handoff

    conf = settings.MARTECH_SCORING
    handoff = Handoff.objects.select_related("lead", "owner", "task").get(pk=handoff_id)
    lead = handoff.lead
    text = (f"SQL handoff: {lead} (score {lead.total_score}) assigned to "
            f"{handoff.owner.username if handoff.owner else 'nobody'} at {handoff.started_at:%Y-%m-%d %H:%M} UTC")
    key = f"scoring:handoff:{handoff.pk}"
    errors = []
    if handoff.email_sent_at is None:
        recipients = list(conf["HANDOFF_NOTIFY_EMAILS"])
        if handoff.owner and handoff.owner.email:
            recipients.append(handoff.owner.email)
        if recipients:
            sent = notify.email_send(subject=f"New SQL: {lead}", body=text, to=sorted(set(recipients)),
                                     source="scoring:handoff", key=f"{key}:email")
            if sent.ok:
                Handoff.objects.filter(pk=handoff.pk).update(email_sent_at=sent.finished_at)
            else:
                errors.append(f"email: {sent.error}")
    if handoff.webhook_sent_at is None and conf["HANDOFF_WEBHOOK_URL"]:
        sent = notify.webhook_post(url=conf["HANDOFF_WEBHOOK_URL"], payload={
            "text": text, "lead_id": lead.pk, "handoff_id": handoff.pk}, source="scoring:handoff",
            key=f"{key}:webhook", timeout=conf["WEBHOOK_TIMEOUT"])
        if sent.ok:
            Handoff.objects.filter(pk=handoff.pk).update(webhook_sent_at=sent.finished_at)
        else:
            errors.append(f"webhook: {sent.error}")
    if errors:
        Handoff.objects.filter(pk=handoff.pk).update(last_error="; ".join(errors)[:2000])
        raise RuntimeError("; ".join(errors))
