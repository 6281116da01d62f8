"""Subscriptions to martech's after-commit announcements: queue the work,
never do it in the sender's request."""
from __future__ import annotations

from django_q.tasks import async_task

from martech.taskqueue import bulk_cluster


def on_lead_merged(sender, lead, merged_id: int, **kwargs) -> None:
    # Sent after the merge committed: the kept lead's touches and deals are recomputed by a task.
    async_task("attribution.tasks.lead_merged", lead.pk, group="attribution")


def on_events_ingested(sender, event_ids: list[int], with_lead=None, **kwargs) -> None:
    # Touchpoints are a lead's: events stored without one need no task.
    ids = sorted(with_lead.event_ids) if with_lead is not None else list(event_ids)
    if ids:
        async_task("attribution.tasks.touchpoints_refresh", ids, group="attribution", cluster=bulk_cluster())

