"""Connections and the integration health page.

Nothing secret is on this model (credentials live in the environment), so
nothing secret can be shown here."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from martech.crm.models import Connection
from martech.crm.selectors import connection_health
from martech.crm.services import lead_payload_preview
from martech.models import Lead


class PreviewForm(forms.Form):
    lead = forms.CharField(help_text="Lead id or email")


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    list_display = ("name", "provider", "is_active", "conflict_rule", "health_link", "stopped_reason")
    readonly_fields = ("api_calls_day", "api_calls_used", "last_error", "last_error_at")
    fields = ("provider", "name", "is_active", "conflict_rule", "daily_api_limit", "stopped_reason",
              *readonly_fields)

    @admin.display(description="Health")
    def health_link(self, obj: Connection) -> str:
        return format_html('<a href="{}">health</a> · <a href="{}">payload preview</a>',
                           reverse("admin:crm_connection_health", args=[obj.pk]),
                           reverse("admin:crm_connection_preview", args=[obj.pk]))

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/health/", view(self.health_view), name="crm_connection_health"),
            path("<int:pk>/preview/", view(self.preview_view), name="crm_connection_preview"),
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

    def preview_view(self, request, pk: int):
        """The exact payload the outbox would send for one lead."""
        connection = self.get_object(request, str(pk))
        if connection is None or not self.has_view_permission(request, connection):
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, str(pk))
        form = PreviewForm(request.GET or None)
        payload = None
        if form.is_valid():
            key = form.cleaned_data["lead"].strip()
            lead = (Lead.objects.filter(pk=int(key)) if key.isdigit() else Lead.objects.filter(email=key.lower())
                    ).select_related("owner", "lifecycle_stage").first()
            if lead is None:
                form.add_error("lead", "No lead with this id or email.")
            else:
                payload = lead_payload_preview(connection=connection, lead=lead)
        return TemplateResponse(request, "admin/crm/connection/preview.html",
                                {**self._context(request, connection, f"Payload preview: {connection}"),
                                 "form": form, "payload": payload})
