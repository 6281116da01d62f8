"""The OpenAPI schema and its Swagger UI."""
from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command

from tests.martech.api_support import *  # noqa: F403 (private throttle cache)

pytestmark = pytest.mark.django_db


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    paths = schema["paths"]
    assert {"/api/v1/leads/", "/api/v1/leads/{id}/", "/api/v1/leads/upsert/", "/api/v1/leads/{id}/stage/"} <= set(paths)
    assert {"/api/v1/accounts/", "/api/v1/events/", "/api/v1/lifecycle-stages/", "/api/v1/campaigns/"} <= set(paths)
    upsert = paths["/api/v1/leads/upsert/"]["post"]
    assert upsert["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("LeadUpsertInputRequest")
    assert {"200", "201", "400", "401", "403", "429"} <= set(upsert["responses"])
    assert upsert["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ApiError")
    names = {p["name"] for p in paths["/api/v1/leads/"]["get"]["parameters"]}
    assert {"cursor", "page_size", "email", "lifecycle_stage", "updated_at_after", "total_score_min", "owner"} <= names
    assert "ApiClientToken" in schema["components"]["securitySchemes"]


def test_schema_and_docs_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    r = client.get("/api/docs/")
    assert r.status_code == 200 and b"swagger" in r.content.lower()
