"""CRM owners pulled, and how often the slow, rarely changing reads are asked."""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone

from martech import hooks
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, TransientError
from martech.crm.models import Connection, CrmOwner, SyncCursor
from martech.crm.services.allowance import _count_calls, _crashed, _record_call_error, _record_error
from martech.crm.services.apply import _parse_time
from martech.db import run_in_transaction


def owners_pull(*, connection: Connection, connector: Connector | None = None) -> int:
    """Pull the CRM's owners into CrmOwner, then offer them to whoever
    provides ``crm_owners_pulled`` (routing links its reps by email)."""
    connector = connector or connector_for(connection)
    before = connector.stats.api_calls
    rows = connector.owners()
    for row in rows:
        CrmOwner.objects.update_or_create(connection=connection, remote_id=row["remote_id"],
                                          defaults={k: v for k, v in row.items() if k != "remote_id"})
    _count_calls(connection, connector.stats.api_calls - before, connector)
    hooks.call("crm_owners_pulled", provider=connection.provider, owners=rows)
    return len(rows)


def slow_ask_due(*, connection: Connection, key: str, now: dt.datetime | None = None) -> bool:
    """Whether the scheduled pull asks ``key`` ("owners", or "del:<key>" for
    deletions) this run: at most once in MARTECH_CRM_SLOW_PULL_MINUTES per
    connection, so an idle connection does not pay for them every five
    minutes. Taking it records the time (``SyncCursor.resume["asked_at"]``)."""
    now = now or timezone.now()
    every = dt.timedelta(minutes=settings.MARTECH_CRM["SLOW_PULL_MINUTES"])

    def take() -> bool:
        cursor, _ = SyncCursor.objects.select_for_update().get_or_create(connection=connection, object=key)
        asked = _parse_time((cursor.resume or {}).get("asked_at", ""))
        if asked is not None and now - asked < every:
            return False
        cursor.resume = {**(cursor.resume or {}), "asked_at": now.isoformat()}
        cursor.save(update_fields=["resume", "updated_at"])
        return True

    return run_in_transaction(take)


def owners_pull_recorded(*, connection: Connection, connector: Connector | None = None,
                         if_due: bool = False) -> int:
    """``owners_pull`` for the schedule and the command: a CRM error is
    recorded on the connection (last error; a 401 stops it) and -1 returned,
    so the object pulls that follow still run. ``if_due`` (the schedule):
    only when ``slow_ask_due``; else -2 and no call."""
    if connection.paused_until and connection.paused_until > timezone.now():
        return -1  # paused by a limit: the object pulls record the "paused until" runs
    if if_due and not slow_ask_due(connection=connection, key="owners"):
        return -2
    try:
        return owners_pull(connection=connection, connector=connector)
    except (TransientError, PermanentError) as exc:
        _record_call_error(connection, exc, prefix="owners pull: ")
        return -1
    except Exception as exc:  # noqa: BLE001 - recorded (``_crashed``); the object pulls still run
        _record_error(connection, f"owners pull: {_crashed(connection, exc)}")
        return -1
