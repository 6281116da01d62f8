"""Subscriptions to martech's after-commit announcements: queue the work,
never do it in the sender's request."""
from __future__ import annotations

from django_q.tasks import async_task


def on_events_ingested(sender, event_ids: list[int], **kwargs) -> None:
    if event_ids:
        async_task("attribution.tasks.touchpoints_refresh", list(event_ids), group="attribution")

