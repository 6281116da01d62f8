"""django-q2 tasks of the core: thin, take ids, call one service (docs/style.md, 12);
each is safe to run twice and reruns a transaction the database aborted for
a concurrent one (``retry_on_conflict``)."""
from __future__ import annotations

from martech.db import retry_on_conflict


@retry_on_conflict
def consent_confirmations_send(ids: list[int] | None = None) -> int:
    """Woken after a double opt-in submission commits (its ids); the
    schedule runs it without ids to sweep what a lost wake-up left."""
    from martech.services.preferences import consent_confirmations_expire, consent_confirmations_send as send

    if ids is None:
        consent_confirmations_expire()
    return send(ids=ids)


@retry_on_conflict
def retention_apply() -> dict[str, int]:
    from martech.retention import retention_apply as apply

    return apply()


@retry_on_conflict
def event_partitions_ensure() -> list[str]:
    """PostgreSQL: the events table's partitions of this month and the next
    ones exist (martech/partitions.py); nothing elsewhere."""
    from martech.partitions import partitions_ensure

    return partitions_ensure()
