"""python manage.py recompute_scores: recompute every lead's scores with the
active scoring model (decay included), then run the lifecycle rules."""
import sys

from django.core.management.base import BaseCommand
from tqdm import tqdm

from martech.models import Lead
from martech.scoring import services


class Command(BaseCommand):
    help = "Recompute all lead scores with the active scoring model."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=50000,
                            help="Lead ids per chunk (each its own transaction; at most 10,000 on SQLite).")
        parser.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")

    def handle(self, *args, batch_size: int, no_progress: bool, **options):
        bar = tqdm(total=Lead.objects.count(), desc="Recomputing scores", unit="lead",
                   disable=no_progress or not sys.stderr.isatty())
        changed = services.scores_recompute_all(batch_size=batch_size, progress=bar.update)
        bar.close()
        self.stdout.write(f"{changed} lead(s) changed score.")
