"""The deploy checks one by one (martech/checks.py, martech/crm/checks.py,
nurture/checks.py): each fires on its unsafe value with debug off, names the
variable, and clears when the variable is set as production needs. The whole
`check --deploy` run, in a subprocess, is in test_settings.py."""
from __future__ import annotations

import pytest

from martech.checks import check_email_backend, is_loopback_url
from martech.crm.checks import check_crm_settings
from martech.crm.emulators.defaults import CREDENTIALS
from nurture.checks import check_esp_webhook, check_nurture_settings

GOOD_CRM = {
    "HUBSPOT_URL": "https://api.hubapi.com", "HUBSPOT_TOKEN": "pat-na1-real", "HUBSPOT_APP_SECRET": "real-secret",
    "SALESFORCE_URL": "https://acme.my.salesforce.com", "SALESFORCE_ACCESS_TOKEN": "00D-real",
    "SALESFORCE_REFRESH_TOKEN": "5Aep-real", "SALESFORCE_CLIENT_ID": "3MVG-real", "SALESFORCE_CLIENT_SECRET": "real",
}


@pytest.fixture
def production(settings):
    settings.DEBUG = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, **GOOD_CRM}
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "SMS_BACKEND": "nurture.channels.TwilioSmsBackend",
                                "PUBLIC_BASE_URL": "https://ops.example.com"}
    return settings


def _ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_production_settings_pass(production):
    assert check_email_backend() == check_crm_settings() == check_nurture_settings() == check_esp_webhook() == []


@pytest.mark.parametrize("backend", ["console", "locmem", "filebased", "dummy"])
def test_email_backend_that_delivers_nothing_is_refused(production, backend):
    production.EMAIL_BACKEND = f"django.core.mail.backends.{backend}.EmailBackend"
    [error] = check_email_backend()
    assert error.id == "martech.E001" and "EMAIL_URL" in error.hint and backend in error.msg


@pytest.mark.parametrize("backend", ["anymail.backends.sendgrid.EmailBackend",
                                     "django.core.mail.backends.smtp.EmailBackend"])
def test_real_email_backends_pass(production, backend):
    production.EMAIL_BACKEND = backend
    assert check_email_backend() == []


@pytest.mark.parametrize("key", sorted(CREDENTIALS))
def test_each_crm_emulator_credential_is_refused_naming_its_variable(production, key):
    production.MARTECH_CRM = {**production.MARTECH_CRM, key: CREDENTIALS[key]}
    [error] = check_crm_settings()
    assert error.id == "martech.crm.E001"
    assert f"MARTECH_CRM_{key}" in error.msg and f"MARTECH_CRM_{key}" in error.hint


@pytest.mark.parametrize("key", ["HUBSPOT_URL", "SALESFORCE_URL"])
@pytest.mark.parametrize("url", ["http://127.0.0.1:8471", "https://localhost:8472", "http://[::1]:9000",
                                 "https://0.0.0.0", "https://crm.localhost/api"])
def test_loopback_crm_urls_are_refused(production, key, url):
    production.MARTECH_CRM = {**production.MARTECH_CRM, key: url}
    [error] = check_crm_settings()
    assert error.id == "martech.crm.E002" and f"MARTECH_CRM_{key}" in error.msg


def test_a_crm_left_empty_is_not_used_and_passes(production):
    production.MARTECH_CRM = {**production.MARTECH_CRM, **{k: "" for k in GOOD_CRM if k.startswith("SALESFORCE")}}
    assert check_crm_settings() == []


@pytest.mark.parametrize("backend", ["nurture.channels.ConsoleSmsBackend", "nurture.channels.LocmemSmsBackend"])
def test_sms_backend_that_delivers_nothing_is_refused(production, backend):
    production.MARTECH_NURTURE = {**production.MARTECH_NURTURE, "SMS_BACKEND": backend}
    [error] = check_nurture_settings()
    assert error.id == "nurture.E001" and "NURTURE_SMS_BACKEND" in error.msg
    assert "DisabledSmsBackend" in error.hint


def test_disabled_sms_backend_passes_and_refuses_to_send(production):
    from nurture.channels import DisabledSmsBackend, SmsError

    production.MARTECH_NURTURE = {**production.MARTECH_NURTURE, "SMS_BACKEND": "nurture.channels.DisabledSmsBackend"}
    assert check_nurture_settings() == []
    with pytest.raises(SmsError) as caught:
        DisabledSmsBackend().send(to="+15550100", body="hi", key="k")
    assert caught.value.code == "sms_disabled" and "NURTURE_SMS_BACKEND" in str(caught.value)


@pytest.mark.parametrize(("url", "why"), [("http://127.0.0.1:8000", "this machine"),
                                          ("https://localhost", "this machine"),
                                          ("http://ops.example.com", "not https")])
def test_public_base_url_must_be_public_https(production, url, why):
    production.MARTECH_NURTURE = {**production.MARTECH_NURTURE, "PUBLIC_BASE_URL": url}
    [error] = check_nurture_settings()
    assert error.id == "nurture.E002" and "NURTURE_PUBLIC_BASE_URL" in error.msg and why in error.msg


def test_nothing_fires_with_debug_on(production):
    production.DEBUG = True
    production.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    production.MARTECH_CRM = {**production.MARTECH_CRM, **CREDENTIALS, "HUBSPOT_URL": "http://127.0.0.1:8471"}
    production.MARTECH_NURTURE = {**production.MARTECH_NURTURE, "SMS_BACKEND": "nurture.channels.ConsoleSmsBackend",
                                  "PUBLIC_BASE_URL": "http://127.0.0.1:8000"}
    assert check_email_backend() == check_crm_settings() == check_nurture_settings() == []


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8471", True), ("http://127.8.9.10", True), ("http://LOCALHOST", True),
    ("http://[::1]:80", True), ("http://0.0.0.0:8000", True), ("http://api.localhost", True),
    ("https://api.hubapi.com", False), ("https://10.0.0.5", False), ("https://localhost.example.com", False),
    ("", False),
])
def test_is_loopback_url(url, loopback):
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize(("backend", "variable"), [
    ("anymail.backends.postmark.EmailBackend", "ANYMAIL_WEBHOOK_SECRET"),
    ("anymail.backends.amazon_ses.EmailBackend", "ANYMAIL_WEBHOOK_SECRET"),
    ("anymail.backends.mailgun.EmailBackend", "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY"),
])
def test_an_esp_whose_tracking_webhook_has_no_secret_is_reported(production, backend, variable):
    production.EMAIL_BACKEND = backend
    production.ANYMAIL = {}
    [warning] = check_esp_webhook()
    assert warning.id == "nurture.W001" and variable in warning.msg and variable in warning.hint
    production.ANYMAIL = {"WEBHOOK_SECRET": ["esp:pw"], "MAILGUN_WEBHOOK_SIGNING_KEY": "k"}
    assert check_esp_webhook() == []
    production.DEBUG = True
    production.ANYMAIL = {}
    assert check_esp_webhook() == []
