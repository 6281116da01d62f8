"""python manage.py crm_emulator [--port N] [--latency S] [--error-rate R]: serve the HubSpot emulator."""
from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from martech.crm.emulators.base import Served
from martech.crm.emulators.hubspot import HubSpotEmulator


class Command(BaseCommand):
    help = "Run the local HubSpot emulator until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=settings.MARTECH_CRM["HUBSPOT_EMULATOR_PORT"])
        parser.add_argument("--latency", type=float, default=0.0)
        parser.add_argument("--error-rate", type=float, default=0.0)

    def handle(self, *args, **opts):
        app = HubSpotEmulator(latency=opts["latency"], error_rate=opts["error_rate"])
        app.add_owner(owner_id="9001", email="sales.rep@example.com", first_name="Sam", last_name="Rep")
        served = Served(app, port=opts["port"]).start()
        # The URL line is read by bench/crm_sync.py when it asks for port 0.
        self.stdout.write(f"HubSpot emulator on {served.url}")
        self.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            served.stop()
