"""python manage.py crm_emulator [--provider hubspot|salesforce] [--port N] [--latency S] [--error-rate R]
[--burst-429 N] [--daily-limit N] [--rate-limit 190/10s] [--search-rate 5/1s|off] [--bare]: serve a CRM emulator until interrupted,
with the fault modes the flags ask for (docs/crm.md, "Emulator").

It starts as a portal/org an operator set up for this project: the custom
properties and fields the connection check asks for exist (HubSpot
``martech_deal_id``/``martech_task_id`` with unique values and
``martech_score``; Salesforce ``Martech_Id__c`` External ID, Unique). With
``--bare`` it starts with the provider's standard ones only, to see what
``crm_sync --check`` asks for."""
from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from martech.crm.connectors.base import parse_rate

from martech.crm.emulators.base import Served
from martech.crm.emulators.hubspot import HubSpotEmulator


class Command(BaseCommand):
    help = "Run the local HubSpot or Salesforce emulator until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["hubspot", "salesforce"], default="hubspot")
        parser.add_argument("--port", type=int, default=None,
                            help="Default: MARTECH_CRM_HUBSPOT_EMULATOR_PORT / MARTECH_CRM_SALESFORCE_EMULATOR_PORT; "
                                 "0 = a free one.")
        parser.add_argument("--latency", type=float, default=0.0, help="Seconds added to every answer.")
        parser.add_argument("--error-rate", type=float, default=0.0,
                            help="Share of requests (0-1) answered 503.")
        parser.add_argument("--burst-429", type=int, default=0, metavar="N",
                            help="The first N requests answer 429 (HubSpot: policyName TEN_SECONDLY_ROLLING, no "
                                 "Retry-After; Salesforce: REQUEST_LIMIT_EXCEEDED with Retry-After: 1).")
        parser.add_argument("--daily-limit", type=int, default=None, metavar="N",
                            help="Requests allowed per day: then HubSpot answers 429 policyName DAILY, Salesforce "
                                 "403 REQUEST_LIMIT_EXCEEDED (Salesforce's default: 100000).")
        parser.add_argument("--rate-limit", default=None, metavar="190/10s",
                            help="HubSpot only: enforce this rolling window (429 policyName TEN_SECONDLY_ROLLING "
                                 "past it). The rate-limit headers are sent either way.")
        parser.add_argument("--search-rate", default=None, metavar="5/1s",
                            help="HubSpot only: search requests allowed per token (429 policyName SECONDLY past "
                                 "it); default HubSpot's documented 5/1s, 'off' for no limit.")
        parser.add_argument("--bare", action="store_true",
                            help="Without the custom properties/fields this project needs (as a new portal or org).")

    def handle(self, *args, **opts):
        conf = settings.MARTECH_CRM
        if opts["rate_limit"]:
            try:
                parse_rate(opts["rate_limit"])
            except ValueError as exc:
                raise CommandError(f"--rate-limit: {exc}") from None
            if opts["provider"] == "salesforce":
                raise CommandError("--rate-limit: Salesforce has no per-second window (its limit is the org's "
                                   "daily allowance: --daily-limit)")
        search_rate = opts["search_rate"]
        if search_rate is not None:
            if opts["provider"] == "salesforce":
                raise CommandError("--search-rate: HubSpot only (Salesforce's searches count against the org's "
                                   "daily allowance: --daily-limit)")
            if search_rate.strip().lower() != "off":
                try:
                    parse_rate(search_rate)
                except ValueError as exc:
                    raise CommandError(f"--search-rate: {exc} (or 'off')") from None
        for flag in ("burst_429", "daily_limit"):
            if opts[flag] is not None and opts[flag] < 0:
                raise CommandError(f"--{flag.replace('_', '-')}: must be 0 or more")
        if opts["provider"] == "salesforce":
            served = self._salesforce(opts, conf)
            label = "Salesforce"
        else:
            app = HubSpotEmulator(latency=opts["latency"], error_rate=opts["error_rate"],
                                  rate_limit=opts["rate_limit"], daily_limit=opts["daily_limit"])
            if search_rate is not None:
                app.search_rate = None if search_rate.strip().lower() == "off" else search_rate
            app.burst_429 = opts["burst_429"]
            if not opts["bare"]:
                app.add_project_properties()
            app.add_owner(owner_id="9001", email="sales.rep@example.com", first_name="Sam", last_name="Rep")
            port = conf["HUBSPOT_EMULATOR_PORT"] if opts["port"] is None else opts["port"]
            served = Served(app, port=port).start()
            label = "HubSpot"
        # The URL line is read by bench/crm_sync.py when it asks for port 0.
        self.stdout.write(f"{label} emulator on {served.url}")
        self.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            served.stop()

    @staticmethod
    def _salesforce(opts, conf) -> Served:
        from martech.crm.emulators.salesforce import SalesforceEmulator
        from martech.crm.emulators.tls import ensure_certificate

        # The same credentials the connector reads from the environment, so
        # the pair works out of the box; the key stays in var/ (git-ignored).
        cert, key = ensure_certificate(conf["SALESFORCE_EMULATOR_CERT_DIR"])
        app = SalesforceEmulator(latency=opts["latency"], error_rate=opts["error_rate"],
                                 client_id=conf["SALESFORCE_CLIENT_ID"], client_secret=conf["SALESFORCE_CLIENT_SECRET"],
                                 refresh_token=conf["SALESFORCE_REFRESH_TOKEN"],
                                 session_id=conf["SALESFORCE_ACCESS_TOKEN"],
                                 **({"daily_max": opts["daily_limit"]} if opts["daily_limit"] is not None else {}))
        app.burst_429 = opts["burst_429"]
        if not opts["bare"]:
            app.add_project_fields()
        app.add_user(user_id="005000000000009001", email="sales.rep@example.com", first_name="Sam", last_name="Rep")
        port = conf["SALESFORCE_EMULATOR_PORT"] if opts["port"] is None else opts["port"]
        return Served(app, port=port, ssl_context=(str(cert), str(key))).start()
