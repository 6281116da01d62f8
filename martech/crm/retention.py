"""Retention of the CRM sync logs (martech.retention)."""
from __future__ import annotations

from datetime import datetime

from django.db.models import Max

from martech.retention import DataKind, delete_ids


def _sync_logs_batch(cutoff: datetime, limit: int) -> int:
    """Sync runs started before the cutoff, except the latest of each
    (connection, kind, object): health shows when each last ran, however
    long ago. Then processed webhook receipts received before it (a replay
    of an event that old is not expected)."""
    from martech.crm.models import SyncRun, WebhookReceipt

    latest = SyncRun.objects.values("connection", "kind", "object").annotate(last=Max("pk")).values("last")
    ids = list(SyncRun.objects.filter(started_at__lt=cutoff).exclude(pk__in=latest)
               .order_by("pk").values_list("pk", flat=True)[:limit])
    if len(ids) < limit:
        ids_w = list(WebhookReceipt.objects.filter(received_at__lt=cutoff, processed_at__isnull=False)
                     .order_by("pk").values_list("pk", flat=True)[:limit - len(ids)])
        return delete_ids(SyncRun, ids) + delete_ids(WebhookReceipt, ids_w)
    return delete_ids(SyncRun, ids)


RETENTION = [DataKind("sync_logs", "CRM sync logs", _sync_logs_batch)]
