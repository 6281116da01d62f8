"""The API allowance: calls counted, pauses after a rate limit, errors and crashed runs recorded."""
from __future__ import annotations

import datetime as dt
import logging

from django.utils import timezone

from martech.crm.connectors.base import AuthError, Connector, PermanentError, RateLimited, TransientError
from martech.crm.models import Connection, SyncRun

log = logging.getLogger(__name__)


# --- API allowance ------------------------------------------------------------

def _count_calls(connection: Connection, n: int, connector: Connector | None = None) -> None:
    """Count ``n`` calls against today's allowance, and take the CRM's own
    figure when the last answer carried it (``connector.allowance_seen()``):
    kept as ``crm_calls_*``; for a connector whose figure is the org's
    allowance itself (``allowance_from_crm``: Salesforce's Sforce-Limit-Info)
    it also replaces our count and limit, so other integrations' calls count.

    Nothing to write (no call, the day and the CRM's figure those already
    written: a drain's closing count after its batch counted its own call)
    writes nothing."""
    now = timezone.now()
    today = now.date()
    seen = getattr(connector, "allowance_seen", None)
    figure = seen() if seen is not None else None
    if (n == 0 and connection.api_calls_day == today
            and (figure is None or figure[1] <= 0
                 or (figure[0], figure[1]) == (connection.crm_calls_used, connection.crm_calls_limit))):
        return
    if connection.api_calls_day != today:
        connection.api_calls_day, connection.api_calls_used = today, 0
    connection.api_calls_used += n
    fields = {"api_calls_day": today}
    if figure is not None and figure[1] > 0:
        used, limit = figure
        connection.crm_calls_used, connection.crm_calls_limit, connection.crm_calls_at = used, limit, now
        fields.update(crm_calls_used=used, crm_calls_limit=limit, crm_calls_at=now)
        if getattr(connector, "allowance_from_crm", False):
            connection.api_calls_used, connection.daily_api_limit = used, limit
            fields["daily_api_limit"] = limit
    fields["api_calls_used"] = connection.api_calls_used
    Connection.objects.filter(pk=connection.pk).update(**fields)


def _allowance(connection: Connection) -> tuple[int, int]:
    """(calls left today, the allowance they are left of): our count against
    ``daily_api_limit``, or the CRM's own figure when one read today leaves
    fewer (HubSpot's daily headers)."""
    now = timezone.now()
    left, limit = connection.daily_api_limit, connection.daily_api_limit
    if connection.api_calls_day == now.date():
        left = max(connection.daily_api_limit - connection.api_calls_used, 0)
    if connection.crm_calls_limit and connection.crm_calls_at and connection.crm_calls_at.date() == now.date():
        crm_left = max(connection.crm_calls_limit - (connection.crm_calls_used or 0), 0)
        if crm_left < left:
            left, limit = crm_left, connection.crm_calls_limit
    return left, limit


def budget_left(connection: Connection) -> int:
    """Calls left today (``_allowance``)."""
    return _allowance(connection)[0]


def _allowance_text(connection: Connection) -> str:
    """Today's use against the allowance, ours and the CRM's when read today ("250 of 250 calls")."""
    text = f"{connection.api_calls_used} of {connection.daily_api_limit} calls"
    if connection.crm_calls_limit and connection.crm_calls_at and \
            connection.crm_calls_at.date() == timezone.now().date() and \
            (connection.crm_calls_used, connection.crm_calls_limit) != (connection.api_calls_used,
                                                                        connection.daily_api_limit):
        text += f"; the CRM counts {connection.crm_calls_used} of {connection.crm_calls_limit}"
    return text


# --- pauses: rate, daily and org limits ---------------------------------------

# Salesforce's allowance is a rolling 24 h one with no reset time to read:
# a paused connection looks again (``allowance_refresh`` reads /limits at the
# start of the next scheduled drain) this long after.
SALESFORCE_RECHECK = dt.timedelta(hours=1)
# A limit answer that says nothing about its window: HubSpot's documented ten seconds.
DEFAULT_LIMIT_WAIT = 10.0


def pause_end(connection: Connection, exc: RateLimited, now: dt.datetime | None = None) -> dt.datetime:
    """When a limit answer's window resets. A daily limit: HubSpot resets at
    midnight in the portal's time zone, which the private-app API does not
    say, so midnight UTC (a pause of at most the zone's offset too long or
    too short; a call refused early pauses again); Salesforce's org
    allowance rolls over 24 h: look again after SALESFORCE_RECHECK. Any
    other: Retry-After, else the window the headers gave
    (X-HubSpot-RateLimit-Interval-Milliseconds), else ten seconds."""
    now = now or timezone.now()
    if exc.daily:
        if connection.provider == "salesforce":
            return now + SALESFORCE_RECHECK
        utc = now.astimezone(dt.timezone.utc)
        return dt.datetime.combine(utc.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    seconds = exc.retry_after if exc.retry_after is not None else exc.wait
    return now + dt.timedelta(seconds=seconds if seconds is not None else DEFAULT_LIMIT_WAIT)


def connection_pause(*, connection: Connection, until: dt.datetime, reason: str) -> dt.datetime:
    """Pause ``connection`` until ``until`` (a later pause already set is
    kept): drains and pulls record a "paused" run and do nothing until then.
    The reason is the connection's last error too. Returns the pause end."""
    if connection.paused_until and connection.paused_until > until:
        until = connection.paused_until
    now = timezone.now()
    connection.paused_until, connection.pause_reason = until, reason[:2000]
    connection.last_error, connection.last_error_at = f"Paused until {until.isoformat()}: {reason}"[:2000], now
    Connection.objects.filter(pk=connection.pk).update(
        paused_until=until, pause_reason=connection.pause_reason, last_error=connection.last_error,
        last_error_at=now)
    log.warning("CRM connection %s paused until %s: %s", connection.pk, until.isoformat(), reason)
    return until


def _pause_for(connection: Connection, exc: RateLimited) -> dt.datetime:
    """Pause for a limit answer (once per exception: the drain and the push
    of a batch both see it) and return the pause end."""
    until = getattr(exc, "pause_until", None)
    if until is None:
        until = connection_pause(connection=connection, until=pause_end(connection, exc), reason=str(exc))
        exc.pause_until = until
    return until


def paused_run(connection: Connection, kind: str, obj: str = "") -> SyncRun | None:
    """A paused connection's run: recorded as "paused until ..." and nothing
    else done. None when the connection is not paused (an expired pause is
    cleared here)."""
    now = timezone.now()
    if connection.paused_until is None:
        return None
    if connection.paused_until <= now:
        connection.paused_until, connection.pause_reason = None, ""
        Connection.objects.filter(pk=connection.pk, paused_until__lte=now).update(paused_until=None,
                                                                                  pause_reason="")
        return None
    return SyncRun.objects.create(
        connection=connection, kind=kind, object=obj, started_at=now, finished_at=now,
        paused_until=connection.paused_until,
        error=f"Paused until {connection.paused_until.isoformat()}: {connection.pause_reason}"[:4000])


def _crashed(connection: Connection, exc: Exception) -> str:
    """An unexpected exception in a run (a bug, an OSError): logged, and its
    text recorded on the connection and returned for the run's error, so the
    run shows as failed and the next connection's work goes on. A database
    conflict goes up instead, to the transaction boundary that retries it."""
    from martech.db import is_conflict

    if is_conflict(exc):
        raise exc
    log.error("CRM connection %s: run crashed", connection.pk, exc_info=exc)
    message = f"Crashed: {type(exc).__name__}: {exc}"[:2000]
    _record_error(connection, message)
    return message


def crash_record(*, connection: Connection, kind: str, exc: Exception, obj: str = "") -> SyncRun:
    """A run for a crash outside any run (the schedule's loop over
    connections): failed, with the error, also the connection's last error."""
    message = f"Crashed: {type(exc).__name__}: {exc}"[:2000]
    _record_error(connection, message)
    now = timezone.now()
    return SyncRun.objects.create(connection=connection, kind=kind, object=obj, error=message, started_at=now,
                                  finished_at=now)


def _record_call_error(connection: Connection, exc: Exception, prefix: str = "") -> None:
    """A call's failure on the connection: a limit pauses it, an AuthError
    stops it, anything else is its last error."""
    if isinstance(exc, RateLimited):
        _pause_for(connection, exc)
    else:
        _record_error(connection, f"{prefix}{exc}"[:2000], stop=isinstance(exc, AuthError))


def allowance_refresh(*, connection: Connection, connector: Connector) -> bool:
    """Take the daily allowance from the CRM's own count when the connector
    can read it (Salesforce ``/limits``: DailyApiRequests Max/Remaining):
    the connection's ``daily_api_limit`` becomes Max and today's use
    Max - Remaining, which also covers calls other integrations made
    against the same org. Returns False (stored figures kept, error
    recorded) when the CRM cannot say, whatever the failure (an OSError
    reading a certificate included: the drain goes on with the stored
    figures); an expired session raises AuthError like any call, and a
    limit answer (the org's allowance spent) raises RateLimited, which
    pauses the connection."""
    read = getattr(connector, "limits", None)
    if read is None:
        return False
    try:
        limits = read()
    except (AuthError, RateLimited):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the connection; the drain goes on
        if not isinstance(exc, (TransientError, PermanentError)):
            log.exception("reading the API allowance of CRM connection %s", connection.pk)
            exc = f"{type(exc).__name__}: {exc}"
        _record_error(connection, f"reading the API allowance: {exc}")
        return False
    if limits.get("max", 0) <= 0:
        return False
    now = timezone.now()
    connection.daily_api_limit = limits["max"]
    connection.api_calls_day = now.date()
    connection.api_calls_used = max(limits["max"] - limits.get("remaining", 0), 0)
    connection.crm_calls_used, connection.crm_calls_limit, connection.crm_calls_at = (
        connection.api_calls_used, connection.daily_api_limit, now)
    Connection.objects.filter(pk=connection.pk).update(
        daily_api_limit=connection.daily_api_limit, api_calls_day=connection.api_calls_day,
        api_calls_used=connection.api_calls_used, crm_calls_used=connection.crm_calls_used,
        crm_calls_limit=connection.crm_calls_limit, crm_calls_at=now)
    return True


def _record_error(connection: Connection, message: str, *, stop: bool = False) -> None:
    connection.last_error, connection.last_error_at = message[:2000], timezone.now()
    fields = {"last_error": connection.last_error, "last_error_at": connection.last_error_at}
    if stop:
        connection.stopped_reason = message[:2000]
        fields["stopped_reason"] = connection.stopped_reason
    Connection.objects.filter(pk=connection.pk).update(**fields)
