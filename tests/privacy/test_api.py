"""POST /api/v1/privacy/exports and /erasures: scopes, staff permissions, JSON errors, schema."""
from __future__ import annotations

import io
import zipfile

import pytest

from martech.models import Lead
from martech.privacy.models import PrivacyRequest
from tests.factories import UserFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields
from tests.privacy.people import make_person

pytestmark = pytest.mark.django_db

EXPORTS, ERASURES = "/api/v1/privacy/exports", "/api/v1/privacy/erasures"


def test_export_with_the_scope_answers_the_document_and_is_audited(token_api):
    person = make_person(tag="ap")
    api = token_api("privacy:export")
    r = api.post(EXPORTS, {"email": person.email}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["records"]["martech.Lead"][0]["email"] == person.email
    assert body["counts"]["martech.Event"] == 5
    audit = PrivacyRequest.objects.get(pk=body["request"])
    assert (audit.kind, audit.source, audit.requested_by) == ("export", f"api:{api.api_client.name}", None)
    z = api.post(EXPORTS, {"lead": person.lead.pk, "format": "zip"}, format="json")
    assert z.status_code == 200 and z["Content-Type"] == "application/zip"
    assert "martech.Event.csv" in zipfile.ZipFile(io.BytesIO(z.content)).namelist()


def test_without_the_scope_it_is_403_in_json(token_api):
    person = make_person(tag="ns")
    for api, url in ((token_api("leads:read", "privacy:erase"), EXPORTS), (token_api("privacy:export"), ERASURES)):
        r = api.post(url, {"email": person.email}, format="json")
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "permission_denied"
    assert Lead.objects.filter(pk=person.lead.pk).exists() and not PrivacyRequest.objects.exists()


def test_bad_input_names_the_field(token_api):
    api = token_api("privacy:export", "privacy:erase")
    r = api.post(EXPORTS, {"email": "a@example.org", "lead": 3}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"subject"}
    r = api.post(ERASURES, {"lead": 99999}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"lead"}
    r = api.post(ERASURES, {"emial": "a@example.org"}, format="json")
    assert r.status_code == 400 and "emial" in error_fields(r)


def test_erasure_answers_the_receipt(token_api):
    person = make_person(tag="ae")
    api = token_api("privacy:erase")
    r = api.post(ERASURES, {"crm_id": person.hubspot_id, "crm_delete": False}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["kind"] == "erasure" and body["counts"]["deleted"]["martech.Lead"] == 1
    assert body["crm_deletes"] == {}
    assert person.email not in r.content.decode()
    assert not Lead.objects.filter(email=person.email).exists()


def test_staff_need_the_privacy_permissions(session_api, marketing_ops):
    person = make_person(tag="st")
    dpo = UserFactory(username="dpo", groups=["Privacy"])
    assert session_api(marketing_ops).post(EXPORTS, {"email": person.email}, format="json").status_code == 403
    assert session_api(dpo).post(EXPORTS, {"email": person.email}, format="json").status_code == 200
    r = session_api(dpo).post(ERASURES, {"email": person.email}, format="json")
    assert r.status_code == 201
    assert PrivacyRequest.objects.get(kind="erasure").requested_by == dpo


def test_the_schema_documents_both_endpoints_and_the_scopes():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert {"/api/v1/privacy/exports", "/api/v1/privacy/erasures"} <= set(schema["paths"])
    erasure = schema["paths"]["/api/v1/privacy/erasures"]["post"]
    assert "201" in erasure["responses"] and "400" in erasure["responses"]
