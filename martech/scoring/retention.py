"""Retention of score history (martech.retention)."""
from __future__ import annotations

from datetime import datetime

from django.db.models import Exists, OuterRef, Q

from martech.retention import DataKind, delete_ids, next_after


def _newer_twice():
    """The row has at least two newer rows of its lead."""
    from martech.scoring.models import ScoreHistory

    newer = ScoreHistory.objects.filter(
        Q(changed_at__gt=OuterRef("changed_at")) | Q(changed_at=OuterRef("changed_at"), pk__gt=OuterRef("pk")),
        lead_id=OuterRef("lead_id"))
    return Exists(newer.order_by("pk").values("pk")[1:2])


def _score_history_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Score changes before the cutoff, except each lead's two latest: the
    lead page and the API show the latest row's breakdown, incremental
    scoring reads it, and routing reroutes a lead on its first score move
    only while it has at most one row (``routing.services.route``), so a lead
    scored more than once must keep two."""
    from martech.scoring.models import ScoreHistory

    prunable = ScoreHistory.objects.filter(_newer_twice())
    ids = list(prunable.filter(changed_at__lt=cutoff, pk__gt=after).order_by("pk").values_list("pk", flat=True)[:limit])
    # One DELETE that re-checks the two newer rows (nothing points at score history).
    return delete_ids(ScoreHistory, ids, unreferenced=prunable), next_after(ids, limit)


RETENTION = [DataKind("score_history", "score history", _score_history_batch)]
