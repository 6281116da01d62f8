"""Erase one person from every app (the same service as the admin and the
API); prints the receipt (counts, no personal data)."""
from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from martech.privacy.services import subject_erase


class Command(BaseCommand):
    help = "Erase one person (by --email, --lead or --crm-id) from every app, irreversibly."

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--email")
        who.add_argument("--lead", type=int, help="A lead id.")
        who.add_argument("--crm-id", help="A HubSpot contact id or a Salesforce Lead/Contact id.")
        parser.add_argument("--no-crm-delete", action="store_true",
                            help="Do not ask the connected CRMs to delete the person.")

    def handle(self, *args, **options):
        try:
            receipt = subject_erase(email=options["email"] or "", lead_id=options["lead"],
                                    crm_id=options["crm_id"] or "", source="command",
                                    crm_delete=not options["no_crm_delete"])
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(json.dumps({"receipt": receipt.pk, "counts": receipt.counts,
                                      "crm_deletes": receipt.crm_deletes}, indent=2))
