"""Seed the demo data set (accounts, leads, consent, stage history, campaigns,
months of events, forms), then each later stage's own (``<app>/demo.py``).
Idempotent, as ``scripts/run`` needs on every start: a second run adds,
changes and queues nothing (martech.services.demo and each app's demo.py say
how; tests/test_seed_demo_twice.py compares every table).

Quiet: one line per stage (what it made, how long it took); django-q2's
per-task "Enqueued" log lines (hundreds on a first run) are held back while
the stages run, and their number is reported instead. What other code
prints on stdout meanwhile (the console email backend prints every demo
email the nurture stage sends: about a thousand lines) is held back too and
counted; ``--verbosity 2`` prints it after the summary."""
from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from django.core.management.base import BaseCommand, CommandError

from martech.apps import app_modules
from martech.services.demo import demo_seed


# django-q2 logs every enqueue at INFO on this logger.
TASK_QUEUE_LOGGER = "django-q"


class _Counting(logging.Filter):
    """Drops the task queue's INFO chatter, counting the enqueues; warnings
    and errors still pass."""

    def __init__(self) -> None:
        super().__init__()
        self.enqueued = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.getMessage().startswith("Enqueued"):
            self.enqueued += 1
        return False


@contextmanager
def quiet_task_queue() -> Iterator[_Counting]:
    logger = logging.getLogger(TASK_QUEUE_LOGGER)
    counting = _Counting()
    logger.addFilter(counting)
    try:
        yield counting
    finally:
        logger.removeFilter(counting)


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items()) or "nothing to do"


class Command(BaseCommand):
    help = ("Create realistic demo data. Safe to re-run: a second run adds, changes and queues nothing; "
            "a larger --leads adds the difference.")

    def add_arguments(self, parser):
        parser.add_argument("--leads", type=int, default=2000, help="How many demo leads in total (default 2000).")
        parser.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")

    def handle(self, *args, leads: int, no_progress: bool, **options):
        if leads < 0:
            raise CommandError("--leads must be zero or more.")
        progress = not no_progress and sys.stderr.isatty()
        counts: dict[str, int] = {}
        # self.stdout keeps the real stdout (bound when the command was made).
        held = io.StringIO()
        with quiet_task_queue() as queue, redirect_stdout(held):
            started = time.monotonic()
            stage = demo_seed(leads=leads, progress=progress).as_dict()
            self._stage("leads and history", stage, started)
            counts.update(stage)
            # Later stages add their demo data in <app>/demo.py: demo_seed(*, progress) -> {kind: created}.
            for module in app_modules("demo"):
                started = time.monotonic()
                stage = module.demo_seed(progress=progress)
                self._stage(module.__name__.rpartition(".")[0], stage, started)
                counts.update(stage)
        queued = f" {queue.enqueued} background task(s) queued." if queue.enqueued else ""
        self.stdout.write(self.style.SUCCESS(f"Demo data ready ({leads} leads). Created: {_summary(counts)}.{queued}"))
        other = held.getvalue()
        if other and options.get("verbosity", 1) >= 2:
            self.stdout.write(other, ending="")
        elif other:
            self.stdout.write(f"({other.count(chr(10))} line(s) of other output held back, such as the demo emails a "
                              "console email backend prints; --verbosity 2 shows them.)")

    def _stage(self, name: str, counts: dict[str, int], started: float) -> None:
        self.stdout.write(f"  {name}: {_summary(counts)} ({time.monotonic() - started:.1f} s)")
