"""Scoring models with their fit and engagement rules."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.html import format_html

from martech.admin.base import BaseAdmin
from martech.conditions import ConditionError, matching_leads
from martech.scoring.admin.widgets import ConditionWidget
from martech.scoring.models import EngagementRule, FitRule, ScoringModel


class FitRuleForm(forms.ModelForm):
    class Meta:
        model = FitRule
        fields = ["name", "condition", "points", "is_active"]
        widgets = {"condition": ConditionWidget()}


class EngagementRuleForm(forms.ModelForm):
    class Meta:
        model = EngagementRule
        fields = ["name", "event_type", "condition", "points", "cap_points", "cap_period", "distinct_property",
                  "is_active"]
        widgets = {"condition": ConditionWidget(kind="event")}


class FitRuleInline(admin.TabularInline):
    model = FitRule
    form = FitRuleForm
    extra = 0
    fields = ["name", "condition", "points", "is_active", "matches", "updated_at"]
    readonly_fields = ["matches", "updated_at"]

    @admin.display(description="Matches now")
    def matches(self, obj: FitRule) -> str:
        if obj is None or not obj.pk:
            return "—"
        try:
            return f"{matching_leads(obj.condition).count()} leads"
        except ConditionError as exc:
            return exc.messages[0]


class EngagementRuleInline(admin.TabularInline):
    model = EngagementRule
    form = EngagementRuleForm
    extra = 0
    fields = [*EngagementRuleForm.Meta.fields, "updated_at"]
    readonly_fields = ["updated_at"]


@admin.register(ScoringModel)
class ScoringModelAdmin(BaseAdmin):
    list_display = ("name", "is_active", "half_life_days", "rule_counts", "updated_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    inlines = [FitRuleInline, EngagementRuleInline]

    @admin.display(description="Rules")
    def rule_counts(self, obj: ScoringModel) -> str:
        return format_html("{} fit, {} engagement", obj.fit_rules.count(), obj.engagement_rules.count())

    def get_urls(self):
        from django.urls import path

        from martech.scoring.admin.widgets import condition_preview

        return [path("preview/", self.admin_site.admin_view(condition_preview), name="scoring_condition_preview"),
                *super().get_urls()]
