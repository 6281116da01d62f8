"""django-q2 tasks: thin, take ids, call one service. All are idempotent
(the services replace rows rather than add them), so a redelivery is safe,
and each is a transaction boundary run again on a deadlock or serialization
failure (martech.db.retry_on_conflict)."""
from __future__ import annotations

from attribution.computation import attribution_compute, attribution_refresh_leads
from martech.db import retry_on_conflict
from martech.models import Event


TOUCHPOINTS_WAKE_KEY = "attribution.touchpoints"


def touchpoints_wake_on_commit() -> None:
    """Run ``touchpoints_woken`` when the current transaction commits
    (debounced: one waiting task at a time, on the bulk cluster)."""
    from martech.taskqueue import bulk_cluster, wake_on_commit

    wake_on_commit("attribution.tasks.touchpoints_woken", key=TOUCHPOINTS_WAKE_KEY, cluster=bulk_cluster())


def touchpoints_woken() -> dict[str, int]:
    """Woken when events of leads were stored (attribution.receivers): the
    touchpoints of every lead noted pending, many captures' leads in one
    run. The schedule runs it every minute too, the sweep of a lost wake-up.

    It first waits MARTECH_ATTRIBUTION["TOUCHPOINTS_GATHER_SECONDS"] with
    the wake-up mark still set, so the captures committed meanwhile wake no
    task of their own and their leads are read by this run: touchpoints are
    not speed-to-lead work, and under load a run per capture cost more (its
    django-q2 overhead and fixed queries) than the refresh itself."""
    import time

    from django.conf import settings

    from martech.taskqueue import woken

    gather = settings.MARTECH_ATTRIBUTION["TOUCHPOINTS_GATHER_SECONDS"]
    if gather:
        time.sleep(gather)
    woken(TOUCHPOINTS_WAKE_KEY)  # before reading: a lead noted later wakes another run
    return touchpoints_pending_refresh()


def touchpoints_pending_refresh(*, batch: int = 500) -> dict[str, int]:
    """Rebuild the leads noted in ``TouchpointPending``, ``batch`` rows a
    transaction, until none is left. The rows are locked (SKIP LOCKED: a
    concurrent run takes other rows) and deleted in the transaction that
    rebuilds their leads, so a failure keeps them for the next run. A lead
    noted while a rebuild runs has a new row, which this run or the next
    one takes: its new events are read after that row was written."""
    totals: dict[str, int] = {"leads": 0, "runs": 0}
    while True:
        counts = _touchpoints_pending_batch(batch)
        if counts is None:
            return totals
        totals["runs"] += 1
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v


@retry_on_conflict
def _touchpoints_pending_batch(batch: int) -> dict[str, int] | None:
    from django.db import transaction

    from attribution.models import TouchpointPending

    with transaction.atomic():
        rows = list(TouchpointPending.objects.select_for_update(skip_locked=True).order_by("pk")
                    .values_list("pk", "lead_id")[:batch])
        if not rows:
            return None
        TouchpointPending.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        return attribution_refresh_leads(lead_ids={lead_id for _, lead_id in rows})


@retry_on_conflict
def touchpoints_refresh(event_ids: list[int]) -> dict[str, int]:
    """Rebuild the touchpoints of the leads behind ``event_ids``, then the
    credits of their opportunities. (New events go through the pending rows
    and ``touchpoints_woken``; kept for tasks queued before that and for
    callers with event ids.)"""
    lead_ids = set(Event.objects.filter(pk__in=event_ids, lead__isnull=False).values_list("lead_id", flat=True))
    return attribution_refresh_leads(lead_ids=lead_ids)


@retry_on_conflict
def lead_merged(lead_id: int) -> dict[str, int]:
    """A merge moved another lead's events, touchpoints and contact roles
    onto ``lead_id``: its touchpoints (one lead-creation touch, sessions
    across both histories) and its deals' credits and rollup days again."""
    return attribution_refresh_leads(lead_ids=[lead_id])


@retry_on_conflict
def opportunity_attribute(opportunity_id: int) -> dict[str, int]:
    return attribution_compute(opportunity_ids=[opportunity_id])


def attribution_recompute_all() -> dict[str, int]:
    """Nightly full run: relearns the data-driven models over every journey
    (incremental runs reuse their last values) and catches anything missed."""
    return attribution_compute()


@retry_on_conflict
def opportunities_attribute(opportunity_ids: list[int]) -> dict[str, int]:
    """Recompute a batch of deals' credits (what an exchange rate change moved)."""
    return attribution_compute(opportunity_ids=opportunity_ids)


@retry_on_conflict
def exchange_rates_fetch() -> dict[str, int]:
    """Fetch the configured exchange rates (MARTECH_RATES_URL); nothing when none is set."""
    from attribution.money import exchange_rates_fetch as fetch

    return fetch()


def forecast_snapshot() -> dict[str, int]:
    """Today's forecast per month and source, for accuracy later (idempotent per day)."""
    from attribution.forecast import forecast_snapshot_take

    return forecast_snapshot_take()
