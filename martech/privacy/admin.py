"""The Privacy area of the ops console: every export and erasure, and the
page that starts one for a person named by email, lead id or CRM id (the
lead list has the same as actions). Superusers and the Privacy role
(martech.roles) see it; acting needs the export or erase permission."""
from __future__ import annotations

from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst

from martech.admin.base import BaseAdmin, ReadOnlyMixin, denied, validation_messages
from martech.privacy import services
from martech.privacy.forms import SubjectForm
from martech.privacy.models import CrmDeletion, PrivacyRequest
from martech.privacy.subjects import sections, subject_find

EXPORT_PERM = "privacy.export_subject"
ERASE_PERM = "privacy.erase_subject"


def kind_label(label: str) -> str:
    """"nurture.Message" as ops read it: "Messages (Nurture workflows)"."""
    try:
        model = apps.get_model(label)
    except LookupError:
        return label
    return f"{capfirst(model._meta.verbose_name_plural)} ({model._meta.app_config.verbose_name})"


def zip_response(export: services.Export) -> HttpResponse:
    response = HttpResponse(export.zip(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="subject-access-{export.request.pk}.zip"'
    return response


class CrmDeletionInline(ReadOnlyMixin, admin.TabularInline):
    model = CrmDeletion
    fields = ("connection", "status", "done_at")
    readonly_fields = fields
    extra = 0
    verbose_name_plural = "CRM deletions"


@admin.register(PrivacyRequest)
class PrivacyRequestAdmin(ReadOnlyMixin, BaseAdmin):
    list_display = ("__str__", "kind", "subject_kind", "requested_by", "source", "records", "created_at")
    list_filter = ("kind", "created_at")
    list_select_related = ("requested_by",)
    search_fields = ("subject_hash",)
    search_help_text = "A subject's salted hash (see a request's page), to find every request about one person."
    fields = ("kind", "subject_kind", "subject_hash", "requested_by", "source", "created_at", "receipt",
              "crm_deletes")
    readonly_fields = fields
    inlines = [CrmDeletionInline]
    change_list_template = "admin/privacy/privacyrequest/change_list.html"

    @admin.display(description="Records")
    def records(self, obj: PrivacyRequest) -> int:
        counts = obj.counts or {}
        if obj.kind == PrivacyRequest.Kind.ERASURE:
            return sum(sum(part.values()) for part in counts.values() if isinstance(part, dict))
        return sum(v for v in counts.values() if isinstance(v, int))

    @admin.display(description="Receipt")
    def receipt(self, obj: PrivacyRequest) -> str:
        counts = obj.counts or {}
        parts = counts.items() if obj.kind == PrivacyRequest.Kind.ERASURE else [("found", counts)]
        rows = [(what.capitalize(), kind_label(label), n) for what, per in parts if isinstance(per, dict)
                for label, n in sorted(per.items())]
        if not rows:
            return "Nothing held."
        return format_html("<table><tr><th>What</th><th>Kind of record</th><th>Rows</th></tr>{}</table>",
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows))

    def get_urls(self):
        return [path("subject/", self.admin_site.admin_view(self.subject_view), name="privacy_subject"),
                *super().get_urls()]

    def subject_view(self, request: HttpRequest):
        """Export (a zip download) or erase (after a confirmation page) the
        person named on the form."""
        user = request.user
        if not (user.has_perm(EXPORT_PERM) or user.has_perm(ERASE_PERM)):
            return denied(request, "Exporting or erasing a person's data takes the Privacy role "
                                   "(privacy.export_subject or privacy.erase_subject).", reverse("admin:index"))
        form = SubjectForm(request.POST or None)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "title": "Export or erase a person's data", "can_export": user.has_perm(EXPORT_PERM),
                   "can_erase": user.has_perm(ERASE_PERM)}
        if request.method == "POST" and form.is_valid():
            try:
                if "export" in request.POST and context["can_export"]:
                    export = services.subject_export(**form.subject_kwargs(), actor=user, source="admin")
                    return zip_response(export)
                if "erase" in request.POST and context["can_erase"]:
                    if "confirm" not in request.POST:
                        subject = subject_find(**form.subject_kwargs())
                        context["found"] = [(kind_label(label), n) for label, qs in sections(subject)
                                            if (n := qs.count())]
                        return TemplateResponse(request, "admin/privacy/confirm_erase.html", context)
                    receipt = services.subject_erase(
                        **form.subject_kwargs(), actor=user, source="admin",
                        crm_delete=form.cleaned_data["crm_delete"])
                    self.message_user(request, f"Erased: receipt #{receipt.pk}.", messages.SUCCESS)
                    return HttpResponseRedirect(reverse("admin:privacy_privacyrequest_change", args=[receipt.pk]))
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, line, messages.ERROR)
        return TemplateResponse(request, "admin/privacy/subject.html", context)


# --- actions on the lead list -------------------------------------------------------


@admin.action(description="Export personal data (zip)…", permissions=["privacy_export"])
def export_personal_data(modeladmin, request, queryset):
    leads = list(queryset.values_list("pk", flat=True)[:2])
    if len(leads) != 1:
        modeladmin.message_user(request, "Select one lead to export.", messages.WARNING)
        return None
    return zip_response(services.subject_export(lead_id=leads[0], actor=request.user, source="admin"))


@admin.action(description="Erase personal data…", permissions=["privacy_erase"])
def erase_personal_data(modeladmin, request, queryset):
    from martech.admin.actions import _confirmation

    form = SubjectForm(initial={"crm_delete": True})
    if "apply" not in request.POST:
        return _confirmation(modeladmin, request, queryset, action="erase_personal_data",
                             title="Erase personal data", template="admin/privacy/action_erase.html", form=form)
    crm_delete = bool(request.POST.get("crm_delete"))
    erased = 0
    for lead_id in list(queryset.values_list("pk", flat=True)):
        try:
            # Not logged on the lead (its log entry would name the person): the receipt is the record.
            services.subject_erase(lead_id=lead_id, actor=request.user, source="admin",
                                                      crm_delete=crm_delete)
        except ValidationError as exc:
            for line in validation_messages(exc):
                modeladmin.message_user(request, f"lead #{lead_id}: {line}", messages.ERROR)
            continue
        erased += 1
    modeladmin.message_user(request, f"Erased {erased} person(s); the receipts are in Privacy requests.")
    return None
