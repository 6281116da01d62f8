"""Subscriptions to martech's after-commit announcements: queue the work,
never do it in the sender's request."""
from __future__ import annotations

from django_q.tasks import async_task


def on_lead_merged(sender, lead, merged_id: int, **kwargs) -> None:
    # Sent after the merge committed: the kept lead's touches and deals are recomputed by a task.
    async_task("attribution.tasks.lead_merged", lead.pk, group="attribution")


def on_events_ingested(sender, event_ids: list[int], with_lead=None, **kwargs) -> None:
    """New events' leads are noted as pending (one INSERT) and one debounced
    task is woken on the bulk cluster (``tasks.touchpoints_woken``): at 20
    forms a second one run rebuilds the touchpoints of every lead noted
    since the last, instead of one task per capture. Touchpoints are a
    lead's: events stored without one note nothing."""
    from attribution import tasks

    if with_lead is not None:
        lead_ids = sorted(with_lead.lead_ids)
        if not lead_ids:
            return
        _pending_insert("VALUES " + ", ".join(["(%s)"] * len(lead_ids)), lead_ids)
    else:
        # The sender did not say which leads: one INSERT ... SELECT over the events.
        if not event_ids or not _pending_insert(
                "SELECT DISTINCT lead_id FROM {events} WHERE id IN ({marks}) AND lead_id IS NOT NULL",
                list(event_ids)):
            return
    tasks.touchpoints_wake_on_commit()


def _pending_insert(rows: str, params: list[int]) -> int:
    """``INSERT INTO <pending> (lead_id) <rows>``: one statement, no
    transaction of its own (the receiver runs after the sender's commit)."""
    from django.db import connection

    from attribution.models import TouchpointPending
    from martech.models import Event

    qn = connection.ops.quote_name
    sql = f"INSERT INTO {qn(TouchpointPending._meta.db_table)} (lead_id) " + rows.format(
        events=qn(Event._meta.db_table), marks=", ".join(["%s"] * len(params)))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
