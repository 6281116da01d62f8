"""Rule sets: edit a draft's rules inline (condition validated on save, a
"matches N leads" count per rule), simulate, publish, copy, roll back.
Published versions are read-only here."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from martech.db import run_in_transaction
from martech.admin.base import BaseAdmin, ServiceSaveMixin, validation_messages
from martech.models import Lead
from martech.scoring.models import Segment
from routing import services
from routing.models import Rule, RuleSet
from routing.simulation import leads_for_simulation, moves_csv, rule_set_simulate


class RuleInline(admin.TabularInline):
    model = Rule
    extra = 1
    fields = ["order", "name", "territory", "condition", "action", "team", "rep", "is_active", "matches"]
    readonly_fields = ["matches"]
    # Plain selects: a rule set has a handful of teams and territories.
    ordering = ["order", "id"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "condition":
            kwargs["widget"] = forms.Textarea(attrs={"rows": 2, "cols": 40})
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="Matches")
    def matches(self, obj: Rule) -> str:
        # "matches N leads": the territory and condition compiled to SQL,
        # counted over all leads (the rule alone, before earlier rules).
        if obj is None or obj.pk is None:
            return "—"
        try:
            n = Lead.objects.filter(services.rule_lead_q(obj)).count()
        except ValidationError:
            return "invalid condition"
        return format_html('<span class="rule-matches">{} lead{}</span>', n, "" if n == 1 else "s")

    def _editable(self, obj) -> bool:
        return obj is None or obj.is_draft

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


class SimulateForm(forms.Form):
    segment = forms.ModelChoiceField(queryset=Segment.objects.all(), required=False,
                                     help_text="The segment's leads now; empty = the last N days.")
    days = forms.IntegerField(min_value=1, max_value=3650, initial=30, required=False,
                              help_text="Leads created in the last N days (when no segment is chosen).")

    def clean(self):
        data = super().clean()
        if not self.errors and data.get("segment") is None and not data.get("days"):
            raise ValidationError({"days": "Give a number of days or choose a segment."})
        return data

    def leads(self):
        return leads_for_simulation(days=self.cleaned_data.get("days"), segment=self.cleaned_data.get("segment"))


@admin.register(RuleSet)
class RuleSetAdmin(ServiceSaveMixin, BaseAdmin):
    list_display = ["__str__", "status", "version", "fallback_team", "rule_count", "published_at", "published_by", "live"]
    list_filter = ["status"]
    inlines = [RuleInline]
    fields = ["name", "fallback_team", "note", "status", "version", "copied_from", "published_at", "published_by"]
    readonly_fields = ["status", "version", "copied_from", "published_at", "published_by"]
    autocomplete_fields = ["fallback_team"]
    change_form_template = "admin/routing/ruleset/change_form.html"

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).select_related("fallback_team", "published_by").annotate(rule_count=Count("rules"))

    @admin.display(description="Rules")
    def rule_count(self, obj):
        return obj.rule_count

    @admin.display(description="Live", boolean=True)
    def live(self, obj):
        live = getattr(self, "_live_id", None)
        return obj.pk == live

    def changelist_view(self, request, extra_context=None):
        live = services.live_rule_set()
        self._live_id = live.pk if live else None
        return super().changelist_view(request, extra_context)

    def has_change_permission(self, request, obj=None):
        # Published versions are immutable: viewable, never changed.
        if obj is not None and not obj.is_draft:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and not obj.is_draft:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        if obj.pk and not RuleSet.objects.get(pk=obj.pk).is_draft:
            raise PermissionDenied
        super().save_model(request, obj, form, change)

    # --- tools: publish, simulate, copy, rollback -----------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/publish/", wrap(self.publish_view), name="routing_ruleset_publish"),
            path("<int:pk>/simulate/", wrap(self.simulate_view), name="routing_ruleset_simulate"),
            path("<int:pk>/copy/", wrap(self.copy_view), name="routing_ruleset_copy"),
            path("<int:pk>/rollback/", wrap(self.rollback_view), name="routing_ruleset_rollback"),
            *super().get_urls(),
        ]

    def _tool(self, request, pk, *, perm: str, title: str, verb: str, run, template="admin/routing/ruleset/confirm.html"):
        rule_set = get_object_or_404(RuleSet, pk=pk)
        if not request.user.has_perm(f"routing.{perm}_ruleset"):
            raise PermissionDenied
        if request.method == "POST":
            try:
                # A transaction boundary: run again if a concurrent one aborts it.
                result, message = run_in_transaction(lambda: run(rule_set))
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, line, messages.ERROR)
                return HttpResponseRedirect(reverse("admin:routing_ruleset_change", args=[rule_set.pk]))
            self.log_change(request, result, message)
            self.message_user(request, message, messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:routing_ruleset_change", args=[result.pk]))
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": title, "verb": verb,
            "rule_set": rule_set, "live": services.live_rule_set(),
        })

    def publish_view(self, request, pk):
        def run(rs):
            published = services.rule_set_publish(rule_set=rs, actor=request.user)
            return published, f"Published {published}; it is live now."
        return self._tool(request, pk, perm="change", title="Publish this draft", verb="publish", run=run)

    def copy_view(self, request, pk):
        def run(rs):
            draft = services.rule_set_copy(source=rs, actor=request.user)
            return draft, f"Created {draft} from {rs}."
        return self._tool(request, pk, perm="add", title="Copy to a new draft", verb="copy", run=run)

    def rollback_view(self, request, pk):
        def run(rs):
            published = services.rule_set_rollback(to=rs, actor=request.user)
            return published, f"Rolled back: {published} (a copy of v{rs.version}) is live now."
        return self._tool(request, pk, perm="change", title="Roll back to this version", verb="roll back", run=run)

    def simulate_view(self, request, pk):
        """Reads only (see routing.simulation); viewing is enough to run it."""
        rule_set = get_object_or_404(RuleSet, pk=pk)
        if not self.has_view_permission(request, rule_set):
            raise PermissionDenied
        form = SimulateForm(request.GET or None)
        result = None
        if form.is_valid():
            result = rule_set_simulate(rule_set=rule_set, leads=form.leads())
            if request.GET.get("format") == "csv":
                response = HttpResponse(moves_csv(result), content_type="text/csv; charset=utf-8")
                response["Content-Disposition"] = f'attachment; filename="routing-simulation-{rule_set.pk}-moves.csv"'
                return response
        rows = []
        if result:
            teams = sorted(set(result["draft"]["by_team"]) | set((result["published"] or {}).get("by_team", {})))
            pub = (result["published"] or {}).get("by_team", {})
            rows = [(t, result["draft"]["by_team"].get(t, 0), pub.get(t, 0), result["draft"]["by_team"].get(t, 0) - pub.get(t, 0))
                    for t in teams]
        return TemplateResponse(request, "admin/routing/ruleset/simulate.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": f"Simulate {rule_set}",
            "rule_set": rule_set, "form": form, "result": result, "team_rows": rows,
            "moves": (result or {}).get("moves", [])[:MOVES_SHOWN], "csv_query": _csv_query(request),
        })


MOVES_SHOWN = 500  # on the page; the CSV has every one


def _csv_query(request) -> str:
    query = request.GET.copy()
    query["format"] = "csv"
    return query.urlencode()
