"""Email templates: a plain textarea editor with a live preview rendered for
a chosen lead (shown in a sandboxed iframe) and "send a test to me".

The preview and the test send read the editor's unsaved fields: what the
person sees is what is rendered or sent. Both are small JSON views the
change page's script calls; they call the same renderer and the same email
connection as the engine."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from martech.admin.base import BaseAdmin, ServiceSaveMixin
from martech.models import Lead
from nurture import channels
from nurture.models import EmailTemplate, Message
from nurture.selectors import workflows_using_template
from nurture.services import email_template_save, email_template_send_test, email_template_validate

_MONO = {"style": "font-family:monospace;width:100%;max-width:60em"}


class EmailTemplateForm(forms.ModelForm):
    class Meta:
        model = EmailTemplate
        fields = ["name", "subject", "preheader", "html_body", "text_body"]
        widgets = {
            "subject": forms.TextInput(attrs={**_MONO, "size": 80}),
            "preheader": forms.TextInput(attrs={**_MONO, "size": 80}),
            "html_body": forms.Textarea(attrs={**_MONO, "rows": 18}),
            "text_body": forms.Textarea(attrs={**_MONO, "rows": 8}),
        }

    def _post_clean(self):
        # The service's check, its errors on the fields they name (as a
        # model's clean() would; the model imports no service).
        super()._post_clean()
        try:
            email_template_validate(template=self.instance)
        except ValidationError as exc:
            self._update_errors(exc)


def _content(post) -> dict[str, str]:
    """The editor's fields as ``channels.render_email`` takes them."""
    return {key: post.get(field, "") for key, field in EmailTemplate.CONTENT_FIELDS.items()}


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}


@admin.register(EmailTemplate)
class EmailTemplateAdmin(ServiceSaveMixin, BaseAdmin):
    form = EmailTemplateForm
    list_display = ("name", "subject", "updated_at", "updated_by")
    list_select_related = ("updated_by",)
    search_fields = ("name", "subject")
    readonly_fields = ("updated_at", "updated_by")
    change_form_template = "admin/nurture/emailtemplate_change_form.html"

    def save_model(self, request, obj, form, change):
        self.call_service(request, email_template_save, template=obj, actor=request.user)

    def get_deleted_objects(self, objs, request):
        # A template a workflow draft still names is shown as protected, and
        # Django's delete page and action refuse it (email_template_delete's rule).
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for template in objs:
            for wf in workflows_using_template(template_id=template.pk):
                protected.append(f"Workflow “{wf}” (its draft sends “{template}”)")
        return deleted, counts, perms_needed, protected

    def get_urls(self):
        own = [
            path("preview/", self.admin_site.admin_view(require_POST(self.preview_view)),
                 name="nurture_emailtemplate_preview"),
            path("send-test/", self.admin_site.admin_view(require_POST(self.send_test_view)),
                 name="nurture_emailtemplate_send_test"),
        ]
        return own + super().get_urls()

    def _lead_picker(self) -> forms.Form:
        # The admin's own lead search (LeadAdmin.search_fields) through an
        # existing foreign key to Lead; the picker is not a template field
        # (a form of its own, so saving the template ignores it).
        widget = AutocompleteSelect(Message._meta.get_field("lead"), self.admin_site,
                                    attrs={"data-placeholder": "Search leads by email or name", "style": "width:30em"})
        field = forms.ModelChoiceField(queryset=Lead.objects.none(), required=False, widget=widget)
        return type("PreviewLeadForm", (forms.Form,), {"preview_lead": field})()

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        picker = self._lead_picker()
        context.update({
            "media": context["media"] + picker.media + forms.Media(js=["nurture/template_preview.js"]),
            "preview_lead_picker": picker["preview_lead"],
            "preview_url": reverse("admin:nurture_emailtemplate_preview", current_app=self.admin_site.name),
            "send_test_url": reverse("admin:nurture_emailtemplate_send_test", current_app=self.admin_site.name),
            "can_send_test": self._may_send_test(request),
            "user_email": request.user.email,
        })
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _may_send_test(self, request: HttpRequest) -> bool:
        return self.has_add_permission(request) or self.has_change_permission(request)

    def _lead(self, request: HttpRequest) -> tuple[Lead | None, JsonResponse | None]:
        """The chosen lead (none: an empty one, every fallback shows), or
        the error to answer. A lead's data is shown only to who may view leads."""
        ref = request.POST.get("lead", "").strip()
        if not ref:
            return Lead(), None
        if not request.user.has_perm("martech.view_lead"):
            return None, JsonResponse({"errors": {"lead": ["Previewing for a lead needs the “Can view lead” "
                                                            "permission."]}}, status=403)
        lead = (Lead.objects.select_related("lifecycle_stage", "account", "owner").filter(pk=ref).first()
                if ref.isdigit() and len(ref) < 19 else None)
        if lead is None:
            return None, JsonResponse({"errors": {"lead": [f"No lead with id {ref[:40]!r}."]}}, status=400)
        return lead, None

    def preview_view(self, request: HttpRequest):
        """The editor's content rendered for a lead: subject, preheader, HTML
        and text as JSON, or the errors by field (status 400)."""
        if not self.has_view_permission(request):
            return JsonResponse({"errors": {"__all__": ["Previewing templates needs the “Can view email template” "
                                                        "permission."]}}, status=403)
        lead, refusal = self._lead(request)
        if refusal is not None:
            return refusal
        content = _content(request.POST)
        try:
            email_template_validate(template=EmailTemplate(**{f: content[k] for k, f in EmailTemplate.CONTENT_FIELDS.items()}))
        except ValidationError as exc:
            return JsonResponse({"errors": _errors(exc)}, status=400)
        return JsonResponse(channels.render_email(content, lead))

    def send_test_view(self, request: HttpRequest):
        """Send the editor's content, rendered for the chosen lead, to the
        logged-in user's own address (``email_template_send_test``)."""
        if not self._may_send_test(request):
            return JsonResponse({"errors": {"__all__": ["Sending a test needs the “Can add email template” or "
                                                        "“Can change email template” permission."]}}, status=403)
        lead, refusal = self._lead(request)
        if refusal is not None:
            return refusal
        try:
            address = email_template_send_test(content=_content(request.POST), lead=lead, user=request.user)
        except ValidationError as exc:
            return JsonResponse({"errors": _errors(exc)}, status=400)
        except Exception as exc:  # noqa: BLE001 - the backend's refusal, shown to the person who asked
            return JsonResponse({"errors": {"__all__": [f"The email backend refused the test: "
                                                        f"{type(exc).__name__}: {exc}"[:500]]}}, status=502)
        ref = request.POST.get("template", "")
        template = EmailTemplate.objects.filter(pk=ref).first() if ref.isdigit() and len(ref) < 19 else None
        if template is not None:
            self.log_change(request, template, f"Sent a test to {address}.")
        return JsonResponse({"sent_to": address, "message": f"Sent a test to {address}."})

