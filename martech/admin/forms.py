"""Capture forms: the hosted page /f/<key>, the embed snippet, POST /api/v1/capture/<key>."""
from __future__ import annotations

import json
import threading

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from martech import fields as declared
from martech.admin.base import HistoryAdmin
from martech.admin.form_fields import FieldDefinitionsWidget
from martech.hosted import form_embed_snippet
from martech.models import Form


# The request being rendered, per thread (a ModelAdmin is shared by every request).
_current = threading.local()


class OriginsWidget(forms.Textarea):
    """allowed_origins as one origin per line (Form.clean normalizes and checks them)."""

    def format_value(self, value):
        try:
            origins = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            return value
        return "\n".join(origins) if isinstance(origins, list) else value

    def value_from_datadict(self, data, files, name):
        text = data.get(name)
        if text is None:
            return None
        return json.dumps([line.strip() for line in text.splitlines() if line.strip()])


class FormAdminForm(forms.ModelForm):
    redirect_url = forms.URLField(
        assume_scheme="https",
        max_length=2000,
        required=False,
        help_text=Form._meta.get_field("redirect_url").help_text,
    )

    class Meta:
        model = Form
        fields = "__all__"
        widgets = {
            "fields": FieldDefinitionsWidget(
                # What a public form may fill (martech.fields); custom properties as "properties.<name>".
                lead_fields=sorted(set(declared.names(declared.LEAD_FIELDS, writer=declared.FORM)) - {"properties"}
                                   | {"properties."})
            ),
            "allowed_origins": OriginsWidget(attrs={"rows": 3, "cols": 60, "placeholder": "https://www.example.com"}),
        }
        help_texts = {
            "fields": "",
            "allowed_origins": "Websites that may embed this form, one origin per line (scheme and host, e.g. "
            "https://www.example.com; a port only when it is not the default). A browser post from any other "
            "site is refused.",
        }


@admin.register(Form)
class FormAdmin(HistoryAdmin):
    form = FormAdminForm
    list_display = ("name", "key", "event_type", "consent_channel", "is_active", "hosted_link")
    list_select_related = ("event_type",)
    list_filter = ("is_active", "consent_channel")
    search_fields = ("name", "key")
    prepopulated_fields = {"key": ("name",)}
    autocomplete_fields = ("event_type",)
    readonly_fields = ("hosted_link", "capture_path", "embed_snippet", "created_at", "updated_at")
    fieldsets = [
        (None, {"fields": ["name", "key", "is_active", "event_type", "hosted_link", "capture_path"]}),
        ("Fields", {"fields": ["fields", "defaults", "honeypot_field", "submit_label"]}),
        ("Consent", {"fields": ["consent_field", "consent_channel", "consent_text", "double_opt_in"]}),
        ("After a submission", {"fields": ["thank_you_message", "redirect_url"]}),
        ("On your website", {"fields": ["allowed_origins", "embed_snippet"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    # The hosted link and the snippet's absolute URLs use the address the admin
    # was opened at. Set per view, not cleared: the TemplateResponse renders
    # after the view returns, and each request on this thread sets it first.
    def changeform_view(self, request, *args, **kwargs):
        _current.request = request
        return super().changeform_view(request, *args, **kwargs)

    def changelist_view(self, request, *args, **kwargs):
        _current.request = request
        return super().changelist_view(request, *args, **kwargs)

    @admin.display(description="Hosted page")
    def hosted_link(self, obj: Form) -> str:
        if not (obj and obj.pk and obj.key):
            return "—"
        url = self._absolute(reverse("form-page", args=[obj.key]))
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    @admin.display(description="Capture URL")
    def capture_path(self, obj: Form) -> str:
        return reverse("api-form-capture", args=[obj.key]) if obj and obj.pk and obj.key else "—"

    @admin.display(description="Embed snippet")
    def embed_snippet(self, obj: Form) -> str:
        if not (obj and obj.pk and obj.key):
            return "Save the form to get its snippet."
        snippet = form_embed_snippet(obj, base_url=self._absolute("/"))
        return format_html(
            '<textarea readonly rows="12" cols="100" class="vLargeTextField" id="embed-snippet" '
            'onclick="this.select()">{}</textarea>'
            '<p class="help">Paste into a page of a site listed above. It posts to the capture URL; the visitor '
            "lands on the thank-you page (or the redirect URL). Re-copy it after changing the fields or the consent "
            "wording.</p>",
            snippet,
        )

    def _absolute(self, path: str) -> str:
        request = getattr(_current, "request", None)
        return request.build_absolute_uri(path) if request is not None else path
