"""Reads for the integration health page."""
from __future__ import annotations

import datetime as dt

from django.db.models import Count, Min, Q
from django.utils import timezone

from martech.crm import objects
from martech.crm.models import Connection, OutboxItem, PullFailure, PushState, SyncCursor, SyncRun


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
    pull_failures = _pull_failures(connection)
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
        "by_object": _by_object(connection, now),
        "pull_failures_pending": sum(row["pending"] for row in pull_failures),
        "pull_failures_dead": sum(row["dead"] for row in pull_failures),
        "pull_failures": pull_failures,
    }


def _pull_failures(connection: Connection) -> list[dict]:
    """Pulled records not applied yet, per object or link type: pending
    (retried by the next pulls) and dead (waiting for "retry now")."""
    links = {link.key: link.label for obj in objects.all_types() for link in obj.links}
    rows = (PullFailure.objects.filter(connection=connection).exclude(status=PullFailure.Status.RESOLVED)
            .values("object").annotate(pending=Count("pk", filter=Q(status=PullFailure.Status.PENDING)),
                                       dead=Count("pk", filter=Q(status=PullFailure.Status.DEAD)))
            .order_by("object"))
    out = []
    for row in rows:
        key = row["object"]
        label = links.get(key) or (objects.get(key).label if key in {o.key for o in objects.all_types()} else key)
        out.append({"object": key, "label": label, "pending": row["pending"], "dead": row["dead"]})
    return out


def _by_object(connection: Connection, now) -> list[dict]:
    """Per object type: backlog, oldest pending, dead letters, records in
    sync (pushed or pulled), the pull cursor, and the last 24 h of pulls."""
    outbox = {row["object"]: row for row in OutboxItem.objects.filter(connection=connection).values("object")
              .annotate(backlog=Count("pk", filter=Q(status="pending")),
                        oldest=Min("created_at", filter=Q(status="pending")),
                        dead=Count("pk", filter=Q(status="dead")))}
    synced = dict(PushState.objects.filter(connection=connection).values("object").annotate(n=Count("pk"))
                  .values_list("object", "n"))
    cursors = dict(SyncCursor.objects.filter(connection=connection).values_list("object", "value"))
    pulls = {row["object"]: row for row in SyncRun.objects.filter(
        connection=connection, kind=SyncRun.Kind.PULL, started_at__gte=now - dt.timedelta(hours=24))
        .values("object").annotate(runs=Count("pk"), ok=Count("pk", filter=Q(error="", failed=0)))}
    rows = []
    keys = {o.key for o in objects.all_types()}
    for key in sorted(keys | set(outbox) | set(synced)):
        row = outbox.get(key, {})
        label = objects.get(key).label if key in keys else f"{key} (not registered)"
        rows.append({
            "object": key, "label": label, "backlog": row.get("backlog", 0), "dead": row.get("dead", 0),
            "oldest_age_seconds": int((now - row["oldest"]).total_seconds()) if row.get("oldest") else None,
            "in_sync": synced.get(key, 0), "cursor": cursors.get(key, ""),
            "pull_runs_24h": pulls.get(key, {}).get("runs", 0), "pull_ok_24h": pulls.get(key, {}).get("ok", 0),
        })
    return rows
