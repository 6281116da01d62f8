"""Lifecycle rules."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from martech.admin.base import BaseAdmin
from martech.scoring.admin.widgets import ConditionWidget
from martech.scoring.models import LifecycleRule


class LifecycleRuleForm(forms.ModelForm):
    class Meta:
        model = LifecycleRule
        fields = ["name", "order", "condition", "event_type", "to_stage", "allow_backward", "is_active"]
        widgets = {"condition": ConditionWidget()}


@admin.register(LifecycleRule)
class LifecycleRuleAdmin(BaseAdmin):
    form = LifecycleRuleForm
    list_display = ("order", "name", "condition", "event_type", "to_stage", "allow_backward", "is_active")
    list_display_links = ("name",)
    list_filter = ("is_active", "to_stage")
    list_select_related = ("event_type", "to_stage")
    ordering = ("order", "id")
