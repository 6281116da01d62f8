"""Periodic tasks, declared in code (docs/style.md, 12).

Each app lists its schedules in ``<app>/schedules.py`` as ``SCHEDULES``, a
list of :class:`Periodic`. ``python manage.py setup_schedules`` (run by
``scripts/run`` and in every deployment after ``migrate``) writes them to
django-q2's Schedule table with ``update_or_create`` by name, so it is
idempotent, and removes schedules this code once declared (name prefix
``martech:``) that no app declares any more. A task only wakes work up; the
database holds what is pending (docs/architecture.md, Data rules), so a missed or doubled run is
harmless.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from martech.apps import app_modules

PREFIX = "martech:"


@dataclass(frozen=True)
class Periodic:
    name: str  # stored as "martech:<name>"
    func: str  # dotted path of the task function
    minutes: int | None = None  # every N minutes (schedule type MINUTES)
    cron: str | None = None  # or a cron expression (needs croniter)
    kwargs: dict = field(default_factory=dict)
    # Bulk work: run by the bulk cluster (MARTECH_BULK_CLUSTER) when there is one.
    bulk: bool = False

    def __post_init__(self):
        if (self.minutes is None) == (self.cron is None):
            raise ValueError(f"{self.name}: give exactly one of minutes or cron")


def declared() -> list[Periodic]:
    found: list[Periodic] = []
    for module in app_modules("schedules"):
        found.extend(getattr(module, "SCHEDULES", []))
    names = [p.name for p in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"Schedules declared twice: {', '.join(sorted(duplicates))}")
    return found


def schedules_sync() -> tuple[int, int]:
    """Write the declared schedules; returns (written, removed)."""
    from django_q.models import Schedule

    from martech.taskqueue import bulk_cluster

    wanted = declared()
    for p in wanted:
        values = {"func": p.func, "kwargs": p.kwargs or None, "repeats": -1,
                  "cluster": bulk_cluster() if p.bulk else None}
        if p.cron:
            values.update(schedule_type=Schedule.CRON, cron=p.cron, minutes=None)
        else:
            values.update(schedule_type=Schedule.MINUTES, minutes=p.minutes, cron=None)
        Schedule.objects.update_or_create(name=PREFIX + p.name, defaults=values)
    stale = Schedule.objects.filter(name__startswith=PREFIX).exclude(name__in=[PREFIX + p.name for p in wanted])
    removed, _ = stale.delete()
    return len(wanted), removed


SCHEDULES = [
    # Captures (a form, an event batch) whose task was lost, enqueued again
    # MARTECH_CAPTURE_SWEEP_AFTER seconds after their enqueue (martech.services.capture).
    Periodic(name="capture.sweep", func="martech.tasks.captures_sweep", minutes=1),
    # Double opt-in emails a lost wake-up left unsent; expiry of unconfirmed requests.
    Periodic(name="consent.confirmations", func="martech.tasks.consent_confirmations_send", minutes=5),
    # Retention (MARTECH_RETENTION): hourly, each run a bounded number of short
    # batches per kind (MAX_BATCHES), so a backlog is worked off over runs.
    Periodic(name="retention", func="martech.tasks.retention_apply", minutes=60, bulk=True),
    # PostgreSQL: the events table's month partitions, created three months ahead.
    Periodic(name="event_partitions", func="martech.tasks.event_partitions_ensure", minutes=1440, bulk=True),
]
