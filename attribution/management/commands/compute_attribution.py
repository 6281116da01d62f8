from django.core.management.base import BaseCommand, CommandError

from attribution.computation import ALL_MODELS, attribution_compute
from attribution.models import Touchpoint
from attribution.touchpoints import touchpoints_rebuild
from martech.models import Lead


class Command(BaseCommand):
    help = "Rebuild touchpoints (optional) and materialize attribution credits for every opportunity."

    def add_arguments(self, parser):
        parser.add_argument("--model", action="append", choices=ALL_MODELS, help="Only this model (repeatable).")
        parser.add_argument("--rebuild-touchpoints", action="store_true", help="Rebuild every lead's touchpoints first.")

    def handle(self, *args, model=None, rebuild_touchpoints=False, **options):
        if rebuild_touchpoints:
            from tqdm import tqdm

            ids = list(Lead.objects.filter(events__isnull=False).distinct().values_list("pk", flat=True))
            for i in tqdm(range(0, len(ids), 2000), desc="touchpoints", unit="batch"):
                touchpoints_rebuild(lead_ids=ids[i : i + 2000])
            self.stdout.write(f"{Touchpoint.objects.count()} touchpoints")
        try:
            result = attribution_compute(models=model, progress=True)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{result['credits']} credits for {result['opportunities']} opportunities, {result['models']} model(s)"))
