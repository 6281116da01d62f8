"""python manage.py crm_sync [--provider P] [--object O] [--full] [--dry-run] [--push-only|--pull-only]"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from martech.crm import outbox, services
from martech.crm.models import Connection, CrmObject, OutboxItem


class Command(BaseCommand):
    help = "Push the CRM outbox and pull changes since the stored cursor."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["hubspot", "salesforce"])
        parser.add_argument("--object", default="contact", choices=[c.value for c in CrmObject])
        parser.add_argument("--full", action="store_true", help="Ignore cursors; queue every record for push.")
        parser.add_argument("--dry-run", action="store_true", help="Pull and convert but write nothing; no push.")
        parser.add_argument("--no-push", action="store_true")
        parser.add_argument("--no-pull", action="store_true")
        parser.add_argument("--batch", type=int, default=None,
                            help="Outbox items per drain batch (default MARTECH_CRM_DRAIN_BATCH). Salesforce sends "
                                 "a batch larger than MARTECH_CRM_SALESFORCE_BULK_ABOVE through Bulk API 2.0.")

    def handle(self, *args, **opts):
        connections = Connection.objects.filter(is_active=True)
        if opts["provider"]:
            connections = connections.filter(provider=opts["provider"])
        if not connections.exists():
            raise CommandError(json.dumps({"error": {"code": "no_connection",
                                                     "message": "No active CRM connection matches."}}))
        if opts["object"] != "contact":
            raise CommandError(json.dumps({"error": {"code": "object_not_supported",
                                                     "message": f"Sync of {opts['object']} is not implemented yet."}}))
        if opts["batch"] is not None and opts["batch"] < 1:
            raise CommandError(json.dumps({"error": {"code": "invalid", "field": "batch",
                                                     "message": "--batch must be 1 or more."}}))
        for connection in connections:
            if not opts["no_push"] and not opts["dry_run"]:
                if opts["full"]:
                    outbox.queue_full(connection=connection)
                due = OutboxItem.objects.filter(connection=connection, status="pending").count()
                with tqdm(total=due, desc=f"{connection.provider} push", unit="rec",
                          disable=not self.stdout.isatty()) as bar:
                    run = services.outbox_drain(connection=connection, progress=bar, batch=opts["batch"])
                self._report(run)
            if not opts["no_pull"]:
                with tqdm(desc=f"{connection.provider} pull", unit="rec", disable=not self.stdout.isatty()) as bar:
                    run = services.pull_changes(connection=connection, obj=opts["object"], full=opts["full"],
                                                dry_run=opts["dry_run"], progress=bar)
                self._report(run)

    def _report(self, run):
        self.stdout.write(json.dumps({"provider": run.connection.provider, "kind": run.kind, "pushed": run.pushed,
                                      "pulled": run.pulled, "skipped": run.skipped, "failed": run.failed,
                                      "api_calls": run.api_calls, "error": run.error}))
