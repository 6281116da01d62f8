"""django-import-export resources: the lead CSV export.

Only export goes through django-import-export. Import has its own service
(``martech.services.imports.lead_import_csv``) because the library's admin
import is all-or-nothing on validation errors and writes row by row; see
that module's docstring.

The export's column names are the import's, so an exported file can be
edited and imported back: writable columns update the lead, the read-only
ones (``EXPORT_ONLY_COLUMNS``) are ignored on import. Cells a spreadsheet would
run as formulas are quoted (``martech.csvsafe``); the import unquotes them.
"""
from __future__ import annotations

import json

from import_export import fields, resources

from martech import fields as declared
from martech.csvsafe import cell_escape
from martech.models import Lead

# Writable lead fields, in the order a person reads them; the import accepts
# exactly these (plus "properties" and "properties.<name>"). Then the columns
# only the export writes. Both from the declaration (martech.fields).
IMPORT_COLUMNS, EXPORT_ONLY_COLUMNS = declared.lead_csv_columns()
# "id" leads the file, "properties" (one JSON cell) ends it.
EXPORT_COLUMNS = ("id", *IMPORT_COLUMNS, *(c for c in EXPORT_ONLY_COLUMNS if c != "id"), "properties")


class LeadExportResource(resources.ModelResource):
    lifecycle_stage = fields.Field(attribute="lifecycle_stage__key", column_name="lifecycle_stage")
    account = fields.Field(attribute="account__name", column_name="account")
    owner = fields.Field(attribute="owner__username", column_name="owner")
    phone = fields.Field(column_name="phone")
    properties = fields.Field(column_name="properties")

    class Meta:
        model = Lead
        fields = EXPORT_COLUMNS
        export_order = EXPORT_COLUMNS
        # Iterates with .iterator(chunk_size) (no prefetches), so a large
        # export streams from the database instead of loading every lead.
        chunk_size = 2000

    def filter_export(self, queryset, **kwargs):
        # The changelist's queryset already has its filters and search; the
        # joins here keep the export at one query per chunk.
        return queryset.select_related("lifecycle_stage", "account", "owner")

    def export_resource(self, instance, selected_fields=None, **kwargs):
        # Values can come from public forms: no cell may run as a formula.
        return [cell_escape(v) for v in super().export_resource(instance, selected_fields, **kwargs)]

    def dehydrate_phone(self, lead: Lead) -> str:
        return str(lead.phone) if lead.phone else ""

    def dehydrate_properties(self, lead: Lead) -> str:
        return json.dumps(lead.properties, sort_keys=True) if lead.properties else ""
