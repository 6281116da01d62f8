"""EMAIL_URL / EMAIL_BACKEND / ANYMAIL_* -> the email settings
(martech/email_config.py): each scheme selects its backend and anymail
settings; a bad value names the variable and what to set. The start of the
site with an ESP and its deploy check run in subprocesses (settings are read
once per process)."""
from __future__ import annotations

import importlib.util

import pytest
from django.core.exceptions import ImproperlyConfigured

from martech.email_config import ESPS, email_settings, webhook_secret_missing
from tests.martech.test_settings import PRODUCTION, _run

SMTP = "django.core.mail.backends.smtp.EmailBackend"


def test_default_is_the_console():
    s = email_settings({})
    assert s["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    assert s["ANYMAIL"] == {}


def test_smtp_url_keeps_its_server_settings():
    s = email_settings({"EMAIL_URL": "smtp+tls://mailer:s%40cret@mail.example.com:587"})
    assert s["EMAIL_BACKEND"] == SMTP
    assert (s["EMAIL_HOST"], s["EMAIL_PORT"], s["EMAIL_HOST_USER"], s["EMAIL_HOST_PASSWORD"], s["EMAIL_USE_TLS"]) == \
        ("mail.example.com", 587, "mailer", "s@cret", True)
    assert email_settings({"EMAIL_URL": "filemail:///var/mail"})["EMAIL_FILE_PATH"] == "var/mail"


@pytest.mark.parametrize(("url", "backend", "anymail"), [
    ("sendgrid://:SG.abc.def@", "anymail.backends.sendgrid.EmailBackend", {"SENDGRID_API_KEY": "SG.abc.def"}),
    ("mailgun://:key-123@?sender_domain=mg.example.com&api_url=https://api.eu.mailgun.net/v3",
     "anymail.backends.mailgun.EmailBackend",
     {"MAILGUN_API_KEY": "key-123", "MAILGUN_SENDER_DOMAIN": "mg.example.com",
      "MAILGUN_API_URL": "https://api.eu.mailgun.net/v3"}),
    ("postmark://:pm-token@", "anymail.backends.postmark.EmailBackend", {"POSTMARK_SERVER_TOKEN": "pm-token"}),
    ("brevo://:xkeysib-1@", "anymail.backends.brevo.EmailBackend", {"BREVO_API_KEY": "xkeysib-1"}),
    ("amazonses://?region=eu-west-1&configuration_set=tracking", "anymail.backends.amazon_ses.EmailBackend",
     {"AMAZON_SES_CLIENT_PARAMS": {"region_name": "eu-west-1"}, "AMAZON_SES_CONFIGURATION_SET_NAME": "tracking"}),
])
def test_each_esp_scheme_selects_its_anymail_backend(url, backend, anymail):
    s = email_settings({"EMAIL_URL": url})
    assert s["EMAIL_BACKEND"] == backend
    assert s["ANYMAIL"] == anymail


def test_explicit_backend_takes_its_credentials_and_webhook_secrets_from_anymail_variables():
    s = email_settings({
        "EMAIL_BACKEND": "anymail.backends.mailgun.EmailBackend", "ANYMAIL_MAILGUN_API_KEY": "key-1",
        "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY": "whsec", "ANYMAIL_WEBHOOK_SECRET": "esp:pw1, esp:pw2",
        "ANYMAIL_DEBUG_API_REQUESTS": "false",
    })
    assert s["EMAIL_BACKEND"] == "anymail.backends.mailgun.EmailBackend"
    assert s["ANYMAIL"] == {"MAILGUN_API_KEY": "key-1", "MAILGUN_WEBHOOK_SIGNING_KEY": "whsec",
                            "WEBHOOK_SECRET": ["esp:pw1", "esp:pw2"], "DEBUG_API_REQUESTS": False}


def test_any_other_anymail_esp_can_be_named_by_backend():
    s = email_settings({"EMAIL_BACKEND": "anymail.backends.mailjet.EmailBackend",
                        "ANYMAIL_MAILJET_API_KEY": "k", "ANYMAIL_MAILJET_SECRET_KEY": "s"})
    assert s["EMAIL_BACKEND"] == "anymail.backends.mailjet.EmailBackend"
    assert s["ANYMAIL"] == {"MAILJET_API_KEY": "k", "MAILJET_SECRET_KEY": "s"}


def test_ses_needs_boto3_only_when_selected(monkeypatch):
    looked_for = []

    def find_spec(name):
        looked_for.append(name)
        return None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert email_settings({"EMAIL_URL": "postmark://:t@"})["EMAIL_BACKEND"] == "anymail.backends.postmark.EmailBackend"
    assert looked_for == []
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL selects Amazon SES, which needs boto3"):
        email_settings({"EMAIL_URL": "amazonses://"})
    assert looked_for == ["boto3"]


@pytest.mark.parametrize(("env", "named"), [
    ({"EMAIL_URL": "sparkpostx://:k@"}, "EMAIL_URL scheme 'sparkpostx' is not known"),
    ({"EMAIL_URL": "mail.example.com"}, "EMAIL_URL='mail.example.com' has no scheme"),
    ({"EMAIL_URL": "sendgrid://"}, "give it as sendgrid://:API_KEY@ in EMAIL_URL, or ANYMAIL_SENDGRID_API_KEY"),
    ({"EMAIL_URL": "postmark://"}, "or ANYMAIL_POSTMARK_SERVER_TOKEN"),
    ({"EMAIL_URL": "brevo://"}, "or ANYMAIL_BREVO_API_KEY"),
    ({"EMAIL_URL": "mailgun://?sender_domain=mg.example.com"}, "or ANYMAIL_MAILGUN_API_KEY"),
    ({"EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend"},
     "EMAIL_BACKEND selects Postmark but no server token is set"),
    ({"EMAIL_URL": "mailgun://:k@?region=eu"}, "EMAIL_URL option 'region' is not known for mailgun://"),
    ({"EMAIL_URL": "sendgrid://:k@api.sendgrid.com"}, "EMAIL_URL=sendgrid://… takes no host or path"),
    ({"EMAIL_URL": "amazonses://AKIA:secret@"}, "EMAIL_URL=amazonses://… takes no credentials"),
    ({"EMAIL_URL": "sendgrid://:a@", "ANYMAIL_SENDGRID_API_KEY": "b"},
     "EMAIL_URL and ANYMAIL_SENDGRID_API_KEY both give"),
    ({"EMAIL_URL": "postmark://:t@", "EMAIL_BACKEND": "anymail.backends.sendgrid.EmailBackend"},
     "EMAIL_BACKEND=anymail.backends.sendgrid.EmailBackend and EMAIL_URL=postmark:// name different"),
    ({"EMAIL_BACKEND": "SendGrid"}, "EMAIL_BACKEND='SendGrid' is not a dotted path"),
    ({"ANYMAIL_WEBHOOK_SECRET": "only-a-password"}, "ANYMAIL_WEBHOOK_SECRET must be user:password"),
])
def test_bad_email_configuration_names_the_variable_and_what_to_set(env, named):
    with pytest.raises(ImproperlyConfigured) as caught:
        email_settings(env)
    assert named in str(caught.value)


def test_webhook_secret_missing_names_the_variable_each_esp_needs():
    assert webhook_secret_missing(ESPS["mailgun"], {"WEBHOOK_SECRET": ["a:b"]}) == \
        "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY"
    assert webhook_secret_missing(ESPS["mailgun"], {"MAILGUN_WEBHOOK_SIGNING_KEY": "k"}) == ""
    for key in ("sendgrid", "postmark", "brevo", "amazonses"):
        assert webhook_secret_missing(ESPS[key], {"MAILGUN_WEBHOOK_SIGNING_KEY": "k"}) == "ANYMAIL_WEBHOOK_SECRET"
        assert webhook_secret_missing(ESPS[key], {"WEBHOOK_SECRET": ["a:b"]}) == ""


# --- the running site ---------------------------------------------------------------
SENDGRID = {**PRODUCTION, "EMAIL_URL": "sendgrid://:SG.real-key@"}


def test_the_site_starts_on_an_esp_url_and_mounts_its_webhook(tmp_path):
    probe = ("import django; django.setup(); from django.conf import settings as s; from django.urls import reverse; "
             "print(s.EMAIL_BACKEND, s.ANYMAIL['SENDGRID_API_KEY'], 'anymail' in s.INSTALLED_APPS, "
             "reverse('esp:sendgrid_tracking'))")
    proc = _run(["-c", probe], EMAIL_URL="sendgrid://:SG.real-key@")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-4:] == ["anymail.backends.sendgrid.EmailBackend", "SG.real-key", "True",
                                        "/anymail/sendgrid/tracking/"]


def test_check_deploy_with_an_esp_wants_its_webhook_secret(tmp_path):
    import secrets

    env = {**SENDGRID, "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}"}
    proc = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "nurture.W001" in output and "ANYMAIL_WEBHOOK_SECRET" in output
    proc = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                **env, ANYMAIL_WEBHOOK_SECRET="sendgrid:" + secrets.token_urlsafe(24))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "System check identified no issues" in output and "WARNING" not in output


def test_a_bad_esp_url_stops_the_start_naming_the_variable():
    proc = _run(["manage.py", "check"], EMAIL_URL="postmark://")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last and "ANYMAIL_POSTMARK_SERVER_TOKEN" in last
