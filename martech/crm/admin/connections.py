"""Connections and the integration health page.

Nothing secret is on this model (credentials live in the environment), so
nothing secret can be shown here."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from martech.admin.base import ConflictRetryAdminMixin
from martech.crm import objects
from martech.crm.models import Connection
from martech.crm.schema import connection_check
from martech.crm.selectors import connection_health
from martech.crm.services import payload_preview


class PreviewForm(forms.Form):
    object = forms.ChoiceField(choices=objects.choices, initial="contact",
                               help_text="Lead, account, opportunity or task")
    record = forms.CharField(help_text="Its id, or its key (a lead's email, an account's domain)")


@admin.register(Connection)
class ConnectionAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    list_display = ("name", "provider", "is_active", "conflict_rule", "health_link", "pause", "stopped_reason")
    readonly_fields = ("pause_reason", "api_calls_day", "api_calls_used", "crm_calls_used", "crm_calls_limit",
                       "crm_calls_at", "last_error", "last_error_at")
    # paused_until is editable: clearing it lifts a pause (the next call that
    # meets the limit pauses the connection again).
    fields = ("provider", "name", "is_active", "conflict_rule", "daily_api_limit", "stopped_reason",
              "paused_until", *readonly_fields)

    @admin.display(description="Paused")
    def pause(self, obj: Connection) -> str:
        if obj.paused_until is None or obj.paused_until <= timezone.now():
            return "no"
        return format_html("until {} ({})", timezone.localtime(obj.paused_until).strftime("%Y-%m-%d %H:%M:%S %Z"),
                           obj.pause_reason[:200])

    @admin.display(description="Health")
    def health_link(self, obj: Connection) -> str:
        return format_html('<a href="{}">health</a> · <a href="{}">payload preview</a> · <a href="{}">check</a>',
                           reverse("admin:crm_connection_health", args=[obj.pk]),
                           reverse("admin:crm_connection_preview", args=[obj.pk]),
                           reverse("admin:crm_connection_check", args=[obj.pk]))

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/health/", view(self.health_view), name="crm_connection_health"),
            path("<int:pk>/preview/", view(self.preview_view), name="crm_connection_preview"),
            path("<int:pk>/check/", view(self.check_view), name="crm_connection_check"),
            *super().get_urls(),
        ]

    def _context(self, request, connection, title):
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "title": title,
                "connection": connection}

    def health_view(self, request, pk: int):
        connection = self.get_object(request, str(pk))
        if connection is None or not self.has_view_permission(request, connection):
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, str(pk))
        return TemplateResponse(request, "admin/crm/connection/health.html",
                                {**self._context(request, connection, f"Health: {connection}"),
                                 "health": connection_health(connection=connection)})

    def check_view(self, request, pk: int):
        """*Check connection*: what the portal or org lacks or refuses
        (schema.connection_check). A POST, since it calls the CRM and stores
        the definitions it read; change permission on the connection."""
        connection = self.get_object(request, str(pk))
        if connection is None or not self.has_change_permission(request, connection):
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, str(pk))
        report = connection_check(connection=connection) if request.method == "POST" else None
        return TemplateResponse(request, "admin/crm/connection/check.html",
                                {**self._context(request, connection, f"Check connection: {connection}"),
                                 "report": report})

    def preview_view(self, request, pk: int):
        """The exact payload the outbox would send for one record of any object type."""
        connection = self.get_object(request, str(pk))
        if connection is None or not self.has_view_permission(request, connection):
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, str(pk))
        form = PreviewForm(request.GET or None)
        payload = None
        if form.is_valid():
            obj = objects.get(form.cleaned_data["object"])
            key = form.cleaned_data["record"].strip()
            records = obj.model_class.objects.select_related(*obj.select_related)
            if key.isdigit():
                instance = records.filter(pk=int(key)).first()
            elif obj.key_field:
                instance = records.filter(**{f"{obj.key_field}__iexact": key}).first()
            else:
                instance = None
            if instance is None:
                how = f"id or {obj.key_field}" if obj.key_field else "id"
                form.add_error("record", f"No {obj.label} with this {how}.")
            else:
                payload = payload_preview(connection=connection, obj=obj.key, instance=instance)
        return TemplateResponse(request, "admin/crm/connection/preview.html",
                                {**self._context(request, connection, f"Payload preview: {connection}"),
                                 "form": form, "payload": payload})
