"""Seed the demo data set (accounts, leads, consent, stage history, campaigns,
months of events, forms), then each later stage's own (``<app>/demo.py``).
Idempotent, as ``scripts/run`` needs on every start: a second run adds,
changes and queues nothing (martech.services.demo and each app's demo.py say
how; tests/test_seed_demo_twice.py compares every table)."""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from martech.apps import app_modules
from martech.services.demo import demo_seed


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
        result = demo_seed(leads=leads, progress=progress)
        counts = result.as_dict()
        # Later stages add their demo data in <app>/demo.py: demo_seed(*, progress) -> {kind: created}.
        for module in app_modules("demo"):
            counts.update(module.demo_seed(progress=progress))
        created = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Demo data ready ({leads} leads). Created: {created}."))
