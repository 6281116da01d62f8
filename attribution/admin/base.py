"""What the attribution screens share: the CSV upload view."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from attribution.imports import csv_rows
from martech.admin.base import validation_messages


class CsvUploadForm(forms.Form):
    file = forms.FileField(help_text="UTF-8 CSV with a header row.")


class CsvImportMixin:
    """Adds ``import-csv/`` to a ModelAdmin: upload, call ``import_service``
    (all or nothing), report. Needs the model's add permission."""

    import_service = None  # staticmethod(fn(*, rows, ...)) -> dict
    import_columns: tuple[str, ...] = ()

    def get_urls(self):
        opts = self.model._meta
        return [
            path("import-csv/", self.admin_site.admin_view(self.import_csv_view), name=f"{opts.app_label}_{opts.model_name}_import_csv"),
            *super().get_urls(),
        ]

    def call_import(self, request, rows):
        return type(self).import_service(rows=rows)

    def import_csv_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        opts = self.model._meta
        form = CsvUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                result = self.call_import(request, csv_rows(form.cleaned_data["file"].read()))
            except ValidationError as exc:
                for msg in validation_messages(exc):
                    messages.error(request, msg)
            else:
                messages.success(request, "Imported: " + ", ".join(f"{k} {v}" for k, v in result.items()))
                return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        context = {
            **self.admin_site.each_context(request), "opts": opts, "form": form, "columns": self.import_columns,
            "title": f"Import {opts.verbose_name_plural} from CSV",
        }
        return TemplateResponse(request, "admin/attribution/import_csv.html", context)
