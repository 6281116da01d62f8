"""Bad bytes and formulas: text the database cannot store (NUL, lone
surrogates) is refused per item naming the field, in events, forms, API
writes and CSV import; CSV exports quote cells a spreadsheet would run as
formulas, and an exported file imports back to the same values."""
from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib import admin
from django.urls import reverse

from martech.csvsafe import cell_escape, cell_unescape
from martech.models import Event, Lead
from martech.resources import LeadExportResource
from martech.services.imports import lead_import_csv
from tests.factories import FormFactory, LeadFactory, form_field
from tests.martech.api_support import _private_cache, error_fields, token_api  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

NUL = "Ann\x00"
SURROGATE = "Ann\ud800"


def raw_post(client, url, payload):
    # json.dumps escapes a lone surrogate as \ud800, as a real client sends it.
    return client.post(url, json.dumps(payload), content_type="application/json")


def test_events_batch_refuses_bad_text_per_item_and_keeps_the_rest(token_api):
    api = token_api("capture")
    items = [
        {"type": "track", "messageId": "nul", "anonymousId": "a", "event": "demo_requested", "properties": {"title": NUL}},
        {"type": "identify", "messageId": "sur", "anonymousId": "a", "traits": {"email": "x@y.co", "firstName": SURROGATE}},
        {"type": "page", "messageId": "key", "anonymousId": "a", "properties": {"bad\x00key": 1}},
        {"type": "track", "messageId": "ok", "anonymousId": "a", "event": "demo_requested", "properties": {"title": "fine"}},
    ]
    for attempt in range(2):  # a retry gives the same answers and stores nothing twice
        res = raw_post(api, "/api/v1/events", {"batch": items})
        assert res.status_code == 200, res.content
        results = res.json()["results"]
        assert [(r["status"], r.get("field")) for r in results] == [
            ("rejected", "properties.title"),
            ("rejected", "traits.firstName"),
            ("rejected", "properties"),
            ("accepted" if attempt == 0 else "duplicate", None),
        ]
        assert "NUL" in results[0]["reason"] and "surrogate" in results[1]["reason"]
    assert list(Event.objects.values_list("client_event_id", flat=True)) == ["ok"]
    assert not Lead.objects.exists()


@pytest.mark.parametrize(("field", "value"), [("first_name", NUL), ("page_url", "https://x.example/\ud83d"), ("company", SURROGATE)])
def test_form_post_with_bad_text_is_a_400_naming_the_form_field(client, field, value):
    FormFactory(key="f", fields=[form_field("email", "email", required=True), form_field("first_name", "first_name"), form_field("company", "company_name")])
    res = raw_post(client, "/api/v1/capture/f", {"email": "a@b.co", field: value})
    assert res.status_code == 400
    assert field in res.json()["error"]["fields"]
    assert not Lead.objects.exists() and not Event.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "a@b.co", "first_name": NUL}, "first_name"),
        ({"email": "a@b.co", "properties": {"plan": SURROGATE}}, "properties.plan"),
    ],
)
def test_api_lead_write_with_bad_text_is_a_400_naming_the_field(token_api, payload, field):
    api = token_api("leads:write", "leads:read")
    res = raw_post(api, "/api/v1/leads/upsert", payload)
    assert res.status_code == 400, res.content
    assert field in res.json()["error"]["fields"]
    lead = LeadFactory(email="c@d.co", first_name="Cy")
    res = api.patch(f"/api/v1/leads/{lead.pk}", json.dumps({"last_name": "x\x00"}), content_type="application/json")
    assert res.status_code == 400 and "last_name" in res.json()["error"]["fields"]
    lead.refresh_from_db()
    assert lead.last_name != "x\x00"


def test_csv_import_refuses_the_bad_row_and_keeps_the_others():
    text = "email,first_name,properties\nok@x.co,Ok,\nnul@x.co,Bad\x00Name,\nprop@x.co,P,\"{\"\"k\"\": \"\"\\ud800\"\"}\"\n"
    report = lead_import_csv(file=io.BytesIO(text.encode()))
    assert [(e.row, e.field) for e in report.errors] == [(3, "first_name"), (4, "properties.k")]
    assert list(Lead.objects.values_list("email", flat=True)) == ["ok@x.co"]


HOSTILE = {
    "first_name": '=HYPERLINK("http://evil.example","click")',
    "last_name": "+cmd|' /C calc'!A0",
    "job_title": "-2+3",
    "company_name": "@SUM(A1:A9)",
    "region": "-1-1",
    "postal_code": "'=quoted",
}


def _export_csv(admin_client) -> str:
    model_admin = admin.site._registry[Lead]
    formats = [f().get_title() for f in model_admin.get_export_formats()]
    url = reverse("admin:martech_lead_export")
    page = admin_client.get(url)
    fields = {name: "on" for name in page.context["form"].fields if name.startswith("leadexportresource_")}
    res = admin_client.post(url, {"format": formats.index("csv"), "resource": 0, **fields})
    assert res.status_code == 200
    return res.content.decode("utf-8-sig")


def test_export_quotes_formulas_and_the_file_imports_back_to_the_same_values(admin_client):
    LeadFactory(email="evil@x.co", phone="+14155550123", **HOSTILE)
    text = _export_csv(admin_client)
    row = next(csv.DictReader(io.StringIO(text)))
    for name, value in HOSTILE.items():
        assert row[name] == "'" + value, name  # shown as text, never run
    assert row["phone"] == "+14155550123"  # a plain number is left alone
    assert row["fit_score"] == "0"

    Lead.objects.all().delete()
    report = lead_import_csv(file=io.StringIO(text))
    assert report.errors == [] and report.created == 1
    lead = Lead.objects.get(email="evil@x.co")
    assert {name: getattr(lead, name) for name in HOSTILE} == HOSTILE


def test_export_resource_quotes_every_text_cell_of_a_lead():
    lead = LeadFactory(email="e2@x.co", **HOSTILE)
    cells = LeadExportResource().export_resource(lead)
    assert not any(isinstance(c, str) and c[:1] in "=+-@\t\r" and c != "" for c in cells)


@pytest.mark.parametrize(
    "value", ["=1+1", "+1+1", "-1-1", "@A1", "\tx", "\rx", "'=x", "''@x", "'plain", "plain", "", "-12.50", "+14155550100"]
)
def test_cell_escape_is_undone_by_cell_unescape(value):
    escaped = cell_escape(value)
    assert cell_unescape(escaped) == value
    runs = escaped[:1] in "=+-@\t\r" and escaped != "" and not escaped.lstrip("+-").replace(".", "").isdigit()
    assert not runs, escaped


@pytest.mark.parametrize("url", ["/api/v1/events", "/api/v1/capture/f", "/api/v1/leads/upsert"])
def test_a_body_nested_too_deeply_is_a_json_400_not_a_500(token_api, url):
    FormFactory(key="f", fields=[form_field("email", "email", required=True)])
    api = token_api("capture", "leads:write")
    res = api.post(url, "[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert res.status_code == 400
    assert res.json()["error"]["code"] == "parse_error" and "nested too deeply" in res.json()["error"]["message"]


def test_deep_but_parseable_properties_are_checked_without_recursion(token_api):
    deep: dict = {"title": "x\x00"}
    for _ in range(500):
        deep = {"d": deep}
    item = {"type": "track", "messageId": "deep", "anonymousId": "a", "event": "demo_requested", "properties": deep}
    res = raw_post(token_api("capture"), "/api/v1/events", {"batch": [item]})
    assert res.status_code == 200
    result = res.json()["results"][0]
    assert result["status"] == "rejected" and result["field"].endswith(".d.title") and "NUL" in result["reason"]
