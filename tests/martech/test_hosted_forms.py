"""Hosted forms: the page /f/<key>, the embed snippet, the field definitions
and the capture endpoint's answers to browsers on other sites (CORS, origin
refusal, plain HTML posts)."""
from __future__ import annotations

import html
import re

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from martech.models import ConsentRecord, Event, Form, Lead
from tests.factories import FormFactory, LeadFactory, form_field

pytestmark = pytest.mark.django_db

SITE = "https://www.acme.example"
CONSENT = "I agree to receive marketing email from Acme."


@pytest.fixture(autouse=True)
def _local_cache(settings):
    # The throttle counts in the cache; keep every test's counters its own.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "hosted"}}
    cache.clear()


@pytest.fixture
def form() -> Form:
    return FormFactory(
        key="demo",
        name="Request a demo",
        fields=[
            form_field("work_email", "email", label="Work email", required=True,
                       error_message="Please give your work email."),
            form_field("first_name", "first_name", label="First name", required=True, help_text="As on your badge."),
            form_field("phone", "phone", type="tel", label="Phone"),
            form_field("size", "properties.team_size", type="select", label="Team size",
                       choices=[["1-10", "1 to 10"], ["11+", "11 or more"]]),
            form_field("partner", "properties.is_partner", type="checkbox", label="We are a partner"),
            form_field("message", "properties.message", type="textarea", label="Message"),
            form_field("asset", "properties.asset", type="hidden", initial="pricing-guide"),
            form_field("company", "company_name", label="Company", policy="overwrite"),
            form_field("title", "job_title", label="Job title", policy="never"),
        ],
        consent_field="consent",
        consent_text=CONSENT,
        honeypot_field="website",
        thank_you_message="Thanks, we will call you within a day.",
        allowed_origins=[SITE],
    )


GOOD = {"work_email": "ann@acme.example", "first_name": "Ann", "size": "11+", "partner": "on",
        "message": "Show me routing", "company": "Acme", "title": "CMO", "consent": "on"}


# --- field definitions ------------------------------------------------------


def _clean(**overrides) -> ValidationError | None:
    form = FormFactory.build(**{"fields": [form_field("email", "email")], **overrides})
    try:
        form.full_clean(exclude=["event_type"])
    except ValidationError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "fields, reason",
    [
        ([form_field("email", "email"), form_field("size", "properties.size", type="select")],
         "Field 2 ('size'): a select needs at least one choice."),
        ([form_field("email", "email"), form_field("x", "first_name", type="slider")],
         "Field 2 ('x'): unknown type 'slider'"),
        ([form_field("email", "email"), form_field("nick", "nickname")], "Field 2 ('nick'): unknown lead field 'nickname'"),
        ([form_field("email", "email"), form_field("nick", "first_name", policy="sometimes")],
         "Field 2 ('nick'): unknown write policy 'sometimes'"),
        ([form_field("email", "email"), form_field("email", "last_name")], "Field 2 ('email'): the name is used twice."),
        ([form_field("email", "email", type="text")], "the field that fills the lead's email must have the type email"),
        ([form_field("first", "first_name")], "One field must fill the lead's email"),
        ([form_field("email", "email"), form_field("ok", "first_name", type="checkbox")],
         "Field 2 ('ok'): a checkbox fills a custom property"),
        ([form_field("email", "email"), form_field("page_url", "properties.page")], "Field 2 ('page_url'): 'page_url' is reserved"),
    ],
)
def test_bad_field_definitions_are_refused_naming_the_field_and_reason(fields, reason):
    exc = _clean(fields=fields)
    assert exc is not None and "fields" in exc.message_dict
    assert any(reason in message for message in exc.message_dict["fields"]), exc.message_dict


def test_redirect_must_be_http_and_origins_are_checked_and_normalized():
    exc = _clean(redirect_url="ftp://files.example/x", allowed_origins=["https://ok.example", "ftp://x.example"])
    assert exc.message_dict["redirect_url"] == ["Give an http:// or https:// address."]
    assert "Give an http:// or https:// address." in _clean(redirect_url="javascript:alert(1)").message_dict["redirect_url"]
    assert "allowed_origins" in exc.message_dict and "ftp://x.example" in exc.message_dict["allowed_origins"][0]
    form = FormFactory.build(fields=[form_field("email", "email")], allowed_origins=["HTTPS://WWW.Acme.example:443/"],
                             redirect_url="https://acme.example/thanks")
    form.full_clean(exclude=["event_type"])
    assert form.allowed_origins == [SITE]


# --- the hosted page ----------------------------------------------------------


def _page(client, key="demo", **params):
    response = client.get(reverse("form-page", args=[key]), params)
    return response, response.content.decode()


def test_hosted_page_renders_every_field_type_consent_and_a_hidden_honeypot(client, form):
    response, page = _page(client)
    assert response.status_code == 200
    assert '<label for="mt-demo-work_email">Work email' in page
    assert re.search(r'<input type="email" id="mt-demo-work_email" name="work_email" value=""[^>]* required', page)
    assert re.search(r'<input type="text" id="mt-demo-first_name" name="first_name"', page)
    assert '<p class="mt-help">As on your badge.</p>' in page
    assert re.search(r'<input type="tel" id="mt-demo-phone" name="phone"', page)
    assert re.search(r'<select id="mt-demo-size" name="size"', page) and '<option value="11+">11 or more</option>' in page
    assert re.search(r'<input type="checkbox" id="mt-demo-partner" name="partner" value="on"', page)
    assert re.search(r'<textarea id="mt-demo-message" name="message"', page)
    assert '<input type="hidden" name="asset" value="pricing-guide">' in page
    assert re.search(r'<input type="checkbox" id="mt-demo-consent" name="consent"', page) and CONSENT in page
    assert re.search(r'<div class="mt-hp" aria-hidden="true" style="position:absolute;left:-10000px[^>]*>'
                     r'<label>Leave this empty <input type="text" name="website" tabindex="-1"', page)
    assert 'name="csrfmiddlewaretoken"' in page
    assert '<link rel="stylesheet" href="/static/martech/forms/form.css">' in page


def test_unknown_or_inactive_form_is_a_404(client, form):
    assert client.get(reverse("form-page", args=["nope"])).status_code == 404
    Form.objects.filter(pk=form.pk).update(is_active=False)
    assert client.get(reverse("form-page", args=["demo"])).status_code == 404


def test_failed_submit_shows_errors_next_to_fields_and_keeps_values(client, form):
    response = client.post(reverse("form-page", args=["demo"]),
                           {**GOOD, "work_email": "not-an-email", "first_name": "", "size": "500", "message": "<b>hi</b>"})
    page = response.content.decode()
    assert response.status_code == 400
    # Each error inside its own field's block, with the form's own message where it gives one.
    assert re.search(r'name="work_email" value="not-an-email"[^>]*aria-invalid="true"[^>]*>.*?'
                     r'<p class="mt-error" role="alert">Please give your work email.</p>', page, re.S)
    assert re.search(r'id="mt-demo-first_name-note">.*?This field is required.</p>', page, re.S)
    assert re.search(r'id="mt-demo-size-note"><p class="mt-error" role="alert">Choose one of the listed options.</p>', page)
    assert "&lt;b&gt;hi&lt;/b&gt;</textarea>" in page  # kept, escaped
    assert re.search(r'name="partner" value="on" checked', page) and re.search(r'name="consent" value="on" checked', page)
    assert not Lead.objects.exists() and not Event.objects.exists()


def test_hosted_submit_records_lead_event_and_consent_with_text_and_page(client, form):
    response = client.post(reverse("form-page", args=["demo"]), GOOD, HTTP_USER_AGENT="Mozilla/5.0 test",
                           REMOTE_ADDR="198.51.100.4")
    assert response.status_code == 303 and response["Location"] == reverse("form-thanks", args=["demo"])
    lead = Lead.objects.get()
    assert (lead.email, lead.first_name, lead.company_name, lead.job_title) == ("ann@acme.example", "Ann", "Acme", "CMO")
    assert lead.properties == {"team_size": "11+", "is_partner": True, "message": "Show me routing",
                               "asset": "pricing-guide"}
    record = ConsentRecord.objects.get(lead=lead)
    assert record.evidence["text"] == CONSENT
    assert record.evidence["page_url"] == "http://testserver/f/demo"
    assert record.evidence["ip"] == "198.51.100.4"
    assert Event.objects.get(lead=lead).properties["page_url"] == "http://testserver/f/demo"
    thanks = client.get(response["Location"])
    assert thanks.status_code == 200 and "Thanks, we will call you within a day." in thanks.content.decode()


def test_hosted_page_needs_the_csrf_token_of_our_own_origin(form):
    client = Client(enforce_csrf_checks=True)
    refused = client.post(reverse("form-page", args=["demo"]), GOOD)
    assert refused.status_code == 403 and not Lead.objects.exists()
    _, page = _page(client)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    accepted = client.post(reverse("form-page", args=["demo"]), {**GOOD, "csrfmiddlewaretoken": token})
    assert accepted.status_code == 303 and Lead.objects.count() == 1


def test_redirect_url_replaces_the_thank_you_page(client, form):
    form.redirect_url = "https://www.acme.example/welcome"
    form.save()
    response = client.post(reverse("form-page", args=["demo"]), GOOD)
    assert response.status_code == 303 and response["Location"] == "https://www.acme.example/welcome"


def test_honeypot_on_the_hosted_page_looks_like_success_and_writes_nothing(client, form):
    response = client.post(reverse("form-page", args=["demo"]), {**GOOD, "website": "http://spam.example"})
    assert response.status_code == 303 and response["Location"] == reverse("form-thanks", args=["demo"])
    assert not Lead.objects.exists() and not Event.objects.exists()


def test_utm_of_the_landing_link_rides_along_to_the_event(client, form):
    _, page = _page(client, utm_source="newsletter", utm_medium="email", utm_campaign="spring")
    assert '<input type="hidden" name="utm_source" value="newsletter">' in page
    hidden = dict(re.findall(r'<input type="hidden" name="(utm_\w+)" value="([^"]*)">', page))
    client.post(reverse("form-page", args=["demo"]), {**GOOD, **hidden})
    event = Event.objects.get()
    assert (event.utm_source, event.utm_medium, event.utm_campaign) == ("newsletter", "email", "spring")


def test_write_policies_fill_overwrite_and_never_on_an_existing_lead(client, form):
    lead = LeadFactory(email="ann@acme.example", first_name="", company_name="Old Co", job_title="VP Sales")
    client.post(reverse("form-page", args=["demo"]), GOOD)
    lead.refresh_from_db()
    assert lead.first_name == "Ann"  # fill: was empty
    assert lead.company_name == "Acme"  # overwrite
    assert lead.job_title == "VP Sales"  # never
    event = Event.objects.get(lead=lead)
    assert event.properties["not_applied"] == {"job_title": "CMO"}


def test_consent_evidence_names_the_older_wording_an_embedded_copy_still_shows(client, form):
    shown = form.consent_version
    form.consent_text = "New wording."
    form.save()
    client.post(reverse("form-page", args=["demo"]), {**GOOD, "consent_version": shown})
    assert ConsentRecord.objects.get().evidence["text"] == CONSENT


# --- the capture endpoint for embedded copies --------------------------------


@pytest.fixture
def api():
    return APIClient(enforce_csrf_checks=True)


def _capture(api, data, origin=None, fmt="json", **extra):
    headers = {"HTTP_ORIGIN": origin} if origin else {}
    return api.post(reverse("api-form-capture", args=["demo"]), data, format=fmt, **headers, **extra)


def test_preflight_from_a_listed_origin_is_allowed(api, form):
    response = api.options(reverse("api-form-capture", args=["demo"]), HTTP_ORIGIN=SITE,
                           HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST", HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type")
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == SITE
    assert "POST" in response["Access-Control-Allow-Methods"] and "Content-Type" in response["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://www.acme.example", "null"])
def test_preflight_from_another_origin_is_refused_without_cors_headers(api, form, origin):
    response = api.options(reverse("api-form-capture", args=["demo"]), HTTP_ORIGIN=origin,
                           HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 403 and "Access-Control-Allow-Origin" not in response


def test_preflights_do_not_use_up_the_rate_limit(api, form, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                                                          "form_capture": "2/min"}}
    for _ in range(3):
        assert api.options(reverse("api-form-capture", args=["demo"]), HTTP_ORIGIN=SITE).status_code == 204
    assert _capture(api, GOOD, SITE).status_code == 202


def test_post_from_an_unlisted_origin_is_refused_and_writes_nothing(api, form, caplog):
    lead = LeadFactory(email="ann@acme.example", first_name="Ann", company_name="Keep Co")
    for fmt in ("json", "multipart"):
        response = _capture(api, {**GOOD, "company": "Evil"}, "https://evil.example", fmt=fmt)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in response
    lead.refresh_from_db()
    assert lead.company_name == "Keep Co"
    assert "form demo: post from origin 'https://evil.example' refused" in caplog.text
    assert not Event.objects.exists() and not ConsentRecord.objects.exists() and Lead.objects.count() == 1


def test_json_post_from_a_listed_origin_gets_json_and_cors_headers(api, form):
    response = _capture(api, {**GOOD, "page_url": f"{SITE}/pricing"}, SITE)
    assert response.status_code == 202 and response.json() == {"status": "received"}
    assert response["Access-Control-Allow-Origin"] == SITE and "Origin" in response["Vary"]
    assert ConsentRecord.objects.get().evidence["page_url"] == f"{SITE}/pricing"
    errors = _capture(api, {"work_email": ""}, SITE)
    assert errors.status_code == 400 and errors["Access-Control-Allow-Origin"] == SITE
    assert errors.json()["error"]["fields"]["work_email"] == ["Please give your work email."]


HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_plain_html_post_from_a_listed_site_lands_on_the_thank_you_page(form):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("api-form-capture", args=["demo"]), GOOD, HTTP_ORIGIN=SITE,
                           HTTP_ACCEPT=HTML_ACCEPT, HTTP_REFERER=f"{SITE}/contact")
    assert response.status_code == 303 and response["Location"] == reverse("form-thanks", args=["demo"])
    record = ConsentRecord.objects.get()
    assert record.evidence["page_url"] == f"{SITE}/contact" and record.evidence["text"] == CONSENT
    form.redirect_url = f"{SITE}/welcome"
    form.save()
    again = client.post(reverse("api-form-capture", args=["demo"]), GOOD, HTTP_ORIGIN=SITE, HTTP_ACCEPT=HTML_ACCEPT)
    assert again.status_code == 303 and again["Location"] == f"{SITE}/welcome"


def test_failed_plain_html_post_reopens_the_hosted_page_with_the_errors(form):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("api-form-capture", args=["demo"]), {**GOOD, "first_name": ""},
                           HTTP_ORIGIN=SITE, HTTP_ACCEPT=HTML_ACCEPT)
    page = response.content.decode()
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert f'action="{reverse("form-page", args=["demo"])}"' in page and 'name="csrfmiddlewaretoken"' in page
    assert re.search(r'id="mt-demo-first_name-note">.*?This field is required.</p>', page, re.S)
    assert 'name="work_email" value="ann@acme.example"' in page
    assert not Lead.objects.exists()


def test_a_fetch_with_form_data_still_gets_json(api, form):
    response = _capture(api, GOOD, SITE, fmt="multipart", HTTP_ACCEPT="*/*")
    assert response.status_code == 202 and response.json() == {"status": "received"}


# --- the snippet in the admin ------------------------------------------------------


def test_admin_change_page_shows_the_snippet_and_hosted_url(client, superuser, form):
    client.force_login(superuser)
    response = client.get(reverse("admin:martech_form_change", args=[form.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'href="http://testserver/f/demo"' in page
    snippet = html.unescape(re.search(r'<textarea readonly[^>]*id="embed-snippet"[^>]*>(.*?)</textarea>', page, re.S).group(1))
    assert '<form class="mt-form" method="post" action="http://testserver/api/v1/capture/demo"' in snippet
    assert re.search(r'<script src="http://testserver/static/martech/forms/embed\.js" defer></script>', snippet)
    assert 'name="work_email"' in snippet and CONSENT in snippet and 'name="website"' in snippet
    assert "csrfmiddlewaretoken" not in snippet
    assert f'name="consent_version" value="{form.consent_version}"' in snippet


def test_admin_edits_fields_as_rows_and_reports_errors_by_field(client, superuser, form):
    client.force_login(superuser)
    url = reverse("admin:martech_form_change", args=[form.pk])
    page = client.get(url).content.decode()
    assert 'name="fields-0-name" value="work_email"' in page and 'name="fields-9-name" value=""' in page
    post = {"name": form.name, "key": form.key, "is_active": "on", "defaults": "{}", "honeypot_field": "website",
            "submit_label": "Send", "consent_field": "consent", "consent_channel": "email", "consent_text": CONSENT,
            "thank_you_message": "Thanks", "redirect_url": "", "allowed_origins": f"{SITE}\nhttp://localhost:8080/",
            "fields-count": "3",
            "fields-0-order": "20", "fields-0-name": "size", "fields-0-label": "Size", "fields-0-type": "select",
            "fields-0-lead_field": "properties.size", "fields-0-policy": "overwrite", "fields-0-choices": "small|Small\nlarge",
            "fields-1-order": "10", "fields-1-name": "email", "fields-1-label": "Email", "fields-1-type": "email",
            "fields-1-lead_field": "email", "fields-1-required": "on", "fields-1-policy": "fill",
            "fields-2-name": "", "fields-2-type": "", "fields-2-policy": "fill"}
    saved = client.post(url, post)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    form.refresh_from_db()
    assert [f["name"] for f in form.fields] == ["email", "size"]
    assert form.fields[1]["choices"] == [["small", "Small"], ["large", "large"]] and form.fields[1]["policy"] == "overwrite"
    assert form.allowed_origins == [SITE, "http://localhost:8080"]
    refused = client.post(url, {**post, "fields-0-choices": ""})
    assert refused.status_code == 200
    assert "Field 2 (&#x27;size&#x27;): a select needs at least one choice." in refused.content.decode()


def test_hosted_page_shares_the_per_ip_rate_limit(client, form, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                                                          "form_capture": "1/min"}}
    assert client.post(reverse("form-page", args=["demo"]), GOOD).status_code == 303
    again = client.post(reverse("form-page", args=["demo"]), {**GOOD, "work_email": "bob@acme.example"})
    assert again.status_code == 429 and "Too many submissions" in again.content.decode()
    assert 'value="bob@acme.example"' in again.content.decode()  # nothing typed is lost
    assert list(Lead.objects.values_list("email", flat=True)) == ["ann@acme.example"]
