"""django-q2 tasks: thin, take ids, call one service.

The schedule's tasks loop over connections; each connection's work runs on
its own (``_isolated``): a crash in one (any exception, after the usual
retry of a database conflict) is logged and recorded on that connection (its
last error, a failed run) and the loop goes on with the next one."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from martech.crm import services
from martech.crm.connectors import connector_for
from martech.crm.models import Connection, SyncRun
from martech.db import retry_on_conflict

log = logging.getLogger(__name__)
T = TypeVar("T")


def _isolated(connection: Connection, kind: str, work: Callable[[], T]) -> T | None:
    try:
        return retry_on_conflict(work)()
    except Exception as exc:  # noqa: BLE001 - recorded on this connection; the others go on
        log.exception("CRM %s of connection %s crashed", kind, connection.pk)
        services.crash_record(connection=connection, kind=kind, exc=exc)
        return None


def drain_outbox() -> dict[str, int]:
    out = {}
    for connection in Connection.objects.filter(is_active=True, stopped_reason="").order_by("pk"):
        # Each run starts from the CRM's own count of the daily allowance (Salesforce /limits).
        run = _isolated(connection, SyncRun.Kind.PUSH,
                        lambda c=connection: services.outbox_drain(connection=c, refresh_allowance=True))
        out[connection.provider] = run.pushed if run is not None else 0
    return out


def drain_connection(connection_id: int) -> int:
    """One connection's drain, woken when a write queued its records
    (martech.crm.outbox): the once-a-minute ``drain_outbox`` sweeps what a
    lost wake-up left and reads the CRM's allowance. Returns pushed."""
    from martech.taskqueue import woken

    woken(f"crm.drain:{connection_id}")  # before reading: a later write wakes another drain
    connection = Connection.objects.filter(pk=connection_id, is_active=True, stopped_reason="").first()
    if connection is None:
        return 0
    run = _isolated(connection, SyncRun.Kind.PUSH, lambda: services.outbox_drain(connection=connection))
    return run.pushed if run is not None else 0


def pull_all() -> dict[str, int]:
    """Pull every object type each connection syncs and has pull mappings
    for, each followed by the links of it the connector syncs, then the
    deletions the connector can list (links first, then records). Owners
    and deletions only once in MARTECH_CRM_SLOW_PULL_MINUTES; one connector
    per connection, which first reads every type's first page in one call
    where it can (``services.pull_prefetch``), so an idle connection costs
    one call per run (Salesforce) or one per object type (HubSpot). A
    connection paused by a limit records one "paused until" run and is
    skipped."""
    out: dict[str, int] = {}
    for connection in Connection.objects.filter(is_active=True, stopped_reason="").order_by("pk"):
        paused = services.paused_run(connection, SyncRun.Kind.PULL)
        if paused is not None:
            out[f"{connection.provider}:paused"] = 0
            continue
        _isolated(connection, SyncRun.Kind.PULL, lambda c=connection: _pull_connection(c, out))
    return out


def _pull_connection(connection: Connection, out: dict[str, int]) -> None:
    connector = connector_for(connection)
    # An owners failure is recorded on the connection and does not stop the object pulls.
    out[f"{connection.provider}:owners"] = services.owners_pull_recorded(connection=connection,
                                                                         connector=connector, if_due=True)
    keys = services.pulled_object_keys(connection=connection, connector=connector)
    services.pull_prefetch(connection=connection, connector=connector, keys=keys)
    for key in keys:
        run = services.pull_changes(connection=connection, obj=key, connector=connector)
        out[f"{connection.provider}:{key}"] = run.pulled
        # Then its links (campaign members, contact roles): their parents are here now.
        for link in services.pulled_link_keys(connection=connection, obj=key, connector=connector):
            out[f"{connection.provider}:{link}"] = services.links_pull(connection=connection, link=link,
                                                                       connector=connector).pulled
    # Deletions made in the CRM (Salesforce Get Deleted), once per object per due run.
    for run in services.deletions_pull_recorded(connection=connection, keys=keys, connector=connector,
                                                if_due=True):
        out[f"{connection.provider}:{run.object}"] = run.pulled


@retry_on_conflict
def process_webhooks(receipt_ids: list[int]) -> int:
    return services.webhook_process(receipt_ids=receipt_ids)


@retry_on_conflict
def pull_one(connection_id: int, key: str) -> int:
    """One object or link type's pull (its due failures first): the admin's
    "retry now" wakes it. A stopped or inactive connection pulls nothing."""
    connection = Connection.objects.filter(pk=connection_id, is_active=True, stopped_reason="").first()
    if connection is None:
        return 0
    return services.pull_one(connection=connection, key=key).recovered


@retry_on_conflict
def lists_sweep() -> int:
    """Queue the segment mirrors whose membership changed with no write
    announcing it (conditions on time); martech.crm.lists."""
    from martech.crm.lists import lists_sweep as sweep

    return sweep()
