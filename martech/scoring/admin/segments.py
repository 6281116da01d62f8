"""Segments: saved conditions with live member counts, members and CSV export."""
from __future__ import annotations

import csv

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from martech.csvsafe import cell_escape
from martech.admin.base import BaseAdmin, ServiceSaveMixin
from martech.conditions import ConditionError, matching_leads
from martech.scoring import services
from martech.scoring.admin.widgets import ConditionWidget
from martech.scoring.models import Segment
from martech.scoring.selectors import segment_condition, segment_members

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




class SegmentFilter(admin.SimpleListFilter):
    """The lead list by segment: the segment's condition, run in the
    database as part of the list's query (martech.conditions)."""

    title = "segment"
    parameter_name = "segment"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Segment.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        segment = Segment.objects.filter(pk=int(value)).first() if value.isdigit() else None
        if segment is None:
            messages.error(request, f"Segment filter: there is no segment {value!r}.")
            raise IncorrectLookupParameters(value)
        try:
            return matching_leads(segment_condition(segment), queryset=queryset)
        except ConditionError as exc:
            messages.error(request, f"Segment {segment.name!r}: its condition is invalid: {exc.messages[0]}")
            raise IncorrectLookupParameters(value) from None


def _attach_to_lead_admin() -> None:
    """Scoring adds its segment filter to martech's lead list (the core
    never imports scoring)."""
    from martech.models import Lead

    lead_admin = admin.site._registry.get(Lead)
    if lead_admin is None:
        return
    filters = list(lead_admin.list_filter)
    if SegmentFilter not in filters:
        # Beside the stage, score and owner filters, before source and date.
        at = filters.index("original_source") if "original_source" in filters else len(filters)
        filters.insert(at, SegmentFilter)
        lead_admin.list_filter = filters


_attach_to_lead_admin()
