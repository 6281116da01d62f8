"""Websites that carry the tracker: key, allowed origins, the snippet to copy."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from martech.admin.actions import rotate_website_key
from martech.admin.base import HistoryAdmin
from martech.models import EventType, Website
from martech.services.tracker import ENDPOINT_PATH, tracker_snippet

# Always allowed from the tracker; not offered as track() events.
_BUILT_IN = ("page_view", "identify")


def _track_event_choices():
    names = EventType.objects.filter(is_active=True).exclude(name__in=_BUILT_IN).values_list("name", flat=True)
    return [(n, n) for n in names]


class WebsiteForm(forms.ModelForm):
    allowed_origins = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="One origin per line, e.g. https://www.example.com (scheme and host, a port only if not the "
                  "default). Pages on any other origin are refused.",
    )
    track_events = forms.MultipleChoiceField(
        choices=_track_event_choices, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Event types pages may send with track(). Page views and identify calls are always allowed.",
    )

    class Meta:
        model = Website
        fields = ("name", "allowed_origins", "track_events", "respect_privacy_signals", "is_active")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance and isinstance(self.instance.allowed_origins, list):
            self.initial["allowed_origins"] = "\n".join(self.instance.allowed_origins)

    def clean_allowed_origins(self) -> list[str]:
        # Normalized and checked by Website.clean (martech.cors.origins_clean).
        return [line.strip() for line in self.cleaned_data["allowed_origins"].splitlines() if line.strip()]


@admin.register(Website)
class WebsiteAdmin(HistoryAdmin):
    form = WebsiteForm
    change_form_template = "admin/martech/website/change_form.html"
    list_display = ("name", "origin_list", "respect_privacy_signals", "is_active", "updated_at")
    list_filter = ("is_active", "respect_privacy_signals")
    search_fields = ("name",)
    readonly_fields = ("key", "endpoint", "created_at", "updated_at")
    actions = [rotate_website_key]
    fieldsets = [
        (None, {"fields": ["name", "is_active", "key", "endpoint"]}),
        ("What pages may send", {"fields": ["allowed_origins", "track_events", "respect_privacy_signals"]}),
        ("Record", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    @admin.display(description="Origins")
    def origin_list(self, obj: Website) -> str:
        return ", ".join(obj.allowed_origins or []) or "—"

    @admin.display(description="Endpoint")
    def endpoint(self, obj: Website) -> str:
        return ENDPOINT_PATH

    def change_view(self, request, object_id, form_url="", extra_context=None):
        website = self.get_object(request, object_id)
        if website is not None:
            # The snippet names this site by the address the admin is reached
            # at (behind the proxy: its public host and scheme).
            extra_context = {**(extra_context or {}),
                             "tracker_snippet": tracker_snippet(website=website, base_url=request.build_absolute_uri("/"))}
        return super().change_view(request, object_id, form_url, extra_context)
