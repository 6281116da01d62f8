"""Retention of messages and step decisions (martech.retention), their
counts folded into StepTally so the workflow metrics survive."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from django.db import connection
from django.db.models import F

from martech.retention import DataKind, delete_ids, next_after, unreferenced

COUNTED = ("sent", "delivered", "opened", "clicked", "unsubscribed", "bounced")


def _locked(qs):
    # Two runs at once take different rows (PostgreSQL) rather than wait on each other.
    # of=self: the joins (the enrollment, the left join to messages) are read, not locked.
    if connection.features.has_select_for_update_skip_locked:
        return qs.select_for_update(skip_locked=True, of=("self",))
    return qs.select_for_update()


def _fold(counts: dict[tuple[int, str], Counter]) -> None:
    """Add ``counts`` to the tallies: missing rows inserted (a concurrent
    insert of the same row is ignored), then one UPDATE per row in key
    order (two runs lock tallies in the same order)."""
    from nurture.models import StepTally

    StepTally.objects.bulk_create([StepTally(workflow_id=w, step=s) for w, s in sorted(counts)], ignore_conflicts=True)
    for (workflow_id, step), c in sorted(counts.items()):
        StepTally.objects.filter(workflow_id=workflow_id, step=step).update(
            **{name: F(name) + c[name] for name in ("executed", *COUNTED) if c[name]})


def _messages_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Settled messages created before the cutoff (never one still queued,
    sending or in doubt: recovery needs those)."""
    from nurture.models import Message

    rows = list(_locked(Message.objects.filter(created_at__lt=cutoff, pk__gt=after).exclude(status__in=Message.UNSETTLED)
                        .order_by("pk"))
                .values_list("pk", "workflow_id", "step", "status", "delivered_at", "opened_at", "clicked_at",
                             "unsubscribed_at", "bounced_at")[:limit])
    counts: dict[tuple[int, str], Counter] = {}
    for _pk, wf, step, status, *stamps in rows:
        c = counts.setdefault((wf, step), Counter())
        c["sent"] += status == Message.Status.SENT
        for name, stamp in zip(COUNTED[1:], stamps):
            c[name] += stamp is not None
    _fold(counts)
    ids = [r[0] for r in rows]
    return delete_ids(Message, ids), next_after(ids, limit)


def _decisions_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Step executions (the decisions, with their idempotency keys) before
    the cutoff whose messages are gone already: an enrollment never runs a
    visit again (its key carries the visit number), so the key is not needed
    to stop a repeat. Messages go by their own days (keep those shorter)."""
    from nurture.models import StepExecution

    rows = list(_locked(unreferenced(StepExecution).filter(executed_at__lt=cutoff, pk__gt=after).order_by("pk"))
                .values_list("pk", "workflow_id", "step", "enrollment__is_test")[:limit])
    counts: dict[tuple[int, str], Counter] = {}
    for _pk, wf, step, is_test in rows:
        if not is_test:  # the metrics count no test run
            counts.setdefault((wf, step), Counter())["executed"] += 1
    _fold(counts)
    ids = [r[0] for r in rows]
    return delete_ids(StepExecution, ids, unreferenced=unreferenced(StepExecution)), next_after(ids, limit)


RETENTION = [
    DataKind("messages", "nurture messages", _messages_batch),
    DataKind("decisions", "nurture step decisions", _decisions_batch),
]
