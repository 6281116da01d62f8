"""Checks of nurture's settings. Always: the recovery lease must outlast a
send (nurture.W002). Deploy (see martech/checks.py): with debug off, a
console SMS backend and links in emails that point at this machine or travel
over plain http are refused, and an ESP whose tracking webhook has no secret
is reported (nurture.W001: the webhook refuses every post, so bounces and
complaints never suppress an address)."""
from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

from martech.checks import is_loopback_url, production
from martech.email_config import ESP_BY_BACKEND, webhook_secret_missing

NON_DELIVERING_SMS = {"nurture.channels.ConsoleSmsBackend", "nurture.channels.LocmemSmsBackend"}


@checks.register()
def check_nurture_lease(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    conf = settings.MARTECH_NURTURE
    lease, timeout = conf["SENDING_LEASE_SECONDS"], conf["SEND_TIMEOUT_SECONDS"]
    if lease > timeout:
        return []
    return [checks.Warning(
        f"NURTURE_SENDING_LEASE_SECONDS={lease} is not above NURTURE_SEND_TIMEOUT_SECONDS={timeout}: recovery may "
        "take over a message whose send is still running.",
        hint="Set the lease to several send timeouts (default 120 s for a 30 s timeout).",
        id="nurture.W002",
    )]


@checks.register(checks.Tags.security, deploy=True)
def check_nurture_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if not production():
        return []
    conf = settings.MARTECH_NURTURE
    errors: list[checks.CheckMessage] = []
    if conf["SMS_BACKEND"] in NON_DELIVERING_SMS:
        errors.append(checks.Error(
            f"SMS is not delivered: NURTURE_SMS_BACKEND is {conf['SMS_BACKEND']}.",
            hint="Set NURTURE_SMS_BACKEND=nurture.channels.TwilioSmsBackend with TWILIO_ACCOUNT_SID, "
                 "TWILIO_AUTH_TOKEN and TWILIO_FROM, or nurture.channels.DisabledSmsBackend if you send no SMS.",
            id="nurture.E001",
        ))
    base = conf["PUBLIC_BASE_URL"]
    if is_loopback_url(base):
        problem = "points at this machine: recipients cannot reach it"
    elif urlsplit(base).scheme != "https":
        problem = "is not https: the signed tokens in the links would travel in clear text"
    else:
        problem = ""
    if problem:
        errors.append(checks.Error(
            f"NURTURE_PUBLIC_BASE_URL={base} (the base of every unsubscribe, click and open link in emails) {problem}.",
            hint="Set NURTURE_PUBLIC_BASE_URL to the site's public https address, e.g. https://ops.example.com.",
            id="nurture.E002",
        ))
    return errors


@checks.register(checks.Tags.security, deploy=True)
def check_esp_webhook(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    esp = ESP_BY_BACKEND.get(settings.EMAIL_BACKEND)
    if not production() or esp is None:
        return []
    missing = webhook_secret_missing(esp, getattr(settings, "ANYMAIL", {}))
    if not missing:
        return []
    return [checks.Warning(
        f"Email goes through {esp.name}, but its tracking webhook (/anymail/{esp.webhook}) refuses every post: "
        f"{missing} is not set, so bounces and complaints never suppress an address.",
        hint=f"Set {missing} and give the same to {esp.name}'s webhook settings (see docs/email.md, Email providers).",
        id="nurture.W001",
    )]
