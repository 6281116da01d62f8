"""python manage.py crm_sync [--provider P] [--object O] [--full] [--dry-run] [--no-push] [--no-pull] [--check]

``--check`` only checks each connection (martech.crm.schema.connection_check):
reads the CRM's property/field definitions and prints one JSON line per
connection with what the CRM lacks (the custom fields to create, with the
steps) and the mappings and lifecycle values it would refuse; it exits
non-zero when anything is missing or refused. Nothing is pushed or pulled.

A pull first fetches again the records earlier pulls could not apply
(PullFailure, when due); each line reports them as ``retried`` and
``recovered`` (applied this time).

``--object`` takes an object key (contact, company, deal, task) or the
provider's name for it (contacts, companies, deals, tasks); without it every
object type the connector syncs and that has pull mappings is pulled, each
followed by the links of it the connector syncs (Salesforce CampaignMember
after ``campaign``, OpportunityContactRole after ``deal``).
"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from martech.crm import outbox, services
from martech.crm.connectors import connector_for
from martech.crm.models import Connection, OutboxItem


def _error(code: str, message: str) -> CommandError:
    return CommandError(json.dumps({"error": {"code": code, "message": message}}))


class Command(BaseCommand):
    help = "Push the CRM outbox and pull changes since the stored cursors."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["hubspot", "salesforce"])
        parser.add_argument("--object", help="contact|company|deal|task (or contacts|companies|deals|tasks)")
        parser.add_argument("--full", action="store_true", help="Ignore cursors; queue every record for push.")
        parser.add_argument("--dry-run", action="store_true", help="Pull and convert but write nothing; no push.")
        parser.add_argument("--no-push", action="store_true")
        parser.add_argument("--no-pull", action="store_true")
        parser.add_argument("--check", action="store_true",
                            help="Only check each connection against the CRM's definitions (nothing synced).")
        parser.add_argument("--batch", type=int, default=None,
                            help="Outbox items per drain batch (default MARTECH_CRM_DRAIN_BATCH). Salesforce sends "
                                 "a batch larger than MARTECH_CRM_SALESFORCE_BULK_ABOVE through Bulk API 2.0.")

    def handle(self, *args, **opts):
        connections = Connection.objects.filter(is_active=True)
        if opts["provider"]:
            connections = connections.filter(provider=opts["provider"])
        if not connections.exists():
            raise _error("no_connection", "No active CRM connection matches.")
        if opts["batch"] is not None and opts["batch"] < 1:
            raise _error("invalid", "--batch must be 1 or more.")
        if opts["check"]:
            return self._check(connections)
        for connection in connections:
            try:
                connector = connector_for(connection)
            except NotImplementedError:
                self.stderr.write(f"{connection.provider}: connector not implemented, skipped")
                continue
            declared = connector.objects
            if opts["object"]:
                wanted = opts["object"]
                key = wanted if wanted in declared else next((k for k, v in declared.items() if v == wanted), None)
                if key is None:
                    raise _error("object_not_supported",
                                 f"{connection.provider} does not sync {wanted!r}; it syncs "
                                 f"{', '.join(sorted(declared))}.")
                keys = [key]
            else:
                keys = services.pulled_object_keys(connection=connection, connector=connector)
            if not opts["no_push"] and not opts["dry_run"]:
                if opts["full"]:
                    for key in keys:
                        outbox.queue_full(connection=connection, obj=key)
                due = OutboxItem.objects.filter(connection=connection, status="pending").count()
                with tqdm(total=due, desc=f"{connection.provider} push", unit="rec",
                          disable=not self.stdout.isatty()) as bar:
                    run = services.outbox_drain(connection=connection, progress=bar, batch=opts["batch"],
                                                refresh_allowance=True)
                self._report(run)
            if not opts["no_pull"]:
                if not opts["dry_run"] and not opts["object"]:
                    owners = services.owners_pull_recorded(connection=connection, connector=connector)
                    connection.refresh_from_db(fields=["last_error"])
                    self.stdout.write(json.dumps({"provider": connection.provider, "kind": "owners",
                                                  "pulled": max(owners, 0),
                                                  "error": connection.last_error if owners < 0 else ""}))
                for key in keys:
                    with tqdm(desc=f"{connection.provider} pull {key}", unit="rec",
                              disable=not self.stdout.isatty()) as bar:
                        run = services.pull_changes(connection=connection, obj=key, full=opts["full"],
                                                    dry_run=opts["dry_run"], progress=bar)
                        # Earlier failures fetched again count in the bar too; say how many went through.
                        bar.set_postfix(retried=run.retried, recovered=run.recovered)
                    self._report(run)
                    if opts["dry_run"]:
                        continue  # links are written as they are read: no dry run for them
                    for link in services.pulled_link_keys(connection=connection, obj=key, connector=connector):
                        self._report(services.links_pull(connection=connection, link=link, full=opts["full"],
                                                         connector=connector))
                if not opts["dry_run"]:
                    # Deletions made in the CRM (Salesforce Get Deleted), links first.
                    for run in services.deletions_pull_recorded(connection=connection, keys=keys,
                                                                connector=connector):
                        self._report(run)

    def _report(self, run):
        self.stdout.write(json.dumps({"provider": run.connection.provider, "kind": run.kind, "object": run.object,
                                      "pushed": run.pushed, "pulled": run.pulled, "skipped": run.skipped,
                                      "failed": run.failed, "retried": run.retried, "recovered": run.recovered,
                                      "api_calls": run.api_calls, "error": run.error}))

    def _check(self, connections) -> None:
        from martech.crm.schema import connection_check

        failed = []
        for connection in connections:
            report = connection_check(connection=connection)
            if self.stdout.isatty():
                for line in report.lines():
                    self.stderr.write(f"{connection.provider}: {line}")
            self.stdout.write(json.dumps(report.as_dict()))
            if not report.ok:
                failed.append(connection.provider)
        if failed:
            raise _error("check_failed", f"{', '.join(failed)}: the CRM lacks or refuses what is listed above.")
