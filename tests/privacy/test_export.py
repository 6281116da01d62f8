"""Subject access export: complete per app, only the person's rows, audited."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from django.db import models
from django.core.management import call_command

from martech.models import Lead
from martech.privacy.models import PrivacyRequest
from martech.privacy.services import subject_export
from martech.privacy.subjects import sections, subject_find
from tests.privacy.people import make_person

pytestmark = pytest.mark.django_db


def _about_a_lead() -> set[str]:
    """Every model whose rows belong to a lead: pointing at a lead, or at
    such a row, by a relation that goes when it goes (CASCADE), walked to
    the end: executions of enrollments, messages of executions, credits of
    touchpoints, touchpoints of events ..."""
    found, frontier = set(), [Lead]
    while frontier:
        target = frontier.pop()
        for rel in target._meta.related_objects:
            model = rel.related_model
            if rel.on_delete is models.CASCADE and not model._meta.proxy and model._meta.label not in found:
                found.add(model._meta.label)
                frontier.append(model)
    return found


def test_every_model_that_belongs_to_a_lead_is_a_section():
    covered = {label for label, _ in sections(subject_find(email="nobody@example.org"))}
    belongs = _about_a_lead()
    assert {"martech.Event", "nurture.Message", "attribution.AttributionCredit", "routing.Escalation"} <= belongs
    assert belongs - covered == set()


def test_export_is_complete_per_app_and_holds_only_the_person(superuser):
    person = make_person(tag="ex", user=superuser)
    other = make_person(tag="ot")
    export = subject_export(email=person.email, actor=superuser, source="test")
    records = export.document["records"]
    empty = sorted(label for label, rows in records.items() if not rows)
    assert empty == [], f"nothing exported from {empty}"
    by_app = {label.split(".")[0] for label in records}
    assert by_app == {"martech", "scoring", "routing", "nurture", "attribution", "crm", "admin"}
    assert records["martech.Lead"][0]["email"] == person.email
    assert len(records["martech.Event"]) == 5
    assert [e["kind"] for e in records["martech.Event"]].count("form") == 1  # the form submission
    assert records["martech.ConsentRecord"][0]["evidence"]["ip"] == "203.0.113.9"
    assert records["scoring.ScoreHistory"][0]["breakdown"] == [{"kind": "fit", "rule": "VP", "points": 10}]
    text = export.json()
    assert other.email not in text and other.first not in text and other.anonymous_id not in text
    assert json.loads(text)["counts"]["nurture.Message"] == 1


def test_every_export_is_audited_without_the_data(superuser):
    person = make_person(tag="au")
    subject_export(lead_id=person.lead.pk, actor=superuser, source="admin")
    subject_export(crm_id=person.hubspot_id, source="api:dpo")
    rows = list(PrivacyRequest.objects.order_by("id").values("kind", "subject_kind", "requested_by", "source",
                                                               "counts"))
    assert [(r["kind"], r["subject_kind"], r["requested_by"], r["source"]) for r in rows] == [
        ("export", "lead", superuser.pk, "admin"), ("export", "crm_id", None, "api:dpo")]
    assert rows[0]["counts"]["martech.Event"] == 5
    assert person.email not in str(list(PrivacyRequest.objects.values()))
    # Nothing was changed by reading.
    assert Lead.objects.filter(pk=person.lead.pk).exists()


def test_the_zip_has_the_document_and_a_csv_per_kind_of_record():
    person = make_person(tag="zp")
    Lead.objects.filter(pk=person.lead.pk).update(job_title="=HYPERLINK(\"http://x\")")
    archive = zipfile.ZipFile(io.BytesIO(subject_export(email=person.email, source="test").zip()))
    names = set(archive.namelist())
    assert {"subject.json", "martech.Lead.csv", "martech.Event.csv", "nurture.Message.csv",
            "attribution.Touchpoint.csv", "crm.PushState.csv"} <= names
    lead_rows = list(csv.DictReader(io.StringIO(archive.read("martech.Lead.csv").decode())))
    assert lead_rows[0]["email"] == person.email
    assert lead_rows[0]["job_title"].startswith("'=")  # spreadsheet-safe
    assert json.loads(lead_rows[0]["properties"]) == {"nickname": f"Zeb {person.last}"}


def test_the_command_writes_json_and_zip(tmp_path, capsys):
    person = make_person(tag="cm")
    call_command("privacy_export", "--email", person.email)
    document = json.loads(capsys.readouterr().out)
    assert document["records"]["martech.Lead"][0]["first_name"] == person.first
    target = tmp_path / "out.zip"
    call_command("privacy_export", "--lead", str(person.lead.pk), "--zip", "-o", str(target))
    assert "subject.json" in zipfile.ZipFile(target).namelist()
    assert PrivacyRequest.objects.filter(kind="export", source="command").count() == 2


def test_the_erase_command_prints_the_receipt(capsys):
    person = make_person(tag="ec")
    call_command("privacy_erase", "--email", person.email, "--no-crm-delete")
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["deleted"]["martech.Lead"] == 1 and out["crm_deletes"] == {}
    assert person.email not in json.dumps(out)
