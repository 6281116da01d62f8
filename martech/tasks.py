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


def capture_process(lead_ids: list[int], event_ids: list[int], created_ids: list[int], transition_ids: list[int],
                    source: str, reason: str = "form", pending_id: int | None = None) -> None:
    """Everything one stored form or event batch causes (scoring, routing,
    lifecycle with the SQL handoff, journeys), enqueued when its transaction
    commits (martech.services.capture). Each step retries its own conflicts.
    ``pending_id``: the capture's ``CapturePending`` row; gone, the capture
    was done by an earlier run and this one does nothing; deleted right
    after the capture's last step (a run that dies before the delete is done
    again by the sweep: every step is idempotent). A task queued before
    batches were captured this way (one lead: its id, and ``created`` a
    bool), or before captures had a row, runs the same way."""
    from martech.services import capture

    if pending_id is not None and not capture.pending_claim(pending_id):
        return
    if isinstance(lead_ids, int):
        lead_ids, created_ids = [lead_ids], [lead_ids] if created_ids else []
    try:
        capture.capture_process(lead_ids=lead_ids, event_ids=event_ids, created_ids=created_ids,
                                transition_ids=transition_ids, source=source, reason=reason)
    except Exception as exc:
        if pending_id is not None:
            capture.pending_failed(pending_id, exc)  # kept on the row for ops; the sweep runs it again
        raise
    if pending_id is not None:
        capture.pending_done(pending_id)


@retry_on_conflict
def captures_sweep() -> int:
    """Every minute: captures whose task was lost, enqueued again
    (martech.services.capture.pending_sweep)."""
    from martech.services.capture import pending_sweep

    return pending_sweep()


@retry_on_conflict
def event_partitions_ensure() -> list[str]:
    """PostgreSQL: the events table's partitions of this month and the next
    ones exist (martech/partitions.py); nothing elsewhere."""
    from martech.partitions import partitions_ensure

    return partitions_ensure()
