"""Retention of the CRM sync logs (martech.retention)."""
from __future__ import annotations

from datetime import datetime

from django.db.models import Max

from martech.retention import DataKind, delete_ids, next_after


def _sync_runs_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Sync runs started before the cutoff, except the latest of each
    (connection, kind, object): health shows when each last ran, however
    long ago."""
    from martech.crm.models import SyncRun

    latest = SyncRun.objects.values("connection", "kind", "object").annotate(last=Max("pk")).values("last")
    ids = list(SyncRun.objects.filter(started_at__lt=cutoff, pk__gt=after).exclude(pk__in=latest)
               .order_by("pk").values_list("pk", flat=True)[:limit])
    return delete_ids(SyncRun, ids), next_after(ids, limit)


def _webhooks_batch(cutoff: datetime, limit: int, after: int) -> tuple[int, int | None]:
    """Processed webhook receipts received before the cutoff (a provider does
    not replay an event that old; one not processed yet is kept)."""
    from martech.crm.models import WebhookReceipt

    ids = list(WebhookReceipt.objects.filter(received_at__lt=cutoff, processed_at__isnull=False, pk__gt=after)
               .order_by("pk").values_list("pk", flat=True)[:limit])
    return delete_ids(WebhookReceipt, ids), next_after(ids, limit)


RETENTION = [
    DataKind("sync_logs", "CRM sync runs", _sync_runs_batch),
    DataKind("sync_logs", "CRM webhook receipts", _webhooks_batch),
]
