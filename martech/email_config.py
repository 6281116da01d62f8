"""Which email backend the site sends through, read from the environment.

``email_settings(environ)`` is a pure function of the environment mapping,
so settings.py calls it with ``os.environ`` and tests with a dict. It answers
the Django email settings (``EMAIL_BACKEND`` and the SMTP/file ones) and
anymail's ``ANYMAIL`` dict:

- ``EMAIL_URL`` names the backend as a URL: django-environ's SMTP, console
  and file schemes (``smtp+tls://user:pass@host:587``, ``consolemail://``,
  ``filemail:///path``) or an ESP through django-anymail
  (``sendgrid://:KEY@``, ``mailgun://:KEY@?sender_domain=mg.example.com``,
  ``postmark://:TOKEN@``, ``brevo://:KEY@``, ``amazonses://?region=eu-west-1``).
- ``EMAIL_BACKEND`` names a backend class instead (any anymail ESP, or your
  own); its credentials then come from ``ANYMAIL_*`` variables.
- Every ``ANYMAIL_<NAME>`` variable becomes ``ANYMAIL["<NAME>"]``, so any
  string setting of any anymail ESP can be given; ``true``/``false`` become
  booleans and ``ANYMAIL_WEBHOOK_SECRET`` a list of ``user:password`` pairs.

A bad value raises ImproperlyConfigured naming the variable and what to set.
boto3 (Amazon SES) is looked for, never imported here: settings stay quick
to load and the other ESPs do not need it.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

DEFAULT_EMAIL_URL = "consolemail://"


@dataclass(frozen=True)
class Esp:
    key: str  # the EMAIL_URL scheme
    name: str  # anymail's esp_name (also in its webhook views)
    backend: str
    prefix: str  # of its ANYMAIL settings: ANYMAIL["<PREFIX>_API_KEY"]
    credential: str = ""  # the required secret (the URL's password); "" when the ESP reads its own (AWS)
    options: dict[str, str] = field(default_factory=dict)  # EMAIL_URL query option -> ANYMAIL key
    webhook: str = ""  # the path of its tracking webhook under /anymail/
    signing_key: str = ""  # ANYMAIL key that signs its webhooks (instead of basic auth)


ESPS: dict[str, Esp] = {e.key: e for e in (
    Esp("amazonses", "Amazon SES", "anymail.backends.amazon_ses.EmailBackend", "AMAZON_SES",
        options={"configuration_set": "AMAZON_SES_CONFIGURATION_SET_NAME"}, webhook="amazon_ses/tracking/"),
    Esp("sendgrid", "SendGrid", "anymail.backends.sendgrid.EmailBackend", "SENDGRID", "API_KEY",
        webhook="sendgrid/tracking/"),
    Esp("mailgun", "Mailgun", "anymail.backends.mailgun.EmailBackend", "MAILGUN", "API_KEY",
        options={"sender_domain": "MAILGUN_SENDER_DOMAIN", "api_url": "MAILGUN_API_URL"},
        webhook="mailgun/tracking/", signing_key="MAILGUN_WEBHOOK_SIGNING_KEY"),
    Esp("postmark", "Postmark", "anymail.backends.postmark.EmailBackend", "POSTMARK", "SERVER_TOKEN",
        webhook="postmark/tracking/"),
    Esp("brevo", "Brevo", "anymail.backends.brevo.EmailBackend", "BREVO", "API_KEY", webhook="brevo/tracking/"),
)}
ESP_BY_BACKEND = {e.backend: e for e in ESPS.values()}
# The AWS region is a client parameter of boto3, not a string setting.
_SES_REGION = "region"

_SETTING_KEYS = ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD", "EMAIL_USE_TLS",
                 "EMAIL_USE_SSL", "EMAIL_FILE_PATH")
_SCHEMES = ", ".join([f"{s}://" for s in environ.Env.EMAIL_SCHEMES] + [f"{s}://" for s in ESPS])


def email_settings(environ_: Mapping[str, str]) -> dict[str, Any]:
    """The email settings for this environment: ``EMAIL_BACKEND``, the SMTP
    and file settings of Django's backends, and ``ANYMAIL``."""
    url = (environ_.get("EMAIL_URL") or "").strip()
    backend = (environ_.get("EMAIL_BACKEND") or "").strip()
    anymail = _anymail_from_env(environ_)
    out: dict[str, Any] = {}

    scheme = urlsplit(url).scheme.lower() if url else ""
    if url and not scheme:
        raise ImproperlyConfigured(f"EMAIL_URL={url!r} has no scheme: use one of {_SCHEMES}")
    esp = ESPS.get(scheme)
    if esp is not None:
        _esp_from_url(esp, url, anymail)
        url_backend = esp.backend
    elif url:
        if scheme not in environ.Env.EMAIL_SCHEMES:
            raise ImproperlyConfigured(f"EMAIL_URL scheme {scheme!r} is not known: use one of {_SCHEMES}, "
                                       "or set EMAIL_BACKEND to a backend class")
        parsed = environ.Env.email_url_config(url)
        out.update({k: parsed[k] for k in _SETTING_KEYS if parsed.get(k) is not None})
        url_backend = parsed["EMAIL_BACKEND"]
    else:
        url_backend = ""

    if backend:
        if "." not in backend:
            raise ImproperlyConfigured(f"EMAIL_BACKEND={backend!r} is not a dotted path to a backend class "
                                       "(e.g. anymail.backends.postmark.EmailBackend)")
        if url and url_backend != backend and (esp is not None or backend in ESP_BY_BACKEND):
            raise ImproperlyConfigured(f"EMAIL_BACKEND={backend} and EMAIL_URL={scheme}:// name different email "
                                       "backends: set only one of them")
        esp = ESP_BY_BACKEND.get(backend)
    else:
        backend = url_backend or environ.Env.EMAIL_SCHEMES[DEFAULT_EMAIL_URL.partition(":")[0]]

    if esp is not None:
        _require_credentials(esp, anymail, via_url=bool(url))
    out["EMAIL_BACKEND"] = backend
    out["ANYMAIL"] = anymail
    return out


def _anymail_from_env(environ_: Mapping[str, str]) -> dict[str, Any]:
    anymail: dict[str, Any] = {}
    for var, raw in environ_.items():
        if not var.startswith("ANYMAIL_") or raw == "":
            continue
        key = var.removeprefix("ANYMAIL_")
        value: Any = raw.strip()
        if key == "WEBHOOK_SECRET":
            value = [v.strip() for v in raw.split(",") if v.strip()]
            bad = [v for v in value if ":" not in v or not v.partition(":")[0] or not v.partition(":")[2]]
            if bad:
                raise ImproperlyConfigured("ANYMAIL_WEBHOOK_SECRET must be user:password (comma-separated to "
                                           "accept several while you rotate it); a value has no ':' or an empty part")
        elif value.lower() in ("true", "false"):
            value = value.lower() == "true"
        anymail[key] = value
    return anymail


def _esp_from_url(esp: Esp, url: str, anymail: dict[str, Any]) -> None:
    parts = urlsplit(url)
    if parts.hostname or parts.path not in ("", "/"):
        raise ImproperlyConfigured(f"EMAIL_URL={esp.key}://… takes no host or path: write "
                                   f"{_example(esp)}")
    secret = unquote(parts.password or "") or unquote(parts.username or "")
    if secret and not esp.credential:
        raise ImproperlyConfigured(f"EMAIL_URL={esp.key}://… takes no credentials: {esp.name} reads the AWS ones "
                                   "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an instance role)")
    if secret:
        key = f"{esp.prefix}_{esp.credential}"
        if anymail.get(key) not in (None, secret):
            raise ImproperlyConfigured(f"EMAIL_URL and ANYMAIL_{key} both give the {esp.name} "
                                       f"{esp.credential.lower().replace('_', ' ')}: set it in one place")
        anymail[key] = secret
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if esp.key == "amazonses" and name == _SES_REGION:
            anymail.setdefault("AMAZON_SES_CLIENT_PARAMS", {})["region_name"] = value
        elif name in esp.options:
            anymail[esp.options[name]] = value
        else:
            known = sorted([*esp.options, *([_SES_REGION] if esp.key == "amazonses" else [])])
            raise ImproperlyConfigured(f"EMAIL_URL option {name!r} is not known for {esp.key}://"
                                       + (f" (known: {', '.join(known)})" if known else " (it takes none)"))


def _require_credentials(esp: Esp, anymail: dict[str, Any], *, via_url: bool) -> None:
    if esp.credential and not anymail.get(f"{esp.prefix}_{esp.credential}"):
        where = f"{_example(esp)} in EMAIL_URL, or ANYMAIL_{esp.prefix}_{esp.credential}"
        raise ImproperlyConfigured(
            f"{'EMAIL_URL' if via_url else 'EMAIL_BACKEND'} selects {esp.name} but no "
            f"{esp.credential.lower().replace('_', ' ')} is set: give it as {where}")
    if esp.key == "amazonses" and importlib.util.find_spec("boto3") is None:
        raise ImproperlyConfigured(f"{'EMAIL_URL' if via_url else 'EMAIL_BACKEND'} selects Amazon SES, which needs "
                                   "boto3: install requirements.txt")


def _example(esp: Esp) -> str:
    if not esp.credential:
        return f"{esp.key}://?region=eu-west-1"
    return f"{esp.key}://:{esp.credential}@"


def webhook_secret_missing(esp: Esp, anymail: Mapping[str, Any]) -> str:
    """The variable to set before ``esp``'s tracking webhook may accept a
    post, or "" when it is secured: Mailgun signs its posts (its signing
    key), the others authenticate with HTTP basic auth (the shared
    ``ANYMAIL_WEBHOOK_SECRET``)."""
    if esp.signing_key:
        return "" if anymail.get(esp.signing_key) else f"ANYMAIL_{esp.signing_key}"
    return "" if anymail.get("WEBHOOK_SECRET") else "ANYMAIL_WEBHOOK_SECRET"
