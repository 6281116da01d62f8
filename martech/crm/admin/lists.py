"""Segment mirrors: ops staff mirror a segment to a HubSpot list or a
Salesforce campaign, pause and resume it, and see how it stands."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from martech.admin.base import BaseAdmin, ServiceSaveMixin
from martech.conditions import ConditionError
from martech.crm.lists import mirror_pending, mirror_save, mirror_set_active
from martech.crm.models import ListMirror, OutboxItem


class ListMirrorForm(forms.ModelForm):
    class Meta:
        model = ListMirror
        fields = ("segment", "connection", "name", "remote_id", "is_active")


@admin.action(description="Pause (send nothing until resumed)", permissions=["change"])
def pause(modeladmin, request, queryset):
    n = mirror_set_active(mirrors=list(queryset), active=False)
    modeladmin.message_user(request, f"{n} mirror(s) paused.", messages.SUCCESS)


@admin.action(description="Resume (send what changed since the last sync)", permissions=["change"])
def resume(modeladmin, request, queryset):
    n = mirror_set_active(mirrors=list(queryset), active=True)
    modeladmin.message_user(request, f"{n} mirror(s) resumed and queued.", messages.SUCCESS)


@admin.register(ListMirror)
class ListMirrorAdmin(ServiceSaveMixin, BaseAdmin):
    form = ListMirrorForm
    list_display = ("segment", "connection", "list_name", "remote_id", "is_active", "member_count",
                    "last_synced_at", "status")
    list_filter = ("connection", "is_active")
    list_select_related = ("segment", "connection")
    search_fields = ("name", "segment__name", "remote_id")
    readonly_fields = ("member_count", "last_synced_at", "last_error", "pending")
    actions = [pause, resume]

    @admin.display(description="List / campaign name")
    def list_name(self, obj: ListMirror) -> str:
        return obj.remote_name

    @admin.display(description="Status")
    def status(self, obj: ListMirror) -> str:
        if not obj.is_active:
            return "paused"
        if obj.last_error:
            return format_html('<span title="{}">problem: {}</span>', obj.last_error, obj.last_error[:80])
        queued = OutboxItem.objects.filter(connection_id=obj.connection_id, object="list", local_id=obj.pk,
                                           status=OutboxItem.Status.PENDING).exists()
        if queued:
            return "queued"
        return "in sync" if obj.last_synced_at else "not synced yet"

    @admin.display(description="Changes not sent yet")
    def pending(self, obj: ListMirror) -> str:
        if obj is None or not obj.pk:
            return "—"
        try:
            adds, removes = mirror_pending(mirror=obj)
        except ConditionError as exc:
            return exc.messages[0]
        return f"{adds} to add, {removes} to remove"

    def save_model(self, request, obj: ListMirror, form, change: bool) -> None:
        data = form.cleaned_data
        saved = self.call_service(request, mirror_save, mirror=obj if change else None, segment=data["segment"],
                                  connection=data["connection"], name=data.get("name") or "",
                                  remote_id=data.get("remote_id") or "", is_active=data.get("is_active", True))
        if saved is not None:
            obj.pk = saved.pk
