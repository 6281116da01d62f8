"""Hosted forms: the page /f/<form_key> and its thank-you page, rendered from
the form's field definitions, and the embed snippet the admin shows.

The hosted page lives on our origin, so it posts to itself with Django's
CSRF protection; embedded copies on other sites post to the CSRF-free
capture endpoint (``martech.api.capture.FormCaptureView``), guarded by the
form's allowed origins, the honeypot and the per-IP throttle. Both call
``martech.services.forms.form_submit``.
"""
from __future__ import annotations

import uuid
from typing import Any, Mapping

from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_safe

from martech.api.throttling import FormCaptureThrottle
from martech.models import Form, FormFieldType
from martech.services.campaigns import UTM_FIELDS
from martech.services.forms import CONSENT_VERSION_FIELD, SUBMISSION_ID_FIELD, form_submit

UTM_PARAMS = tuple(f"utm_{f}" for f in UTM_FIELDS)


def active_form(form_key: str) -> Form:
    form = Form.objects.filter(key=form_key, is_active=True).select_related("event_type").first()
    if form is None:
        raise Http404("No such form.")
    return form


def form_context(
    form: Form,
    *,
    action: str,
    data: Mapping[str, Any] | None = None,
    errors: Mapping[str, list[str]] | None = None,
    csrf: bool = True,
    submission_id: str = "",
    extra_hidden: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What ``martech/forms/_form.html`` renders: each field with its value
    and errors (a failed submit keeps what was typed), the consent box, the
    honeypot and the hidden capture fields."""
    data = data or {}
    errors = errors or {}
    fields = []
    for definition in form.fields:
        name = definition["name"]
        value = data.get(name)
        if value is None and definition["type"] == FormFieldType.HIDDEN:
            value = definition.get("initial", "")
        fields.append({
            **definition,
            "id": f"mt-{form.key}-{name}",
            "value": "" if value is None else str(value),
            "checked": definition["type"] == FormFieldType.CHECKBOX and _ticked(value),
            "errors": errors.get(name, []),
        })
    known = {f["name"] for f in form.fields} | {form.consent_field}
    hidden = {SUBMISSION_ID_FIELD: submission_id, "page_url": "", **(extra_hidden or {})}
    if form.consent_field:
        hidden[CONSENT_VERSION_FIELD] = form.consent_version
    return {
        "form": form,
        "action": action,
        "fields": fields,
        "consent": {
            "name": form.consent_field,
            "id": f"mt-{form.key}-{form.consent_field}",
            "checked": _ticked(data.get(form.consent_field)),
            "errors": errors.get(form.consent_field, []),
        } if form.consent_field else None,
        "hidden": hidden,
        # Errors not about one of the rendered fields (e.g. a default value the form sets).
        "other_errors": [f"{k}: {m}" if k != "non_field_errors" else m
                         for k, messages in errors.items() if k not in known for m in messages],
        "csrf": csrf,
    }


def _ticked(value: Any) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "on", "yes", "y", "checked", "granted"}


def form_page_response(
    request: HttpRequest,
    form: Form,
    *,
    data: Mapping[str, Any] | None = None,
    errors: Mapping[str, list[str]] | None = None,
    status: int = 200,
    message: str = "",
) -> HttpResponse:
    """The hosted page (also what a failed plain-HTML post from an embedded
    copy is answered with: the visitor fixes it here, on our origin)."""
    extra = {p: str(data[p]) for p in UTM_PARAMS if data and data.get(p)}
    context = form_context(
        form,
        action=reverse("form-page", args=[form.key]),
        data=data,
        errors=errors,
        submission_id=str((data or {}).get(SUBMISSION_ID_FIELD) or uuid.uuid4()),
        extra_hidden=extra,
    )
    context["message"] = message
    return render(request, "martech/forms/page.html", context, status=status)


def form_done(form: Form) -> HttpResponseRedirect:
    """After an accepted submission: the form's redirect URL, else its thank-you page.
    303, so a reload does not post again."""
    url = form.redirect_url or reverse("form-thanks", args=[form.key])
    return HttpResponseRedirect(url, status=303)


@require_http_methods(["GET", "HEAD", "POST"])
def form_page(request: HttpRequest, form_key: str) -> HttpResponse:
    form = active_form(form_key)
    if request.method != "POST":
        # Campaign links land here with UTM parameters; they ride along as hidden fields.
        return form_page_response(request, form, data={p: request.GET[p] for p in UTM_PARAMS if request.GET.get(p)})
    throttle = FormCaptureThrottle()
    data = request.POST.dict()  # the last value of a repeated field, like Django forms
    if not throttle.allow_request(request, None):
        return form_page_response(
            request, form, data=data, status=429, message="Too many submissions from your address; try again in a minute."
        )
    try:
        form_submit(
            form=form,
            data=data,
            ip=throttle.get_ident(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
            page_url=request.build_absolute_uri(),
        )
    except ValidationError as exc:
        return form_page_response(request, form, data=data, errors=exc.message_dict, status=400)
    return form_done(form)


@require_safe
def form_thanks(request: HttpRequest, form_key: str) -> HttpResponse:
    form = active_form(form_key)
    return render(request, "martech/forms/thanks.html", {"form": form})


def form_embed_snippet(form: Form, *, base_url: str) -> str:
    """HTML to paste into a page of an allowed site: a plain form posting to
    the capture endpoint (works without JavaScript: the browser is sent to
    the thank-you page or the redirect URL), our stylesheet, and a small
    script that fills the page address and a submission id."""
    base = base_url.rstrip("/")
    context = form_context(form, action=base + reverse("api-form-capture", args=[form.key]), csrf=False)
    context.update({"css": base + static("martech/forms/form.css"), "script": base + static("martech/forms/embed.js")})
    markup = render_to_string("martech/forms/embed.html", context)
    return "\n".join(line.rstrip() for line in markup.splitlines() if line.strip())
