"""Reads for the integration health page."""
from __future__ import annotations

import datetime as dt

from django.db.models import Count, Min, Q
from django.utils import timezone

from martech.crm.models import Connection, OutboxItem, SyncRun


def connection_health(*, connection: Connection) -> dict:
    now = timezone.now()
    runs = SyncRun.objects.filter(connection=connection, started_at__gte=now - dt.timedelta(hours=24))
    counts = runs.aggregate(total=Count("pk"), ok=Count("pk", filter=Q(error="", failed=0)))
    outbox = OutboxItem.objects.filter(connection=connection).aggregate(
        backlog=Count("pk", filter=Q(status="pending")),
        oldest=Min("created_at", filter=Q(status="pending")),
        dead=Count("pk", filter=Q(status="dead")),
    )
    used = connection.api_calls_used if connection.api_calls_day == now.date() else 0
    return {
        "runs_24h": counts["total"],
        "success_rate_24h": round(100 * counts["ok"] / counts["total"], 1) if counts["total"] else None,
        "backlog": outbox["backlog"],
        "oldest_age_seconds": int((now - outbox["oldest"]).total_seconds()) if outbox["oldest"] else None,
        "api_calls_used": used,
        "api_calls_limit": connection.daily_api_limit,
        "last_error": connection.last_error,
        "last_error_at": connection.last_error_at,
        "stopped_reason": connection.stopped_reason,
        "dead_letters": outbox["dead"],
    }
