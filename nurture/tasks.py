"""Thin django-q2 tasks: they wake the engine; the database holds the work."""
from __future__ import annotations

from nurture.engine import enrollments_advance_due, messages_recover


def advance_due() -> int:
    return enrollments_advance_due()


def recover_messages() -> dict:
    return messages_recover()


def segments_sync() -> dict[int, int]:
    from nurture.services import segments_sync as sync

    return sync()
