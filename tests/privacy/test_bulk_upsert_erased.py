"""``lead_upsert_many`` itself refuses inputs about an erased person: their
entry is None and ``erased`` names the field, the other inputs are written,
with one tombstone look-up whatever the number of rows. Its bulk callers
(the CSV import, a CRM pull's page) rely on it and have no check of their own."""
from __future__ import annotations

import io

import pytest
from django.db import transaction

from martech.models import Lead
from martech.privacy.services import subject_erase
from martech.services import imports
from martech.services.imports import lead_import_csv
from martech.services.leads import ERASED_MESSAGE, LeadInput, lead_upsert_many

pytestmark = pytest.mark.django_db

EMAIL = "erin.bulk@example.org"


@pytest.fixture
def erased_person():
    lead = Lead.objects.create(email=EMAIL, first_name="Erin", hubspot_id="4242")
    subject_erase(email=EMAIL, source="test", crm_delete=False)
    assert not Lead.objects.filter(pk=lead.pk).exists()


def _upsert(rows: list[dict]):
    with transaction.atomic():
        return lead_upsert_many(rows=[LeadInput(cleaned=r) for r in rows], source="test:bulk")


def test_an_erased_email_or_crm_id_is_a_per_row_result_naming_the_field(erased_person):
    result = _upsert([{"email": "kept0@example.org"}, {"email": EMAIL, "first_name": "Again"},
                      {"email": "other@example.org", "hubspot_id": "4242"}, {"email": "kept1@example.org"}])
    assert [getattr(lead, "email", lead) for lead in result.leads] == \
        ["kept0@example.org", None, None, "kept1@example.org"]
    assert result.erased == {1: "email", 2: "hubspot_id"}
    assert (result.created, result.updated) == (2, 0)
    assert sorted(Lead.objects.values_list("email", flat=True)) == ["kept0@example.org", "kept1@example.org"]


def test_no_erased_person_no_erased_rows(erased_person):
    result = _upsert([{"email": "a@example.org"}, {"email": "b@example.org"}])
    assert result.erased == {} and [lead.email for lead in result.leads] == ["a@example.org", "b@example.org"]


def test_one_tombstone_look_up_whatever_the_number_of_rows(erased_person, monkeypatch):
    from martech.services import leads

    asked: list[list] = []
    real = leads.erased_keys

    def counting(keys):
        asked.append(list(keys))
        return real(keys)

    monkeypatch.setattr(leads, "erased_keys", counting)
    for n in (3, 30):
        asked.clear()
        result = _upsert([{"email": f"n{n}-{i}@example.org"} for i in range(n)] + [{"email": EMAIL}])
        assert result.erased == {n: "email"}
        # One call with every row's keys, not one per row.
        assert len(asked) == 1 and len(asked[0]) == n + 1


def test_the_csv_import_reports_what_the_bulk_upsert_refused(erased_person, monkeypatch):
    # The import has no erased check of its own any more: the row error comes from lead_upsert_many.
    assert not hasattr(imports, "_without_erased")
    csv_file = io.StringIO(f"email,first_name\nfresh@example.org,Fresh\n{EMAIL},Again\nnew@example.org,New\n")
    report = lead_import_csv(file=csv_file)
    assert (report.created, report.updated) == (2, 0)
    assert [(e.row, e.field, e.message) for e in report.errors] == [(3, "email", ERASED_MESSAGE)]
    assert not Lead.objects.filter(email=EMAIL).exists()
