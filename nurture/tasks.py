"""Thin django-q2 tasks: they wake the engine; the database holds the work."""
from __future__ import annotations

from nurture.engine import enrollments_advance_due, messages_recover

WAKE_KEY = "nurture.advance"


def wake_on_commit() -> None:
    """Run the due steps when the current transaction commits (debounced)."""
    from martech.taskqueue import wake_on_commit as wake

    wake("nurture.tasks.advance_woken", key=WAKE_KEY)


def advance_due() -> int:
    return enrollments_advance_due()


def advance_woken() -> int:
    """Woken when an enrollment became due now (a new enrollment, an event
    or a consent it waited for): the due steps at once, not at the next
    minute's ``advance_due``, which sweeps what a lost wake-up left."""
    from martech.taskqueue import woken

    woken(WAKE_KEY)  # before reading: an enrollment committed later wakes another run
    return enrollments_advance_due()


def recover_messages() -> dict:
    return messages_recover()


def segments_sync() -> dict[int, int]:
    from nurture.services import segments_sync as sync

    return sync()
