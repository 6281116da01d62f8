from __future__ import annotations

import copy
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
from nurture.admin.builder import JourneyBuilderMixin, builder_context, warn_never_fires
from nurture.admin.step_forms import crm_field_choices, event_choices, form_choices, stage_choices
from nurture.builder import EMPTY_DEFINITION
from nurture.gallery import GALLERY, workflow_create_from_gallery
from nurture.models import Workflow, WorkflowVersion
from nurture.selectors import workflow_metrics
from nurture.services import (
    BLOCKING_FIELDS,
    enrollment_create,
    enrollments_migrate,
    workflow_publish,
    workflow_save,
    workflow_set_status,
    workflow_test_run,
    workflow_validate,
)


TRIGGER_FIELDS = ("trigger_event", "trigger_condition", "trigger_form", "trigger_segment", "enroll_existing",
                  "trigger_stage", "trigger_threshold", "trigger_crm_fields")


class WorkflowForm(forms.ModelForm):
    """The workflow's settings. The trigger's configuration (stored as
    ``trigger_config``) is picked per trigger: a catalogued event, a form, a
    segment, a stage; the steps are edited in the journey builder below the
    form, and the status by publish, pause, resume and archive."""

    trigger_event = forms.ChoiceField(required=False, label="Event", help_text="For an event trigger.")
    trigger_condition = forms.CharField(
        required=False, max_length=2000, label="Event condition",
        help_text='For an event trigger, optional: e.g. properties.cart_value >= 100 (the event\'s properties).')
    trigger_form = forms.ChoiceField(required=False, label="Form", help_text="For a form submission trigger.")
    trigger_segment = forms.ModelChoiceField(queryset=Segment.objects.all(), required=False, label="Segment",
                                             help_text="For an entering-a-segment trigger.")
    enroll_existing = forms.BooleanField(required=False, initial=True, label="Enroll the segment's current members",
                                         help_text="For a segment trigger: untick to enroll only leads who enter from now on.")
    trigger_stage = forms.ChoiceField(required=False, label="Lifecycle stage", help_text="For a stage change trigger.")
    trigger_threshold = forms.IntegerField(required=False, label="Score threshold",
                                           help_text="For a score trigger: enrolls when the total score crosses it upward.")
    trigger_crm_fields = forms.MultipleChoiceField(required=False, label="CRM fields",
                                                   widget=forms.CheckboxSelectMultiple,
                                                   help_text="For a CRM field change trigger.")
    goal_event = forms.ChoiceField(required=False, label="Goal event",
                                   help_text="The lead doing this event meets the goal.")
    suppress_stages = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                                help_text="Leads at these lifecycle stages are never enrolled.")
    # Stored as a list of segment ids (it is copied into each version's
    # settings); picked here by name.
    suppress_segments = forms.ModelMultipleChoiceField(
        queryset=Segment.objects.all(), required=False, widget=admin.widgets.FilteredSelectMultiple("segments", False),
        help_text="Members of these segments are never enrolled, and leave the journey at their next step.",
    )

    class Meta:
        model = Workflow
        exclude = ("definition", "trigger_config", "status")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wf = self.instance
        if wf.pk is None and not wf.definition:
            # A new journey is a lone End step; the builder adds before it.
            wf.definition = copy.deepcopy(EMPTY_DEFINITION)
        cfg = wf.trigger_config or {}
        if "trigger_event" not in self.fields:
            return  # a form without the pickers (a view-only page)
        self.fields["trigger_event"].choices = event_choices(cfg.get("event", "") if wf.trigger == "event" else "")
        self.fields["trigger_form"].choices = form_choices(cfg.get("form", "") if wf.trigger == "form" else "")
        self.fields["trigger_stage"].choices = stage_choices(cfg.get("stage", "") if wf.trigger == "stage" else "")
        self.fields["goal_event"].choices = event_choices(wf.goal_event)
        self.fields["trigger_crm_fields"].choices = crm_field_choices()
        stages = stage_choices(blank=None)
        for key in wf.suppress_stages or []:
            stages = [*stages, (key, f"{key} (no such active stage)")] if key not in dict(stages) else stages
        self.fields["suppress_stages"].choices = stages
        if not self.is_bound:
            by_trigger = {"event": {"trigger_event": cfg.get("event"), "trigger_condition": cfg.get("condition")},
                          "form": {"trigger_form": cfg.get("form")},
                          "segment": {"trigger_segment": cfg.get("segment"),
                                      "enroll_existing": cfg.get("enroll_existing", True)},
                          "stage": {"trigger_stage": cfg.get("stage")},
                          "score": {"trigger_threshold": cfg.get("threshold")},
                          "crm_field": {"trigger_crm_fields": cfg.get("fields")}}
            for name, value in by_trigger.get(wf.trigger, {}).items():
                if value is not None:
                    self.initial[name] = value

    def clean_suppress_segments(self):
        return sorted(s.pk for s in self.cleaned_data["suppress_segments"])

    def clean(self):
        data = super().clean()
        trigger = data.get("trigger")
        pick = {"event": "trigger_event", "form": "trigger_form", "segment": "trigger_segment",
                "stage": "trigger_stage", "score": "trigger_threshold", "crm_field": "trigger_crm_fields"}.get(trigger)
        if pick and data.get(pick) in (None, "", []):
            self.add_error(pick, f"Required for a “{Workflow.Trigger(trigger).label}” trigger.")
            return data
        if trigger == "event":
            cfg = {"event": data["trigger_event"]}
            if data.get("trigger_condition"):
                cfg["condition"] = data["trigger_condition"]
        elif trigger == "form":
            cfg = {"form": data["trigger_form"]}
        elif trigger == "segment":
            cfg = {"segment": data["trigger_segment"].pk, "enroll_existing": bool(data.get("enroll_existing"))}
        elif trigger == "stage":
            cfg = {"stage": data["trigger_stage"]}
        elif trigger == "score":
            cfg = {"threshold": data["trigger_threshold"]}
        elif trigger == "crm_field":
            cfg = {"fields": sorted(data["trigger_crm_fields"])}
        else:
            cfg = {}
        self.instance.trigger_config = cfg
        return data

    def _post_clean(self):
        super()._post_clean()  # the instance carries the form's values from here on
        if not self.errors:
            try:
                workflow_validate(workflow=self.instance)
            except ValidationError as exc:
                # trigger_config is shown as its pickers: its errors go on the form.
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
    def one(wf):
        workflow_publish(workflow=wf, actor=request.user)
        warn_never_fires(modeladmin, request, wf, skip=BLOCKING_FIELDS)

    _each(modeladmin, request, queryset, one, "Published")


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
class WorkflowAdmin(JourneyBuilderMixin, ServiceSaveMixin, BaseAdmin):
    form = WorkflowForm
    list_display = ("name", "status", "trigger", "version_number", "has_draft_changes", "owner")
    list_filter = ("status", "trigger")
    search_fields = ("name",)
    list_select_related = ("current_version", "owner")
    # The status changes by publish, pause, resume and archive only (the
    # buttons on the page and the list's actions), never by editing it.
    readonly_fields = ("status", "current_version", "has_draft_changes", "created_at", "definition_json")
    fieldsets = [
        (None, {"fields": ["name", "owner", "status", "current_version", "has_draft_changes"]}),
        ("Trigger", {"fields": ["trigger", "trigger_event", "trigger_condition", "trigger_form", "trigger_segment",
                                "enroll_existing", "trigger_stage", "trigger_threshold", "trigger_crm_fields"]}),
        ("Enrollment", {"fields": ["enrollment_condition", "reenroll", "reenroll_days", "suppress_stages",
                                   "suppress_segments", "suppress_unsubscribed"]}),
        ("Goal", {"fields": ["goal_event", "goal_condition"]}),
        ("Attribution", {"fields": ["campaign"]}),
        ("Messages in doubt", {"fields": ["in_doubt_policy", "in_doubt_minutes"]}),
        ("Definition (JSON, as the API gives it)", {"classes": ["collapse"], "fields": ["definition_json", "created_at"]}),
    ]
    autocomplete_fields = ("campaign",)
    actions = [publish, pause, resume, archive, migrate_enrollments]
    change_form_template = "admin/nurture/workflow_change_form.html"
    change_list_template = "admin/nurture/workflow_change_list.html"

    @admin.display(description="Version")
    def version_number(self, obj):
        return obj.current_version.number if obj.current_version else "—"

    @admin.display(description="Definition")
    def definition_json(self, obj):
        from django.utils.html import format_html

        return format_html("<pre>{}</pre>", json.dumps(obj.definition, indent=2))

    def get_fieldsets(self, request, obj=None):
        if obj is not None and not self.has_change_permission(request, obj):
            # A view-only page shows the stored values, not the pickers.
            return [(None, {"fields": ["name", "owner", "status", "current_version", "has_draft_changes", "trigger",
                                       "trigger_config", "enrollment_condition", "reenroll", "reenroll_days",
                                       "suppress_stages", "suppress_segments", "suppress_unsubscribed",
                                       "goal_event", "goal_condition", "campaign", "in_doubt_policy", "in_doubt_minutes"]}),
                    *self.fieldsets[-1:]]
        return self.fieldsets

    def save_model(self, request, obj, form, change):
        # Only what the form edits: the steps are the builder's, the status publish's.
        fields = [f.name for f in Workflow._meta.concrete_fields if f.name in form.fields] + ["trigger_config"]
        if self.call_service(request, workflow_save, workflow=obj, actor=request.user,
                             fields=fields if change else None) is not None:
            warn_never_fires(self, request, obj)

    def get_urls(self):
        own = self.builder_urls() + [
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
            extra.update(builder_context(request, wf, can_change=self.has_change_permission(request, wf)))
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
