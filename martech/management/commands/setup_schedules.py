"""Write every app's declared periodic tasks to django-q2 (martech/schedules.py)."""
from django.core.management.base import BaseCommand

from martech.schedules import schedules_sync


class Command(BaseCommand):
    help = "Create or update the periodic tasks every app declares in <app>/schedules.py. Idempotent."

    def handle(self, *args, **options):
        written, removed = schedules_sync()
        self.stdout.write(self.style.SUCCESS(f"Schedules: {written} declared, {removed} stale removed."))
