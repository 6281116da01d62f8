"""api_client_create and the create_api_client command."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from martech.models import ApiClient
from martech.services.api_clients import api_client_create
from tests.martech.api_support import *  # noqa: F403 (private throttle cache)

pytestmark = pytest.mark.django_db


def test_create_stores_only_hash_and_prefix():
    client, token = api_client_create(name="dashboards", scopes=["leads:read", "events:read", "leads:read"])
    client.refresh_from_db()
    assert len(token) >= 40
    assert client.token_hash == ApiClient.hash_token(token) and token not in client.token_hash
    assert client.token_prefix == token[:8]
    assert client.scopes == ["leads:read", "events:read"]
    _, other = api_client_create(name="other", scopes=["capture"])
    assert other != token


@pytest.mark.parametrize(
    "name, scopes, field",
    [
        ("x", ["leads:read", "leads:admin"], "scopes"),
        ("x", [], "scopes"),
        ("  ", ["leads:read"], "name"),
    ],
)
def test_create_validates(name, scopes, field):
    with pytest.raises(ValidationError) as exc:
        api_client_create(name=name, scopes=scopes)
    assert field in exc.value.message_dict
    assert ApiClient.objects.count() == 0


def test_duplicate_name_is_refused():
    api_client_create(name="crm", scopes=["leads:read"])
    with pytest.raises(ValidationError) as exc:
        api_client_create(name="crm", scopes=["leads:read"])
    assert "name" in exc.value.message_dict


def test_command_prints_token_last_and_it_works():
    out = StringIO()
    call_command("create_api_client", "bi", "--scope", "leads:read", "--scope", "stages:read", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert " " not in token
    client = ApiClient.objects.get(name="bi")
    assert client.scopes == ["leads:read", "stages:read"]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/lifecycle-stages").status_code == 200
    assert api.get("/api/v1/events").status_code == 403


def test_command_names_a_bad_scope():
    with pytest.raises(CommandError, match="leads:admin"):
        call_command("create_api_client", "bi", "--scope", "leads:admin", stdout=StringIO())
    assert not ApiClient.objects.exists()
