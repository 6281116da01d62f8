"""The lead's and the account's fields, declared once.

Each field says who may write it and where it is shown; the lists the rest
of the code uses are read from here:

- ``martech.models``: ``LEAD_WRITABLE_FIELDS`` (what capture, import, API
  and forms may set) and ``CRM_KEYS`` (the CRM ids that find a lead);
- ``martech.services.accounts``: ``ACCOUNT_WRITABLE_FIELDS``;
- the admin: the lead form's editable fields and the read-only rest, the
  account's read-only fields;
- ``martech.resources``: the CSV columns, in order (import and export);
- ``martech.api.serializers``: the output serializers' fields, in order (the
  input serializers type each writable field; a test keeps their names equal
  to the declaration);
- ``martech.services.ingest``: the touch fields events write.

A model field added without a line here fails a test (every concrete field
is declared), so each new field gets a decision on who writes it.

This module imports nothing from the project: models read it.
"""
from __future__ import annotations

from dataclasses import dataclass

# Who may write a field.
STAFF = "staff"  # the admin's form
IMPORT = "import"  # the CSV import
API = "api"  # the REST API's upsert and edit
FORM = "form"  # a public form's field (Form.fields' lead_field)
CRM = "crm"  # a CRM pull
EVERYONE = frozenset({STAFF, IMPORT, API, FORM, CRM})


@dataclass(frozen=True)
class FieldSpec:
    name: str
    # Who may write it; empty: set by the platform (``set_by`` says which part).
    writers: frozenset[str] = frozenset()
    set_by: str = ""
    # A column of the CSV export (writable ones are also import columns).
    export: bool = False
    # A lead's CRM id: it finds the lead as the email does (models.CRM_KEYS).
    crm_key: bool = False
    # A model field (False: a property the API shows, e.g. full_name).
    concrete: bool = True


def _f(name: str, writers=frozenset(), **kw) -> FieldSpec:
    return FieldSpec(name, frozenset(writers), **kw)


# A public form cannot set a CRM id nor choose the lifecycle stage (a form
# gives its stage in its defaults): models.form_fields_clean refuses them.
_NOT_FORM = EVERYONE - {FORM}

# In the order people read them: the API output's order, and the CSV's
# (``lead_csv_columns``). Every field is in the API's output.
LEAD_FIELDS: tuple[FieldSpec, ...] = (
    _f("id", set_by="database", export=True),
    _f("email", EVERYONE, export=True),
    _f("first_name", EVERYONE, export=True),
    _f("last_name", EVERYONE, export=True),
    _f("full_name", set_by="model", concrete=False),
    _f("job_title", EVERYONE, export=True),
    _f("phone", EVERYONE, export=True),
    _f("company_name", EVERYONE, export=True),
    _f("account", set_by="email domain", export=True),
    _f("country", EVERYONE, export=True),
    _f("region", EVERYONE, export=True),
    _f("postal_code", EVERYONE, export=True),
    _f("time_zone", EVERYONE, export=True),
    _f("owner", set_by="routing", export=True),
    _f("lifecycle_stage", _NOT_FORM, export=True),
    _f("fit_score", set_by="scoring", export=True),
    _f("engagement_score", set_by="scoring", export=True),
    _f("total_score", set_by="scoring", export=True),
    _f("original_source", set_by="touch", export=True),
    _f("first_touch_at", set_by="touch"),
    _f("first_utm_source", set_by="touch", export=True),
    _f("first_utm_medium", set_by="touch", export=True),
    _f("first_utm_campaign", set_by="touch", export=True),
    _f("first_utm_term", set_by="touch"),
    _f("first_utm_content", set_by="touch"),
    _f("latest_touch_at", set_by="touch"),
    _f("latest_utm_source", set_by="touch", export=True),
    _f("latest_utm_medium", set_by="touch", export=True),
    _f("latest_utm_campaign", set_by="touch", export=True),
    _f("latest_utm_term", set_by="touch"),
    _f("latest_utm_content", set_by="touch"),
    _f("salesforce_lead_id", _NOT_FORM, export=True, crm_key=True),
    _f("salesforce_contact_id", _NOT_FORM, export=True, crm_key=True),
    _f("hubspot_id", _NOT_FORM, export=True, crm_key=True),
    # Custom properties: written key by key ("properties.<name>"), exported
    # as one JSON column after the others.
    _f("properties", EVERYONE, export=True),
    _f("created_at", set_by="database", export=True),
    _f("updated_at", set_by="database"),
)

ACCOUNT_FIELDS: tuple[FieldSpec, ...] = (
    _f("id", set_by="database"),
    _f("name", {STAFF, API, CRM}),
    _f("domain", {STAFF, API, CRM}),
    _f("industry", {STAFF, API, CRM}),
    _f("employee_count", {STAFF, API, CRM}),
    _f("annual_revenue", {STAFF, API, CRM}),
    _f("currency", {STAFF, API, CRM}),
    _f("country", {STAFF, API, CRM}),
    _f("owner", {STAFF, API, CRM}),
    _f("salesforce_id", {STAFF, API, CRM}),
    _f("hubspot_id", {STAFF, API, CRM}),
    _f("created_at", set_by="database"),
    _f("updated_at", set_by="database"),
)


def names(specs: tuple[FieldSpec, ...], *, writer: str | None = None, set_by: str | None = None,
          export: bool | None = None, crm_key: bool | None = None,
          concrete: bool | None = None) -> tuple[str, ...]:
    """The names of the fields matching every criterion given, in declaration order."""
    return tuple(
        s.name
        for s in specs
        if (writer is None or writer in s.writers)
        and (set_by is None or s.set_by == set_by)
        and (export is None or s.export == export)
        and (crm_key is None or s.crm_key == crm_key)
        and (concrete is None or s.concrete == concrete)
    )


def writable(specs: tuple[FieldSpec, ...]) -> frozenset[str]:
    """Fields someone outside the platform may write (a person, a file, a client, a CRM)."""
    return frozenset(s.name for s in specs if s.writers)


def readonly(specs: tuple[FieldSpec, ...], *, writer: str) -> tuple[str, ...]:
    """Concrete fields ``writer`` may not write, in order, without the id."""
    return tuple(s.name for s in specs if s.concrete and writer not in s.writers and s.name != "id")


def lead_csv_columns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(import_columns, export_only_columns)`` of the lead CSV: the import
    takes the writable columns (and ``properties``, handled apart); the export
    writes ``id``, the writable columns, the read-only ones, then ``properties``."""
    exported = [s for s in LEAD_FIELDS if s.export and s.name != "properties"]
    return (
        tuple(s.name for s in exported if IMPORT in s.writers),
        tuple(s.name for s in exported if IMPORT not in s.writers),
    )
