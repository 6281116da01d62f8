"""Retention of closed routing assignments (martech.retention)."""
from __future__ import annotations

from datetime import datetime

from martech.retention import DataKind, delete_ids, next_after


def _assignments_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Assignments closed before the cutoff and no longer current, with
    their escalations (Django's cascade). Never the lead's current one
    (routing and the reps' open-lead caps read it), nor an open or worked
    one. The speed-to-lead report reads a lead's first assignment and first
    touch: keep assignments at least as long as the periods it reports on."""
    from routing.models import Assignment

    ids = list(Assignment.objects.filter(lifecycle=Assignment.Lifecycle.CLOSED, is_current=False,
                                         closed_at__lt=cutoff, pk__gt=after)
               .order_by("pk").values_list("pk", flat=True)[:limit])
    # Re-checked at the delete: a row reopened meanwhile is kept.
    return delete_ids(Assignment, list(Assignment.objects.filter(
        pk__in=ids, lifecycle=Assignment.Lifecycle.CLOSED, is_current=False).values_list("pk", flat=True))), \
        next_after(ids, limit)


RETENTION = [DataKind("assignments", "closed routing assignments", _assignments_batch)]
