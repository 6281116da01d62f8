"""Fixtures for the REST API tests (tests/martech/test_api_*.py)."""
from __future__ import annotations

import itertools

import pytest
from rest_framework.test import APIClient

from martech.models import ApiClient
from martech.services.api_clients import api_client_create

__all__ = ["ALL_SCOPES", "_private_cache", "token_api", "session_api", "error_fields"]

ALL_SCOPES = list(ApiClient.Scope.values)
_names = itertools.count()


@pytest.fixture(autouse=True)
def _private_cache(settings):
    # Throttle counters live in the cache; the default file cache is shared
    # with every other process on the machine, so each test gets its own.
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"api-{next(_names)}"}
    }


@pytest.fixture
def token_api(db):
    """token_api(*scopes) -> an APIClient sending a bearer token with those scopes."""

    def make(*scopes: str) -> APIClient:
        client, token = api_client_create(name=f"client-{next(_names)}", scopes=list(scopes))
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        api.api_client = client
        return api

    return make


@pytest.fixture
def session_api(db):
    """session_api(user) -> an APIClient logged in as that staff user."""

    def make(user) -> APIClient:
        api = APIClient()
        api.force_login(user)
        return api

    return make


def error_fields(response) -> set[str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "fields"} <= set(body["error"]), body
    return set(body["error"]["fields"])
