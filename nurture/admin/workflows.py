from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from martech.admin.base import BaseAdmin, ServiceSaveMixin, add_errors_to_form, denied, validation_messages
from martech.models import Lead
from martech.scoring.models import Segment
from nurture.gallery import GALLERY, workflow_create_from_gallery
from nurture.models import Workflow, WorkflowVersion
from nurture.selectors import workflow_metrics
from nurture.services import (
    enrollment_create,
    enrollments_migrate,
    workflow_publish,
    workflow_save,
    workflow_set_status,
    workflow_test_run,
    workflow_validate,
)


class WorkflowForm(forms.ModelForm):
    # Stored as a list of segment ids (it is copied into each version's
    # settings); picked here by name.
    suppress_segments = forms.ModelMultipleChoiceField(
        queryset=Segment.objects.all(), required=False, widget=admin.widgets.FilteredSelectMultiple("segments", False),
        help_text="Members of these segments are never enrolled, and leave the journey at their next step.",
    )

    class Meta:
        model = Workflow
        fields = "__all__"
        widgets = {"definition": forms.Textarea(attrs={"rows": 24, "cols": 100, "style": "font-family:monospace"})}
        help_texts = {"trigger_config": 'event: {"event": "cart_abandoned", "condition": "..."}; form: {"form": "<key>"}; '
                                        'segment: {"segment": <segment id>, "enroll_existing": true}; stage: {"stage": "mql"}; '
                                        'score: {"threshold": 80}; CRM field: {"fields": ["status"]}'}

    def clean_suppress_segments(self):
        return sorted(s.pk for s in self.cleaned_data["suppress_segments"])

    def _post_clean(self):
        super()._post_clean()  # the instance carries the form's values from here on
        if not self.errors:
            try:
                workflow_validate(workflow=self.instance)
            except ValidationError as exc:
                add_errors_to_form(self, exc)


def _each(modeladmin, request, queryset, fn, verb):
    done = 0
    for wf in queryset:
        try:
            fn(wf)
            done += 1
        except ValidationError as exc:
            for line in validation_messages(exc):
                modeladmin.message_user(request, f"{wf}: {line}", messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb} {done} workflow(s).", messages.SUCCESS)


@admin.action(description="Publish the draft as a new version", permissions=["change"])
def publish(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, lambda wf: workflow_publish(workflow=wf, actor=request.user), "Published")


@admin.action(description="Pause", permissions=["change"])
def pause(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, lambda wf: workflow_set_status(workflow=wf, action="pause", actor=request.user), "Paused")


@admin.action(description="Resume", permissions=["change"])
def resume(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, lambda wf: workflow_set_status(workflow=wf, action="resume", actor=request.user), "Resumed")


@admin.action(description="Archive (running enrollments exit)", permissions=["change"])
def archive(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, lambda wf: workflow_set_status(workflow=wf, action="archive", actor=request.user), "Archived")


@admin.action(description="Migrate running enrollments to the current version", permissions=["change"])
def migrate_enrollments(modeladmin, request, queryset):
    for wf in queryset:
        try:
            moved, kept = enrollments_migrate(workflow=wf, actor=request.user)
            modeladmin.message_user(request, f"{wf}: moved {moved}, kept {kept} on their version (step missing).")
        except ValidationError as exc:
            modeladmin.message_user(request, f"{wf}: {'; '.join(validation_messages(exc))}", messages.ERROR)


@admin.register(Workflow)
class WorkflowAdmin(ServiceSaveMixin, BaseAdmin):
    form = WorkflowForm
    list_display = ("name", "status", "trigger", "version_number", "has_draft_changes", "owner")
    list_filter = ("status", "trigger")
    search_fields = ("name",)
    list_select_related = ("current_version", "owner")
    readonly_fields = ("current_version", "has_draft_changes", "created_at")
    autocomplete_fields = ("campaign",)
    actions = [publish, pause, resume, archive, migrate_enrollments]
    change_form_template = "admin/nurture/workflow_change_form.html"
    change_list_template = "admin/nurture/workflow_change_list.html"

    @admin.display(description="Version")
    def version_number(self, obj):
        return obj.current_version.number if obj.current_version else "—"

    def save_model(self, request, obj, form, change):
        self.call_service(request, workflow_save, workflow=obj, actor=request.user)

    def get_urls(self):
        own = [
            path("gallery/", self.admin_site.admin_view(self.gallery_view), name="nurture_workflow_gallery"),
            path("<int:pk>/test/", self.admin_site.admin_view(self.test_view), name="nurture_workflow_test"),
            path("<int:pk>/enroll/", self.admin_site.admin_view(self.enroll_view), name="nurture_workflow_enroll"),
        ]
        return own + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = extra_context or {}
        wf = Workflow.objects.filter(pk=object_id).select_related("current_version").first()
        if wf is not None:
            metrics = workflow_metrics(workflow=wf)
            top = max([metrics["enrolled"]] + [s["executed"] for s in metrics["steps"]] + [1])
            for s in metrics["steps"]:
                s["width"] = round(100 * s["executed"] / top)
            extra["metrics"] = metrics
        return super().change_view(request, object_id, form_url, extra)

    def _ctx(self, request, title, **kw):
        return {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **kw}

    def gallery_view(self, request):
        if not self.has_add_permission(request):
            return denied(request, "You can look at workflows but not create them: the gallery needs the "
                          "“Can add workflow” permission.", reverse("admin:nurture_workflow_changelist"))
        if request.method == "POST" and request.POST.get("key") in GALLERY:
            wf = workflow_create_from_gallery(key=request.POST["key"], actor=request.user)
            self.message_user(request, f"Created the draft “{wf}”; adapt it, then publish.", messages.SUCCESS)
            return redirect(reverse("admin:nurture_workflow_change", args=[wf.pk]))
        return TemplateResponse(request, "admin/nurture/gallery.html", self._ctx(request, "Workflow gallery", gallery=GALLERY))

    def test_view(self, request, pk):
        wf = get_object_or_404(Workflow, pk=pk)
        if not self.has_view_permission(request, wf):
            return denied(request, "A test run needs the “Can view workflow” permission.", reverse("admin:index"))
        rows, error = None, ""
        lead_ref = request.POST.get("lead", "").strip()
        if request.method == "POST":
            lead = Lead.objects.filter(email__iexact=lead_ref).first() or (
                Lead.objects.filter(pk=lead_ref).first() if lead_ref.isdigit() else None)
            if lead is None:
                error = f"lead: no lead with email or id {lead_ref!r}."
            else:
                try:
                    rows = workflow_test_run(workflow=wf, lead=lead)
                except ValidationError as exc:
                    error = "; ".join(validation_messages(exc))
        return TemplateResponse(request, "admin/nurture/test_run.html",
                                self._ctx(request, f"Test run: {wf}", workflow=wf, rows=rows, error=error, lead_ref=lead_ref))

    def enroll_view(self, request, pk):
        wf = get_object_or_404(Workflow, pk=pk)
        if not self.has_change_permission(request, wf):
            return denied(request, f"You can look at “{wf}” but not enroll leads in it: enrolling needs the "
                          "“Can change workflow” permission.", reverse("admin:nurture_workflow_change", args=[wf.pk]))
        if request.method == "POST":
            refs = [r.strip() for r in request.POST.get("leads", "").replace(",", "\n").splitlines() if r.strip()]
            made, refused = 0, []
            for ref in refs:
                lead = Lead.objects.filter(email__iexact=ref).first() or (Lead.objects.filter(pk=ref).first() if ref.isdigit() else None)
                if lead is None:
                    refused.append(f"{ref}: no such lead")
                    continue
                enr, reason = enrollment_create(workflow=wf, lead=lead, source=f"admin:{request.user.get_username()}", check_criteria=False)
                if enr:
                    made += 1
                else:
                    refused.append(f"{ref}: {reason}")
            self.message_user(request, f"Enrolled {made} lead(s).", messages.SUCCESS if made else messages.WARNING)
            for line in refused[:50]:
                self.message_user(request, line, messages.WARNING)
            return redirect(reverse("admin:nurture_workflow_change", args=[wf.pk]))
        return TemplateResponse(request, "admin/nurture/enroll.html", self._ctx(request, f"Enroll leads in {wf}", workflow=wf))


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(BaseAdmin):
    list_display = ("workflow", "number", "published_at", "published_by")
    list_select_related = ("workflow", "published_by")
    readonly_fields = ("workflow", "number", "pretty_definition", "settings", "published_at", "published_by")
    exclude = ("definition",)

    @admin.display(description="Definition")
    def pretty_definition(self, obj):
        from django.utils.html import format_html

        return format_html("<pre>{}</pre>", json.dumps(obj.definition, indent=2))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # immutable once published
