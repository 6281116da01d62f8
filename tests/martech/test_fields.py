"""One declaration of the lead's and the account's fields (martech.fields):
it covers every model field, and each consumer (admin, CSV import and
export, API serializers, ingest's touch fields, the services' writable
lists, public forms) uses exactly what it declares."""
from __future__ import annotations

import csv
import io

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.test import RequestFactory

from martech import fields as declared
from martech.models import CRM_KEYS, LEAD_WRITABLE_FIELDS, Account, Lead, form_fields_clean
from tests.factories import LeadFactory

LEAD = declared.LEAD_FIELDS
ACCOUNT = declared.ACCOUNT_FIELDS


def _flat(fieldsets) -> list[str]:
    out = []
    for _, opts in fieldsets:
        for item in opts["fields"]:
            out.extend(item if isinstance(item, (tuple, list)) else [item])
    return out


# --- the declaration itself ---------------------------------------------------


@pytest.mark.parametrize(("model", "specs"), [(Lead, LEAD), (Account, ACCOUNT)])
def test_every_model_field_is_declared_once(model, specs):
    names = [s.name for s in specs if s.concrete]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in model._meta.concrete_fields}


def test_a_declared_property_is_one_the_model_has():
    for spec in LEAD:
        if not spec.concrete:
            assert isinstance(getattr(Lead, spec.name), property), spec.name


def test_writers_are_known_and_set_by_is_given_for_the_rest():
    for spec in (*LEAD, *ACCOUNT):
        assert spec.writers <= declared.EVERYONE, spec.name
        assert bool(spec.writers) != bool(spec.set_by), f"{spec.name}: writers or set_by, one of them"


# --- models and services ----------------------------------------------------


def test_lead_writable_fields_and_crm_keys_are_the_declarations():
    assert LEAD_WRITABLE_FIELDS == {s.name for s in LEAD if s.writers} - {"properties"}
    assert CRM_KEYS == ("salesforce_lead_id", "salesforce_contact_id", "hubspot_id")
    assert set(CRM_KEYS) == {s.name for s in LEAD if s.crm_key}


def test_account_writable_fields_are_the_declarations():
    from martech.services.accounts import ACCOUNT_WRITABLE_FIELDS

    assert ACCOUNT_WRITABLE_FIELDS == {s.name for s in ACCOUNT if s.writers}


def test_a_public_form_may_fill_exactly_the_fields_declared_for_forms():
    allowed, refused = [], []
    for spec in LEAD:
        if not spec.writers or spec.name == "properties":
            continue
        email = [{"name": "email", "label": "Email", "type": "email", "lead_field": "email"}]
        other = [{"name": "f", "label": "F", "type": "text", "lead_field": spec.name}] if spec.name != "email" else []
        try:
            form_fields_clean(email + other)
        except ValidationError:
            refused.append(spec.name)
        else:
            allowed.append(spec.name)
    assert allowed == [s.name for s in LEAD if declared.FORM in s.writers and s.name != "properties"]
    # The CRM ids and the stage: a form gives its stage in its defaults.
    assert refused == ["lifecycle_stage", *CRM_KEYS]


# --- ingest -------------------------------------------------------------------


def test_ingest_touch_fields_are_the_declared_touch_fields():
    from martech.services.ingest import TOUCH_FIELDS

    assert set(TOUCH_FIELDS) == {s.name for s in LEAD if s.set_by == "touch"}
    assert set(TOUCH_FIELDS) == {"original_source", "first_touch_at", "latest_touch_at"} | {
        f"{end}_utm_{part}" for end in ("first", "latest") for part in ("source", "medium", "campaign", "term", "content")
    }


# --- CSV import and export -------------------------------------------------


EXPECTED_CSV_HEADER = [
    "id", "email", "first_name", "last_name", "job_title", "phone", "company_name", "country", "region",
    "postal_code", "time_zone", "lifecycle_stage", "salesforce_lead_id", "salesforce_contact_id", "hubspot_id",
    "account", "owner", "fit_score", "engagement_score", "total_score", "original_source", "first_utm_source",
    "first_utm_medium", "first_utm_campaign", "latest_utm_source", "latest_utm_medium", "latest_utm_campaign",
    "created_at", "properties",
]


@pytest.mark.django_db
def test_the_export_writes_the_declared_columns_in_their_order():
    from martech.resources import LeadExportResource

    LeadFactory()
    header = next(csv.reader(io.StringIO(LeadExportResource().export(Lead.objects.all()).csv)))
    importable = [s.name for s in LEAD if s.export and declared.IMPORT in s.writers and s.name != "properties"]
    export_only = [s.name for s in LEAD if s.export and not s.writers]
    assert header == [*export_only[:1], *importable, *export_only[1:], "properties"]
    # The order people's files rely on (an exported file is imported back).
    assert header == EXPECTED_CSV_HEADER


def test_the_import_takes_the_declared_import_columns():
    from martech.resources import EXPORT_ONLY_COLUMNS, IMPORT_COLUMNS

    assert set(IMPORT_COLUMNS) == {s.name for s in LEAD if declared.IMPORT in s.writers} - {"properties"}
    assert set(EXPORT_ONLY_COLUMNS) == {s.name for s in LEAD if s.export and declared.IMPORT not in s.writers}


# --- admin ----------------------------------------------------------------------


@pytest.fixture
def admin_request(superuser):
    request = RequestFactory().get("/")
    request.user = superuser
    return request


@pytest.mark.django_db
def test_the_lead_admin_edits_the_declared_staff_fields_and_shows_the_rest(admin_request):
    from martech.admin.leads import FORM_FIELDS

    lead_admin = admin.site._registry[Lead]
    staff = {s.name for s in LEAD if declared.STAFF in s.writers}
    # The form's plain fields; the stage (a step with a reason) and the
    # properties (JSON) are written apart, both editable on the page.
    assert set(FORM_FIELDS) == staff - {"lifecycle_stage", "properties"}
    assert set(_flat(lead_admin.get_fieldsets(admin_request, None))) == staff
    lead = LeadFactory()
    shown = set(_flat(lead_admin.get_fieldsets(admin_request, lead)))
    readonly = set(lead_admin.get_readonly_fields(admin_request, lead))
    concrete = {s.name for s in LEAD if s.concrete} - {"id"}
    assert concrete <= shown
    assert concrete & readonly == concrete - staff
    assert concrete - readonly == staff


@pytest.mark.django_db
def test_the_account_admin_edits_the_declared_staff_fields(admin_request):
    account_admin = admin.site._registry[Account]
    staff = {s.name for s in ACCOUNT if declared.STAFF in s.writers}
    readonly = set(account_admin.get_readonly_fields(admin_request, None))
    shown = set(_flat(account_admin.get_fieldsets(admin_request, None)))
    assert shown == {s.name for s in ACCOUNT if s.concrete} - {"id"}
    assert shown - readonly == staff


# --- API --------------------------------------------------------------------------


def test_the_api_input_serializers_take_the_declared_api_fields():
    from martech.api import serializers

    for cls, specs in ((serializers.LeadInputSerializer, LEAD), (serializers.LeadUpsertInputSerializer, LEAD),
                       (serializers.AccountInputSerializer, ACCOUNT),
                       (serializers.AccountUpsertInputSerializer, ACCOUNT)):
        assert set(cls().fields) == {s.name for s in specs if declared.API in s.writers}, cls.__name__


def test_the_api_output_serializers_show_every_declared_field_in_order():
    from martech.api import serializers

    assert list(serializers.LeadOutputSerializer().fields) == [s.name for s in LEAD]
    assert list(serializers.LeadDetailOutputSerializer().fields) == [*(s.name for s in LEAD), "consent"]
    assert list(serializers.AccountOutputSerializer().fields) == [s.name for s in ACCOUNT]


def test_the_form_builder_offers_the_fields_declared_for_public_forms():
    from martech.admin.forms import FormAdminForm

    offered = FormAdminForm.base_fields["fields"].widget.lead_fields
    assert set(offered) == {s.name for s in LEAD if declared.FORM in s.writers} - {"properties"} | {"properties."}
    assert not set(offered) & set(CRM_KEYS)
