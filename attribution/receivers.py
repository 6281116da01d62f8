"""Subscriptions to martech's after-commit announcements: queue the work,
never do it in the sender's request."""
from __future__ import annotations

from django_q.tasks import async_task


def on_events_ingested(sender, event_ids: list[int], with_lead=None, **kwargs) -> None:
    # Touchpoints are a lead's: events stored without one need no task.
    ids = sorted(with_lead.event_ids) if with_lead is not None else list(event_ids)
    if ids:
        async_task("attribution.tasks.touchpoints_refresh", ids, group="attribution")

