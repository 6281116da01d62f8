"""django-q2 tasks: thin wake-ups; the database holds what is pending
(waiting assignments, overdue SLAs, unrouted leads), so a lost or doubled
run only delays work or finds nothing left to do."""
from __future__ import annotations

from django.conf import settings

from routing import services


def assign_waiting() -> int:
    return services.waiting_assign()


def escalate_sla() -> dict[str, int]:
    return services.sla_escalate()


def sweep_unrouted() -> int:
    return services.unrouted_sweep(hours=settings.MARTECH_ROUTING["SWEEP_HOURS"])
