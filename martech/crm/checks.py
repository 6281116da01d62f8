"""Deploy checks of the CRM settings: with debug off, the bundled emulators'
public credentials and loopback CRM URLs are refused (see martech/checks.py).
An empty value is accepted: that CRM is not used (its webhooks are refused,
its connector cannot log in)."""
from __future__ import annotations

from django.conf import settings
from django.core import checks

from martech.checks import is_loopback_url, production
from martech.crm.emulators.defaults import CREDENTIALS

URLS = {"HUBSPOT_URL": "https://api.hubapi.com", "SALESFORCE_URL": "https://yourcompany.my.salesforce.com"}
NAMES = {"HUBSPOT": "HubSpot", "SALESFORCE": "Salesforce"}


@checks.register(checks.Tags.security, deploy=True)
def check_crm_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if not production():
        return []
    conf = settings.MARTECH_CRM
    errors: list[checks.CheckMessage] = []
    for key, emulator_value in CREDENTIALS.items():
        if conf[key] == emulator_value:
            errors.append(checks.Error(
                f"MARTECH_CRM_{key} still has the CRM emulator's public default {emulator_value!r}: "
                "anyone who reads the docs can use it.",
                hint=f"Set MARTECH_CRM_{key} to your {NAMES[key.split('_')[0]]} credential, "
                     "or to an empty value if you do not use that CRM.",
                id="martech.crm.E001",
            ))
    for key, example in URLS.items():
        if conf[key] and is_loopback_url(conf[key]):
            errors.append(checks.Error(
                f"MARTECH_CRM_{key}={conf[key]} points at this machine (the bundled emulator).",
                hint=f"Set MARTECH_CRM_{key} to the real service ({example}), or to an empty value if you do "
                     "not use that CRM.",
                id="martech.crm.E002",
            ))
    return errors
