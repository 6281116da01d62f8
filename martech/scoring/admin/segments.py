"""Segments: saved conditions with live member counts, members and CSV export."""
from __future__ import annotations

import csv

from django import forms
from django.contrib import admin
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from martech.csvsafe import cell_escape
from martech.admin.base import BaseAdmin, ServiceSaveMixin
from martech.conditions import ConditionError
from martech.scoring import services
from martech.scoring.admin.widgets import ConditionWidget
from martech.scoring.models import Segment
from martech.scoring.selectors import segment_members

EXPORT_COLUMNS = ["id", "email", "first_name", "last_name", "country", "lifecycle_stage", "fit_score",
                  "engagement_score", "total_score", "account", "created_at"]


class SegmentForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["name", "description", "condition"]
        widgets = {"condition": ConditionWidget()}


class _Echo:
    def write(self, value):
        return value


def segment_csv_rows(segment: Segment):
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for lead in segment_members(segment).order_by("pk").iterator(chunk_size=2000):
        yield writer.writerow([cell_escape(v) for v in (
            lead.pk, lead.email or "", lead.first_name, lead.last_name, lead.country,
            lead.lifecycle_stage.key if lead.lifecycle_stage else "", lead.fit_score,
            lead.engagement_score, lead.total_score, lead.account.name if lead.account else "",
            lead.created_at.isoformat(),
        )])


@admin.action(description="Export members as CSV", permissions=["view"])
def export_members(modeladmin, request, queryset):
    if queryset.count() != 1:
        modeladmin.message_user(request, "Export one segment at a time.", level="error")
        return None
    segment = queryset.get()
    response = StreamingHttpResponse(segment_csv_rows(segment), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="segment-{segment.pk}.csv"'
    return response


@admin.register(Segment)
class SegmentAdmin(ServiceSaveMixin, BaseAdmin):
    form = SegmentForm
    list_display = ("name", "condition", "member_count", "updated_at")
    search_fields = ("name",)
    actions = [export_members]
    readonly_fields = ["member_count", "members"]

    @admin.display(description="Members now")
    def member_count(self, obj: Segment) -> str:
        if obj is None or not obj.pk:
            return "—"
        try:
            return str(segment_members(obj).count())
        except ConditionError as exc:
            # A stored condition no longer valid (a field removed since): an
            # error, not a number-shaped note.
            return format_html('<span class="errornote segment-condition-error">Condition invalid: {}</span>',
                               exc.messages[0])

    @admin.display(description="First members")
    def members(self, obj: Segment) -> str:
        if obj is None or not obj.pk:
            return "—"
        try:
            leads = list(segment_members(obj).order_by("-total_score", "pk")[:20])
        except ConditionError:
            return "—"
        rows = format_html_join(
            "", '<li><a href="{}">{}</a> (score {})</li>',
            ((reverse("admin:martech_lead_change", args=[lead.pk]), str(lead), lead.total_score) for lead in leads),
        )
        return format_html("<ul>{}</ul>", rows) if rows else "none"

    def save_model(self, request, obj: Segment, form, change: bool) -> None:
        saved = self.call_service(request, services.segment_save, segment=obj if change else None,
                                  name=form.cleaned_data["name"], condition=form.cleaned_data["condition"],
                                  description=form.cleaned_data.get("description", ""))
        if saved is not None:
            obj.pk = saved.pk

    def response_add(self, request, obj, post_url_continue=None):
        return self._back_if_failed(request) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        return self._back_if_failed(request) or super().response_change(request, obj)


