"""Subject access export from the shell: the JSON document to stdout (or a
file), or the zip with --zip. Audited like every export (source "command")."""
from __future__ import annotations

import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from martech.privacy.services import subject_export


class Command(BaseCommand):
    help = "Export everything held about one person (by --email, --lead or --crm-id) as JSON or a zip of CSVs."

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--email")
        who.add_argument("--lead", type=int, help="A lead id.")
        who.add_argument("--crm-id", help="A HubSpot contact id or a Salesforce Lead/Contact id.")
        parser.add_argument("--zip", action="store_true", help="Write the zip (JSON and one CSV per kind of record).")
        parser.add_argument("--output", "-o", help="File to write; default stdout (the JSON only).")

    def handle(self, *args, **options):
        if options["zip"] and not options["output"]:
            raise CommandError("--zip needs --output FILE.")
        try:
            export = subject_export(email=options["email"] or "", lead_id=options["lead"],
                                    crm_id=options["crm_id"] or "", source="command")
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        if options["output"]:
            path = Path(options["output"])
            if options["zip"]:
                path.write_bytes(export.zip())
            else:
                path.write_text(export.json(), encoding="utf-8")
            self.stderr.write(f"Export #{export.request.pk}: {sum(export.document['counts'].values())} records "
                              f"written to {path}.")
        else:
            sys.stdout.write(export.json() + "\n")
