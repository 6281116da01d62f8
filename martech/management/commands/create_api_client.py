"""Create an API client and print its token (shown this once only).

    python manage.py create_api_client dashboards --scope leads:read --scope events:read

The token is alone on the last line of output, so scripts can take it with
``| tail -n1``.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from martech.models import ApiClient
from martech.services.api_clients import api_client_create


class Command(BaseCommand):
    help = "Create an API client with the given scopes and print its bearer token (last line)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            default=[],
            metavar="SCOPE",
            help=f"Repeat for several. One of: {', '.join(ApiClient.Scope.values)}.",
        )

    def handle(self, *args, name: str, scopes: list[str], **options):
        try:
            client, token = api_client_create(name=name, scopes=scopes)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())) from exc
        self.stdout.write(f"Created API client {client.name!r} (id {client.pk}) with scopes: {', '.join(client.scopes)}.")
        self.stdout.write("Store this token now; it is not shown again:")
        self.stdout.write(token)
