"""Deploy checks (``manage.py check --deploy``): with debug off, refuse the
embedded setup's defaults that would be unsafe or broken in production.

Each app checks its own settings (martech/crm/checks.py, nurture/checks.py);
this module holds the shared URL test and the site-wide email check. Every
message names the variable and what to set. With debug on (the embedded
quick start) nothing here fires: its defaults are what it is for."""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

# Backends that deliver nothing: fine on a laptop, a silent loss in production.
NON_DELIVERING_EMAIL = {
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.locmem.EmailBackend",
    "django.core.mail.backends.filebased.EmailBackend",
    "django.core.mail.backends.dummy.EmailBackend",
}


def is_loopback_url(url: str) -> bool:
    """The URL's host is this machine: ``localhost`` (or a name under it),
    a loopback address (127.0.0.0/8, ::1) or the unspecified address."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def production() -> bool:
    return not settings.DEBUG


@checks.register(checks.Tags.security, deploy=True)
def check_email_backend(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if not production() or settings.EMAIL_BACKEND not in NON_DELIVERING_EMAIL:
        return []
    return [checks.Error(
        f"Email is not delivered: the email backend is {settings.EMAIL_BACKEND}.",
        hint="Set EMAIL_URL to your mail server (smtp+tls://user:password@host:587) or an email provider "
             "(see docs/email.md, Email providers), or EMAIL_BACKEND to an anymail backend.",
        id="martech.E001",
    )]
