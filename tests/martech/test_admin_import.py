"""CSV import of leads (martech.services.imports) and its admin view."""
from __future__ import annotations

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from martech import signals
from martech.models import Lead, StageTransition
from martech.services.imports import lead_import_csv
from tests.factories import AccountFactory, LeadFactory

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:martech_lead_import_csv")

MIXED = """email,first_name,country,lifecycle_stage,phone,properties.plan
ann@acme.example,Ann,US,,,pro
not-an-email,Bad,US,,,
bob@acme.example,Bob,Germany,,,
cy@acme.example,Cy,,nope,,
,NoKey,,,,
dee@acme.example,Dee,DE,mql,030 901820,basic
"""


def _import(text: str, **kwargs):
    return lead_import_csv(file=io.BytesIO(text.encode()), **kwargs)


def test_errors_are_reported_by_row_and_field_and_valid_rows_are_kept(superuser):
    report = _import(MIXED, actor=superuser)
    assert [str(e) for e in report.errors] == [
        "row 3, email: Enter a valid email address.",
        "row 4, country: Use a two-letter ISO 3166-1 country code.",
        "row 5, lifecycle_stage: Unknown lifecycle stage 'nope'.",
        "row 6, email: An email (or a CRM id) is required.",
    ]
    assert (report.rows, report.created, report.invalid_rows) == (6, 2, 4)
    assert set(Lead.objects.values_list("email", flat=True)) == {"ann@acme.example", "dee@acme.example"}
    dee = Lead.objects.get(email="dee@acme.example")
    assert (str(dee.phone), dee.lifecycle_stage.key, dee.properties) == ("+4930901820", "mql", {"plan": "basic"})
    t = StageTransition.objects.get(lead=dee)
    assert (t.from_stage, t.to_stage.key, t.actor, t.reason) == (None, "mql", superuser, "created")
    ann = Lead.objects.get(email="ann@acme.example")
    assert ann.lifecycle_stage.key == "lead"  # the default stage, as lead_upsert gives


def test_second_import_of_the_same_file_updates_never_duplicates():
    first = _import(MIXED)
    leads = {lead.email: (lead.pk, lead.updated_at) for lead in Lead.objects.all()}
    transitions = StageTransition.objects.count()
    second = _import(MIXED)
    assert (first.created, second.created, second.updated, second.unchanged) == (2, 0, 0, 2)
    assert {lead.email: (lead.pk, lead.updated_at) for lead in Lead.objects.all()} == leads
    assert StageTransition.objects.count() == transitions
    assert [str(e) for e in second.errors] == [str(e) for e in first.errors]


def test_import_dedupes_with_capture_normalization_and_merges():
    existing = LeadFactory(email="ann@acme.example", first_name="Ann", job_title="CMO", properties={"seats": 5})
    report = _import(
        "Email,First_Name,job_title,properties.plan\n"
        "  ANN@Acme.Example ,Annie,,pro\n"  # blank job_title keeps CMO
        "new@acme.example,New,,\n"
        "NEW@acme.example,,Boss,\n"  # the same person twice in one file
    )
    assert (report.created, report.updated, report.errors) == (1, 1, [])
    existing.refresh_from_db()
    assert (existing.first_name, existing.job_title) == ("Annie", "CMO")
    assert existing.properties == {"seats": 5, "plan": "pro"}
    new = Lead.objects.get(email="new@acme.example")
    assert (new.first_name, new.job_title) == ("New", "Boss")
    assert Lead.objects.count() == 2


def test_new_leads_join_their_account_by_domain():
    acme = AccountFactory(domain="acme.example", name="Acme")
    _import("email\njo@acme.example\njo@gmail.com\n")
    assert Lead.objects.get(email="jo@acme.example").account == acme
    assert Lead.objects.get(email="jo@acme.example").company_name == "Acme"
    assert Lead.objects.get(email="jo@gmail.com").account is None


def test_crm_id_match_and_unique_conflicts_are_row_errors():
    LeadFactory(email="a@x.example")
    LeadFactory(email="c@x.example", hubspot_id="H1")
    LeadFactory(email=None, salesforce_lead_id="00Q000000000001")
    report = _import(
        "email,hubspot_id,salesforce_lead_id\n"
        "a@x.example,H1,\n"  # a's row claims c's HubSpot id: refused
        "b@x.example,,\n"
        ",,00Q000000000001\n"
        "sf@x.example,,00Q000000000001\n"  # found by CRM id, gains an email
    )
    assert [(e.row, e.field) for e in report.errors] == [(2, "hubspot_id")]
    assert "Another lead already has this value" in report.errors[0].message
    assert Lead.objects.filter(email="b@x.example").exists()
    assert Lead.objects.get(salesforce_lead_id="00Q000000000001").email == "sf@x.example"
    assert Lead.objects.get(email="a@x.example").hubspot_id is None


def test_bad_header_is_refused_before_any_write():
    with pytest.raises(ValidationError) as exc:
        _import("email,favourite_colour\nann@acme.example,blue\n")
    assert "favourite_colour" in str(exc.value)
    with pytest.raises(ValidationError):
        _import("first_name\nAnn\n")
    assert not Lead.objects.exists()


def test_an_exported_file_imports_back_unchanged(client, superuser):
    LeadFactory(email="rt@x.example", phone="+14155550123", properties={"plan": "pro"})
    client.force_login(superuser)
    url = reverse("admin:martech_lead_export")
    page = client.get(url)
    fields = {name: "on" for name in page.context["form"].fields if name.startswith("leadexportresource_")}
    exported = client.post(url, {"format": 0, "resource": 0, **fields}).content
    report = lead_import_csv(file=io.BytesIO(exported))
    assert (report.errors, report.unchanged, report.created) == ([], 1, 0)


def test_signals_are_sent_after_commit_as_lead_upsert_sends_them(django_capture_on_commit_callbacks):
    created, stage_changes = [], []

    def on_created(lead_ids, source, **kw):
        # One announcement per bulk write (leads_created), naming its new leads.
        created.extend((email, source) for email in Lead.objects.filter(pk__in=lead_ids).values_list("email", flat=True))

    def on_stage(lead, transition, **kw):
        stage_changes.append((lead.email, transition.to_stage.key))

    signals.leads_created.connect(on_created)
    signals.lead_stage_changed.connect(on_stage)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            _import("email\nsig@x.example\n", source="import:test.csv")
    finally:
        signals.leads_created.disconnect(on_created)
        signals.lead_stage_changed.disconnect(on_stage)
    assert created == [("sig@x.example", "import:test.csv")]
    assert stage_changes == [("sig@x.example", "lead")]


def test_ten_thousand_rows_import_in_bulk():
    lines = ["email,first_name,last_name,company_name,country,properties.batch"]
    lines += [f"person{i}@corp{i % 50}.example,First{i},Last{i},Corp {i % 50},US,b1" for i in range(10_000)]
    lines.insert(5000, "broken-row-email,X,Y,Z,US,b1")
    text = "\n".join(lines) + "\n"
    with CaptureQueriesContext(connection) as ctx:
        report = _import(text)
    assert (report.created, report.invalid_rows) == (10_000, 1)
    assert [(e.row, e.field) for e in report.errors] == [(5001, "email")]
    assert Lead.objects.count() == 10_000
    assert StageTransition.objects.count() == 10_000
    # Bulk: a few queries per 1,000-row chunk (SQLite splits inserts into
    # batches of its 999-parameter limit), never one per row.
    assert len(ctx) < 1_000, len(ctx)
    with CaptureQueriesContext(connection) as ctx:
        again = _import(text)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 10_000)
    assert len(ctx) < 100, len(ctx)


# --- the admin view ---------------------------------------------------------


def _upload(text: str, name: str = "leads.csv"):
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_admin_import_view_reports_rows_and_keeps_valid_ones(client, superuser):
    client.force_login(superuser)
    assert client.get(IMPORT_URL).status_code == 200
    response = client.post(IMPORT_URL, {"file": _upload(MIXED)})
    assert response.status_code == 200
    html = response.content.decode()
    assert "6 rows: 2 leads created, 0 updated, 0 unchanged, 4 rows with errors." in html
    assert "<td>3</td><td>email</td><td>Enter a valid email address.</td>" in html
    assert Lead.objects.count() == 2
    assert Lead.objects.get(email="ann@acme.example").stage_transitions.get().source == "import:leads.csv"


def test_admin_import_without_errors_goes_back_to_the_list(client, superuser):
    client.force_login(superuser)
    response = client.post(IMPORT_URL, {"file": _upload("email\nok@x.example\n")}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:martech_lead_changelist")
    assert "1 leads created" in response.content.decode()


def test_admin_import_bad_header_is_a_form_error(client, superuser):
    client.force_login(superuser)
    response = client.post(IMPORT_URL, {"file": _upload("mail\nx@y.example\n")})
    assert response.status_code == 200
    assert "Unknown column(s): mail" in response.content.decode()


def test_import_needs_add_and_change_permission(client, analyst, sales_ops, marketing_ops):
    for user in (analyst, sales_ops):
        client.force_login(user)
        assert client.get(IMPORT_URL).status_code == 403
        assert client.post(IMPORT_URL, {"file": _upload("email\nx@y.example\n")}).status_code == 403
        assert "Import CSV" not in client.get(reverse("admin:martech_lead_changelist")).content.decode()
    assert not Lead.objects.exists()
    client.force_login(marketing_ops)
    assert "Import CSV" in client.get(reverse("admin:martech_lead_changelist")).content.decode()
    assert client.get(IMPORT_URL).status_code == 200
