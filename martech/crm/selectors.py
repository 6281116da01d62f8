"""Reads for the integration health page."""
from __future__ import annotations

import datetime as dt

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from martech.crm import objects
from martech.crm.models import Connection, OutboxItem, PullFailure, PushState, SyncCursor, SyncRun


def connection_health(*, connection: Connection) -> dict:
    """What the health page (and anything else asking) shows for one
    connection, read from the database only: a run that crashed or never
    finished counts as failed, never as a success; runs that only said
    "paused" are counted apart (the pause shows on its own)."""
    now = timezone.now()
    since = now - dt.timedelta(hours=24)
    runs = SyncRun.objects.filter(connection=connection, started_at__gte=since)
    counts = runs.aggregate(
        total=Count("pk", filter=Q(paused_until__isnull=True)),
        ok=Count("pk", filter=Q(paused_until__isnull=True, error="", failed=0, finished_at__isnull=False)),
        paused=Count("pk", filter=Q(paused_until__isnull=False)))
    outbox = OutboxItem.objects.filter(connection=connection).aggregate(
        backlog=Count("pk", filter=Q(status="pending")),
        oldest=Min("created_at", filter=Q(status="pending")),
        dead=Count("pk", filter=Q(status="dead")),
    )
    used = connection.api_calls_used if connection.api_calls_day == now.date() else 0
    pull_failures = _pull_failures(connection)
    failed_run = (runs.filter(paused_until__isnull=True).exclude(error="").order_by("-started_at")
                  .values("pk", "kind", "object", "started_at", "error").first())
    paused = connection.paused_until is not None and connection.paused_until > now
    crm_read = connection.crm_calls_at is not None and connection.crm_calls_limit
    return {
        "runs_24h": counts["total"],
        "runs_ok_24h": counts["ok"],
        "runs_failed_24h": counts["total"] - counts["ok"],
        "runs_paused_24h": counts["paused"],
        "success_rate_24h": round(100 * counts["ok"] / counts["total"], 1) if counts["total"] else None,
        "backlog": outbox["backlog"],
        "oldest_pending_at": outbox["oldest"],
        "oldest_age_seconds": int((now - outbox["oldest"]).total_seconds()) if outbox["oldest"] else None,
        "api_calls_used": used,
        "api_calls_limit": connection.daily_api_limit,
        "crm_calls_used": connection.crm_calls_used if crm_read else None,
        "crm_calls_limit": connection.crm_calls_limit if crm_read else None,
        "crm_calls_at": connection.crm_calls_at if crm_read else None,
        "last_error": connection.last_error,
        "last_error_at": connection.last_error_at,
        "last_failed_run": failed_run,
        "paused_until": connection.paused_until if paused else None,
        "pause_reason": connection.pause_reason if paused else "",
        "stopped_reason": connection.stopped_reason,
        "dead_letters": outbox["dead"],
        "by_object": _by_object(connection, now),
        "pull_failures_pending": sum(row["pending"] for row in pull_failures),
        "pull_failures_dead": sum(row["dead"] for row in pull_failures),
        "pull_failures": pull_failures,
    }


def _pushes_24h(connection: Connection, since) -> dict[str, dict[str, int]]:
    """Records pushed and failed per object type by the push runs since ``since`` (``SyncRun.by_object``)."""
    out: dict[str, dict[str, int]] = {}
    for by_object in SyncRun.objects.filter(connection=connection, kind=SyncRun.Kind.PUSH,
                                            started_at__gte=since).exclude(by_object={}).values_list("by_object",
                                                                                                       flat=True):
        for key, row in by_object.items():
            mine = out.setdefault(key, {"pushed": 0, "failed": 0})
            mine["pushed"] += int(row.get("pushed", 0))
            mine["failed"] += int(row.get("failed", 0))
    return out


def _rate(ok: int, failed: int) -> float | None:
    return round(100 * ok / (ok + failed), 1) if ok + failed else None


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
        connection=connection, kind=SyncRun.Kind.PULL, started_at__gte=now - dt.timedelta(hours=24),
        paused_until__isnull=True)
        .values("object").annotate(runs=Count("pk"), pulled_n=Sum("pulled"), failed_n=Sum("failed"),
                                   ok=Count("pk", filter=Q(error="", failed=0, finished_at__isnull=False)))}
    pushes = _pushes_24h(connection, now - dt.timedelta(hours=24))
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
            "pushed_24h": pushes.get(key, {}).get("pushed", 0), "push_failed_24h": pushes.get(key, {}).get("failed", 0),
            "push_rate_24h": _rate(pushes.get(key, {}).get("pushed", 0), pushes.get(key, {}).get("failed", 0)),
            "pulled_24h": pulls.get(key, {}).get("pulled_n") or 0,
            "pull_failed_24h": pulls.get(key, {}).get("failed_n") or 0,
            "pull_rate_24h": _rate(pulls.get(key, {}).get("pulled_n") or 0, pulls.get(key, {}).get("failed_n") or 0),
        })
    return rows



# --- The lead 360 page (the core offers the place) ----------------------------

RECORD_URL_SETTING = {"hubspot": "HUBSPOT_RECORD_URL", "salesforce": "SALESFORCE_RECORD_URL"}


def record_url(provider: str, remote_id: str, *, sobject: str = "") -> str:
    """The record's page in the CRM's own UI (MARTECH_CRM_*_RECORD_URL), or
    "" when none is configured."""
    from urllib.parse import quote

    from django.conf import settings

    template = settings.MARTECH_CRM.get(RECORD_URL_SETTING.get(provider, ""), "")
    if not template or not remote_id:
        return ""
    return template.replace("{object}", quote(sobject, safe="")).replace("{id}", quote(remote_id, safe=""))


def lead_crm(*, lead, user) -> dict:
    """The lead 360 page's CRM section: the lead's HubSpot and Salesforce
    records (with links when configured) and, for a user who may view the
    outbox, its sync state per connection. Two queries with sync state."""
    from martech.crm.models import Provider

    records = [
        {"provider": Provider.HUBSPOT.label, "what": "Contact", "id": lead.hubspot_id,
         "url": record_url(Provider.HUBSPOT, lead.hubspot_id or "")},
        {"provider": Provider.SALESFORCE.label, "what": "Lead", "id": lead.salesforce_lead_id,
         "url": record_url(Provider.SALESFORCE, lead.salesforce_lead_id or "", sobject="Lead")},
        {"provider": Provider.SALESFORCE.label, "what": "Contact", "id": lead.salesforce_contact_id,
         "url": record_url(Provider.SALESFORCE, lead.salesforce_contact_id or "", sobject="Contact")},
    ]
    sync = []
    show_sync = user is not None and user.has_perm("crm.view_outboxitem")
    if show_sync:
        states = {s.connection_id: s for s in PushState.objects.filter(object="contact", local_id=lead.pk)}
        waiting: dict[int, OutboxItem] = {}
        for item in (OutboxItem.objects.filter(object="contact", local_id=lead.pk, status__in=["pending", "dead"])
                     .select_related("connection").order_by("-created_at")[:20]):
            waiting.setdefault(item.connection_id, item)
        for connection in Connection.objects.filter(pk__in={*states, *waiting}).order_by("name"):
            state, item = states.get(connection.pk), waiting.get(connection.pk)
            sync.append({"connection": connection, "remote_id": state.remote_id if state else "",
                         "pushed_at": state.pushed_at if state else None, "item": item,
                         "url": record_url(connection.provider, state.remote_id if state else "",
                                           sobject="Contact" if lead.salesforce_contact_id else "Lead")})
    return {"records": records, "show_sync": show_sync, "sync": sync}
