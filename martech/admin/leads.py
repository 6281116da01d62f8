"""Leads: the ops console's main screen.

Writes go through ``martech.services.leads`` (docs/style.md, 7): a new lead through
``lead_upsert``, an edit through ``lead_upsert(overwrite=True)``, a stage
change through ``lead_change_stage`` with the acting user and a reason. The
change page shows the lead's timeline (events, stage changes, consent) from
``martech.selectors``.
"""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from import_export.admin import ExportMixin

from martech.admin.actions import change_lifecycle_stage, merge_leads
from martech.privacy.admin import erase_personal_data, export_personal_data
from martech.admin.base import BigTableAdmin, ServiceSaveMixin, add_errors_to_form
from martech.models import Identity, Lead, LifecycleStage
from martech.resources import LeadExportResource
from martech import hooks
from martech.selectors import ROUTED_REP, lead_360, lead_consent_state, lead_timeline, user_label
from martech.services.leads import CRM_KEYS, clean_lead_data, lead_change_stage, lead_upsert

# The lead fields the form edits: exactly what lead_upsert may write.
FORM_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "job_title",
    "phone",
    "company_name",
    "country",
    "region",
    "postal_code",
    "time_zone",
    "salesforce_lead_id",
    "salesforce_contact_id",
    "hubspot_id",
)
# Set by scoring, routing and attribution, never typed in here.
COMPUTED_FIELDS = (
    "account",
    "owner",
    "fit_score",
    "engagement_score",
    "total_score",
    "original_source",
    "first_touch_at",
    "first_utm_source",
    "first_utm_medium",
    "first_utm_campaign",
    "first_utm_term",
    "first_utm_content",
    "latest_touch_at",
    "latest_utm_source",
    "latest_utm_medium",
    "latest_utm_campaign",
    "latest_utm_term",
    "latest_utm_content",
    "created_at",
    "updated_at",
)
TIMELINE_LIMIT = 100


def _service_value(value: Any) -> Any:
    """A form value as the service takes it (PhoneNumber -> str, None kept)."""
    if value is None or isinstance(value, (dict, list)):
        return value
    return str(value)


class LeadAdminForm(forms.ModelForm):
    stage_reason = forms.CharField(
        max_length=255,
        required=False,
        label="Reason for the stage change",
        help_text="Required when you change the lifecycle stage; kept in its history.",
    )

    class Meta:
        model = Lead
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        # The capture path's validation and normalization, so the admin cannot
        # store "Ann@X.com " beside "ann@x.com" (the ModelForm's unique check
        # then runs on the normalized email).
        data = {f: _service_value(cleaned.get(f)) for f in FORM_FIELDS if f in self.fields and f in cleaned}
        if "properties" in cleaned and isinstance(cleaned["properties"], dict):
            data["properties"] = cleaned["properties"]
        try:
            normalized = clean_lead_data(data)
        except ValidationError as exc:
            add_errors_to_form(self, exc)
            return cleaned
        for f, value in normalized.items():
            if f in self.fields and f != "properties":
                cleaned[f] = value
        instance_keys = {k: getattr(self.instance, k) for k in ("email", *CRM_KEYS) if k not in self.fields}
        keys = {**instance_keys, **{k: cleaned.get(k) for k in ("email", *CRM_KEYS) if k in self.fields}}
        if not any(keys.values()):
            self.add_error("email" if "email" in self.fields else None, "An email (or a CRM id) is required.")
        if self.instance.pk and "lifecycle_stage" in self.changed_data:
            if cleaned.get("lifecycle_stage") is None:
                self.add_error("lifecycle_stage", "Choose a stage; a lead's stage can be changed, not removed.")
            elif not cleaned.get("stage_reason"):
                self.add_error("stage_reason", "Give a reason for the stage change.")
        return cleaned


class IdentityInline(admin.TabularInline):
    """Ids the lead was seen under; linked by capture (services.identity_link)."""

    model = Identity
    extra = 0
    fields = ("kind", "value", "created_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ScoreRangeFilter(admin.SimpleListFilter):
    """Total score in a range: the bands offered, or any ``min-max`` (either
    end may be left out: ``80-``) typed into the URL."""

    title = "score"
    parameter_name = "score"
    BANDS = (("-24", "Under 25"), ("25-49", "25 to 49"), ("50-79", "50 to 79"), ("80-", "80 and over"))

    def lookups(self, request, model_admin):
        return self.BANDS

    @staticmethod
    def bounds(value: str) -> tuple[int | None, int | None]:
        """``"50-79"`` -> (50, 79), ``"80-"`` -> (80, None), ``"-24"`` -> (None, 24), ``"50"`` -> (50, 50)."""
        low, sep, high = value.partition("-")
        try:
            low_n = int(low) if low.strip() else None
            high_n = (int(high) if high.strip() else None) if sep else low_n
        except ValueError:
            raise ValueError("give it as min-max, e.g. 50-79, 80- or -24") from None
        if low_n is None and high_n is None:
            raise ValueError("give at least one end, e.g. 80-")
        if low_n is not None and high_n is not None and low_n > high_n:
            raise ValueError(f"the minimum {low_n} is above the maximum {high_n}")
        return low_n, high_n

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            low, high = self.bounds(self.value())
        except ValueError as exc:
            # The changelist answers a bad filter by reloading without any;
            # the message says which one and why.
            messages.error(request, f"Score filter {self.value()!r}: {exc}.")
            raise IncorrectLookupParameters(str(exc)) from None
        if low is not None:
            queryset = queryset.filter(total_score__gte=low)
        if high is not None:
            queryset = queryset.filter(total_score__lte=high)
        return queryset


@admin.register(Lead)
class LeadAdmin(ServiceSaveMixin, ExportMixin, BigTableAdmin):
    form = LeadAdminForm
    resource_classes = [LeadExportResource]
    import_export_change_list_template = "admin/martech/lead/change_list.html"
    # Sized for a 1366 px screen with the navigation and filter sidebars
    # open: the person (email, name, company) in one cell, date without time.
    list_display = ("lead_cell", "stage", "score", "owner_or_rep", "country", "created_on", "open_360")
    list_display_links = ("lead_cell",)
    list_select_related = ("lifecycle_stage", "owner")
    # Only filters that cost nothing to draw: FK filters list the (small)
    # related table, choice and date filters query nothing. A filter on
    # country would SELECT DISTINCT over every lead. Routing adds its
    # owner/rep filter and scoring its segment filter (after the score), so
    # the core imports neither.
    list_filter = ["lifecycle_stage", ScoreRangeFilter, "original_source", "created_at"]
    search_fields = ("email", "first_name", "last_name", "company_name")
    search_help_text = "Email (a full address is looked up exactly), first or last name, or company."
    actions = [change_lifecycle_stage, merge_leads, export_personal_data, erase_personal_data]
    inlines = [IdentityInline]

    # --- changelist ---------------------------------------------------------

    @admin.display(description="Lead", ordering="email")
    def lead_cell(self, obj: Lead) -> str:
        who = " · ".join(x for x in (obj.full_name, obj.company_name) if x)
        if not who:
            return str(obj)
        return format_html('{}<br><span class="lead-who">{}</span>', obj, who)

    @admin.display(description="Stage", ordering="lifecycle_stage__order")
    def stage(self, obj: Lead) -> str:
        return obj.lifecycle_stage.name if obj.lifecycle_stage else "—"

    @admin.display(description="Score", ordering="total_score")
    def score(self, obj: Lead) -> int:
        return obj.total_score

    @admin.display(description="Owner / rep", ordering="owner__username")
    def owner_or_rep(self, obj: Lead) -> str:
        # A routed rep without a user account leaves Lead.owner empty; the
        # rep routing chose is who owns the lead then (lead_list_annotations).
        return user_label(obj.owner) or getattr(obj, ROUTED_REP, None) or "—"

    @admin.display(description="Created", ordering="created_at")
    def created_on(self, obj: Lead) -> str:
        return f"{obj.created_at:%Y-%m-%d}"

    @admin.display(description="")
    def open_360(self, obj: Lead) -> str:
        return format_html('<a href="{}" title="Everything about this lead on one page">360</a>',
                           reverse("admin:martech_lead_360", args=[obj.pk]))

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        # Columns a later stage adds to the list, e.g. routing's current rep
        # (one correlated subquery per row shown, on an indexed lookup).
        return qs.annotate(**(hooks.call("lead_list_annotations") or {}))

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term and " " not in term and "@" in term:
            try:
                validate_email(term.lower())
            except ValidationError:
                pass
            else:
                # A whole address: the unique index answers at once, where
                # icontains would scan every lead.
                return queryset.filter(email=term.lower()), False
        return super().get_search_results(request, queryset, search_term)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "has_import_permission": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context)

    # --- change page --------------------------------------------------------

    def get_fieldsets(self, request, obj=None):
        person = ["email", "first_name", "last_name", "job_title", "phone", "company_name", "account", "owner"]
        place = ["country", "region", "postal_code", "time_zone"]
        stage = ["lifecycle_stage"]
        if obj is not None and self.has_change_permission(request, obj):
            stage.append("stage_reason")
        if obj is None:
            return [
                (None, {"fields": [f for f in person if f not in ("account", "owner")] + place + stage}),
                ("CRM ids", {"fields": list(CRM_KEYS), "classes": ["collapse"]}),
                ("Custom properties", {"fields": ["properties"]}),
            ]
        return [
            (None, {"fields": person + place}),
            ("Lifecycle and score", {"fields": stage + ["fit_score", "engagement_score", "total_score",
                                                     "score_explanation"]}),
            ("Timeline", {"fields": ["related_links", "consent_summary", "timeline"]}),
            (
                "Attribution",
                {
                    "fields": [
                        "original_source",
                        "first_touch_at",
                        ("first_utm_source", "first_utm_medium", "first_utm_campaign"),
                        ("first_utm_term", "first_utm_content"),
                        "latest_touch_at",
                        ("latest_utm_source", "latest_utm_medium", "latest_utm_campaign"),
                        ("latest_utm_term", "latest_utm_content"),
                    ],
                    "classes": ["collapse"],
                },
            ),
            ("CRM ids", {"fields": list(CRM_KEYS)}),
            ("Custom properties", {"fields": ["properties"], "classes": ["collapse"]}),
            ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
        ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        stage = form.base_fields.get("lifecycle_stage")
        if stage is not None:
            # Stages are edited on their own screen, not from a lead.
            for attr in ("can_add_related", "can_change_related", "can_delete_related", "can_view_related"):
                setattr(stage.widget, attr, False)
        return form

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return [*COMPUTED_FIELDS, "related_links", "consent_summary", "timeline", "score_explanation"]

    @admin.display(description="Why this score")
    def score_explanation(self, obj: Lead) -> str:
        # Offered by martech.scoring through a named provider, so the core
        # does not import the scoring app.
        if obj is None or obj.pk is None:
            return "—"
        return hooks.call("score_explanation_html", lead=obj) or "—"

    @admin.display(description="Timeline")
    def timeline(self, obj: Lead) -> str:
        if obj is None or obj.pk is None:
            return "—"
        return render_to_string(
            "admin/martech/lead/timeline.html",
            {"entries": lead_timeline(lead=obj, limit=TIMELINE_LIMIT), "limit": TIMELINE_LIMIT},
        )

    @admin.display(description="Consent")
    def consent_summary(self, obj: Lead) -> str:
        if obj is None or obj.pk is None:
            return "—"
        return render_to_string("admin/martech/lead/consent_summary.html", {"state": lead_consent_state(lead=obj)})

    @admin.display(description="History")
    def related_links(self, obj: Lead) -> str:
        if obj is None or obj.pk is None:
            return "—"
        links = [
            ("martech_event", "All events"),
            ("martech_stagetransition", "Stage history"),
            ("martech_consentrecord", "Consent records"),
            ("martech_identity", "Identities"),
        ]
        return format_html(
            " · ".join(['<a href="{}?lead__id__exact={}">{}</a>'] * len(links)),
            *[x for name, label in links for x in (reverse(f"admin:{name}_changelist"), obj.pk, label)],
        )

    # --- writes -------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: Lead, form: LeadAdminForm, change: bool) -> None:
        saved = self.call_service(request, self._save_lead, request=request, obj=obj, form=form, change=change)
        if saved is not None:
            obj.pk = saved.pk
            obj._state.adding = False
            obj._state.db = saved._state.db

    def _save_lead(self, *, request: HttpRequest, obj: Lead, form: LeadAdminForm, change: bool) -> Lead:
        cleaned = form.cleaned_data
        if not change:
            data = {f: _service_value(cleaned.get(f)) for f in FORM_FIELDS if cleaned.get(f) not in (None, "")}
            if cleaned.get("lifecycle_stage"):
                data["lifecycle_stage"] = cleaned["lifecycle_stage"].key
            if cleaned.get("properties"):
                data["properties"] = cleaned["properties"]
            lead, _ = lead_upsert(data=data, source="admin", actor=request.user)
            return lead
        # Only what the user changed: a field someone else wrote meanwhile
        # (a capture, a CRM pull) is not overwritten with this form's old copy.
        changed = {f: _service_value(cleaned.get(f)) for f in FORM_FIELDS if f in form.changed_data}
        if "properties" in form.changed_data:
            changed["properties"] = cleaned.get("properties") or {}
        lead = obj
        if changed:
            # lead= pins this row, so an edit may change the email itself.
            lead, _ = lead_upsert(data=changed, source="admin", actor=request.user, overwrite=True, lead=obj)
        if "lifecycle_stage" in form.changed_data:
            lead_change_stage(
                lead=lead,
                to_stage=cleaned["lifecycle_stage"],
                reason=cleaned["stage_reason"],
                actor=request.user,
                source="admin",
            )
        return lead

    def has_export_permission(self, request: HttpRequest) -> bool:
        # django-import-export allows any staff user by default (no
        # IMPORT_EXPORT_EXPORT_PERMISSION_CODE); exporting is viewing in bulk.
        return self.has_view_permission(request)

    def has_merge_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and self.has_delete_permission(request)

    # The privacy actions (martech.privacy.admin): the Privacy role's, not an edit of the lead.
    def has_privacy_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("privacy.export_subject")

    def has_privacy_erase_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("privacy.erase_subject")

    # --- CSV import ---------------------------------------------------------

    def has_import_permission(self, request: HttpRequest) -> bool:
        return self.has_add_permission(request) and self.has_change_permission(request)

    def get_urls(self):
        return [
            path("<path:object_id>/360/", self.admin_site.admin_view(self.lead_360_view), name="martech_lead_360"),
            path(
                "import-csv/",
                self.admin_site.admin_view(self.import_csv_view),
                name="martech_lead_import_csv",
            ),
            *super().get_urls(),
        ]

    def lead_360_view(self, request: HttpRequest, object_id: str):
        """Everything about one lead on one page (selectors.lead_360): each
        section only for a user who may view what it shows."""
        try:
            lead_id = int(object_id)
        except ValueError:
            lead_id = None
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = lead_360(lead_id=lead_id, user=request.user) if lead_id is not None else None
        if data is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        sections = [
            {"key": s.key, "title": s.title, "html": render_to_string(s.template, s.context, request)}
            for s in data.sections
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{data.lead.full_name or data.lead}: 360",
            "opts": self.opts,
            "lead": data.lead,
            "facts": data.facts,
            "sections": sections,
            "has_change_permission": self.has_change_permission(request, data.lead),
        }
        return TemplateResponse(request, "admin/martech/lead/lead_360.html", context)

    def import_csv_view(self, request: HttpRequest):
        from martech.services.imports import lead_import_csv

        if not self.has_import_permission(request):
            raise PermissionDenied
        form = LeadImportForm(request.POST or None, request.FILES or None)
        report = None
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                report = lead_import_csv(file=upload, actor=request.user, source=f"import:{upload.name}"[:100])
            except ValidationError as exc:
                add_errors_to_form(form, exc)
            else:
                level = messages.WARNING if report.errors else messages.SUCCESS
                self.message_user(request, f"Imported {upload.name}: {report.summary()}", level)
                if not report.errors:
                    return HttpResponseRedirect(reverse("admin:martech_lead_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Import leads from CSV",
            "opts": self.opts,
            "form": form,
            "report": report,
            "errors_shown": report.errors[:1000] if report else [],
            "columns": LeadExportResource.Meta.fields,
            "stages": LifecycleStage.objects.order_by("order").values_list("key", flat=True),
        }
        return TemplateResponse(request, "admin/martech/lead/import_csv.html", context)


class LeadImportForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="UTF-8 with a header row. Blank cells keep the stored value; "
        "rows are matched by email, else a CRM id.",
    )
