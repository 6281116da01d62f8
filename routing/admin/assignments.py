"""Assignments (read-only, kept without a time limit) and their place on the
lead page: routing adds an inline and a "Route" action to martech's lead
admin, so the core never imports routing."""
from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Exists, OuterRef, Q
from django.forms.models import BaseInlineFormSet
from django.core.exceptions import ValidationError
from django.template.loader import render_to_string
from django.utils.html import format_html

from martech.admin.base import BigTableAdmin, ReadOnlyMixin, validation_messages
from martech.models import Lead
from routing import labels, services
from routing.models import Assignment, Escalation, Rep


def explanation_html(obj: Assignment) -> str:
    return render_to_string("admin/routing/explanation.html", {"a": obj, "e": obj.explanation or {}})


class EscalationInline(ReadOnlyMixin, admin.TabularInline):
    model = Escalation
    extra = 0
    fields = readonly_fields = ["level", "created_at", "what_happened"]

    @admin.display(description="What happened")
    def what_happened(self, obj: Escalation) -> str:
        return labels.escalation_detail(obj.detail)


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ["lead", "status", "rep", "team", "rule_set_version", "rule_name", "method_name", "trigger", "created_at",
                    "sla_due_at", "first_touch_at", "is_current"]
    list_filter = ["status", "is_current", "trigger", "team"]
    list_select_related = ["lead", "rep", "team"]
    search_fields = ["lead__email", "rep__name"]
    date_hierarchy = None
    inlines = [EscalationInline]
    fields = ["lead", "status", "is_current", "rep", "team", "rule_set", "rule_set_version", "rule_name", "method_name", "trigger",
              "reason", "actor", "created_at", "assigned_at", "ended_at", "end_reason", "sla_policy", "sla_due_at",
              "first_touch_at", "first_touch_source", "escalation_level", "why", "raw_explanation"]
    readonly_fields = fields

    change_list_template = "admin/routing/assignment/change_list.html"

    def get_urls(self):
        from django.urls import path

        return [path("sla-report/", self.admin_site.admin_view(self.sla_report_view), name="routing_sla_report"),
                *super().get_urls()]

    def sla_report_view(self, request):
        """SLA per team and rep over the last N days (view permission)."""
        from datetime import timedelta

        from django.core.exceptions import PermissionDenied
        from django.template.response import TemplateResponse
        from django.utils import timezone

        from routing.selectors import sla_report

        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            days = max(1, min(int(request.GET.get("days", 30)), 3650))
        except ValueError:
            days = 30
        now = timezone.now()
        report = sla_report(since=now - timedelta(days=days), until=now, now=now)
        return TemplateResponse(request, "admin/routing/assignment/sla_report.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": f"SLA report, last {days} days",
            "report": report, "days": days,
        })

    @admin.display(description="Why")
    def why(self, obj: Assignment) -> str:
        return explanation_html(obj)

    @admin.display(description="Method", ordering="method")
    def method_name(self, obj: Assignment) -> str:
        return labels.method_label(obj.method)

    @admin.display(description="Explanation (JSON)")
    def raw_explanation(self, obj: Assignment) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.explanation, indent=2))


class _DisplayOnlyFormSet(BaseInlineFormSet):
    """The routing inline only displays; it takes no input. Without this a
    lead form posted without the inline's management form (a script, another
    app's test, an old browser tab) would fail on an inline it never edits."""

    def full_clean(self):
        self._errors, self._non_form_errors = [], self.error_class()

    def is_valid(self):
        return True

    def has_changed(self):
        return False

    def save(self, commit=True):
        self.new_objects, self.changed_objects, self.deleted_objects = [], [], []
        return []


class AssignmentInline(ReadOnlyMixin, admin.StackedInline):
    """On the lead page: every routing decision, newest first, with why."""

    model = Assignment
    formset = _DisplayOnlyFormSet

    extra = 0
    verbose_name_plural = "Routing (assignments, newest first)"
    fields = readonly_fields = ["summary", "why"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("rep", "team")

    @admin.display(description="Decision")
    def summary(self, obj: Assignment) -> str:
        return format_html("{} · {} · {} · {} (v{}, {}){}", obj.created_at.strftime("%Y-%m-%d %H:%M"), obj.get_status_display(),
                           obj.rep or obj.team or "—", obj.rule_name or "fallback", obj.rule_set_version, obj.get_trigger_display(),
                           " · current" if obj.is_current else "")

    @admin.display(description="Why")
    def why(self, obj: Assignment) -> str:
        return explanation_html(obj)


MAX_ROUTE_ACTION = 1000


@admin.action(description="Route (or reroute) with the live rules", permissions=["route"])
def route_leads(modeladmin, request, queryset):
    done = 0
    ids = list(queryset.order_by("pk").values_list("id", flat=True)[:MAX_ROUTE_ACTION + 1])
    if len(ids) > MAX_ROUTE_ACTION:
        # Each lead is its own routed transaction: refuse a huge selection
        # outright rather than route part of it.
        modeladmin.message_user(request, f"Select at most {MAX_ROUTE_ACTION} leads to route at once; nothing was routed.",
                                messages.ERROR)
        return
    for lead_id in ids:
        try:
            services.lead_route(lead_id=lead_id, trigger=Assignment.Trigger.ADMIN, reason="admin action",
                                actor=request.user, reroute=True)
            done += 1
        except ValidationError as exc:
            for line in validation_messages(exc):
                modeladmin.message_user(request, f"Lead {lead_id}: {line}", messages.ERROR)
    modeladmin.message_user(request, f"{done} lead(s) routed.", messages.SUCCESS)


class OwnerRepFilter(admin.SimpleListFilter):
    """The lead list by owner or rep: a rep's leads are those whose current
    assignment is theirs, and those their user owns (an owner set by hand or
    pulled from the CRM), so a rep without a user account is found too."""

    title = "owner / rep"
    parameter_name = "rep"
    NONE = "none"

    def lookups(self, request, model_admin):
        reps = Rep.objects.order_by("name", "pk").values_list("pk", "name", "is_active")
        return [(self.NONE, "No owner or rep"),
                *[(str(pk), name if active else f"{name} (inactive)") for pk, name, active in reps]]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        current = Assignment.objects.filter(lead=OuterRef("pk"), is_current=True, status=Assignment.Status.ASSIGNED)
        if value == self.NONE:
            return queryset.filter(owner__isnull=True).exclude(Exists(current))
        rep = Rep.objects.filter(pk=int(value)).values("pk", "user_id").first() if value.isdigit() else None
        if rep is None:
            messages.error(request, f"Owner / rep filter: there is no rep {value!r}.")
            raise IncorrectLookupParameters(value)
        mine = Q(Exists(current.filter(rep_id=rep["pk"])))
        if rep["user_id"]:
            mine |= Q(owner_id=rep["user_id"])
        return queryset.filter(mine)


def _attach_to_lead_admin() -> None:
    lead_admin = admin.site._registry.get(Lead)
    if lead_admin is None:
        return
    if AssignmentInline not in lead_admin.inlines:
        lead_admin.inlines = [*lead_admin.inlines, AssignmentInline]
    filters = list(lead_admin.list_filter)
    if OwnerRepFilter not in filters:
        # After the stage and score filters.
        filters.insert(min(2, len(filters)), OwnerRepFilter)
        lead_admin.list_filter = filters
    actions = list(lead_admin.actions or [])
    if route_leads not in actions:
        lead_admin.actions = [*actions, route_leads]
    lead_admin.has_route_permission = lambda request: request.user.has_perm("routing.add_assignment")


_attach_to_lead_admin()
