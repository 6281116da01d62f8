"""The credentials the bundled CRM emulators accept. They are the settings'
defaults for the embedded quick start, and public (docs/configuration.md prints them),
so a production site must never run with them: ``check --deploy`` refuses
them (martech/crm/checks.py). Keys are those of ``settings.MARTECH_CRM``;
the environment variable of each is ``MARTECH_CRM_<key>``.

Plain constants: settings.py imports this module before Django is set up."""

CREDENTIALS = {
    "HUBSPOT_TOKEN": "emulator-token",
    "HUBSPOT_APP_SECRET": "emulator-secret",
    "SALESFORCE_ACCESS_TOKEN": "emulator-session",
    "SALESFORCE_REFRESH_TOKEN": "emulator-refresh",
    "SALESFORCE_CLIENT_ID": "emulator-client",
    "SALESFORCE_CLIENT_SECRET": "emulator-secret",
}

# The emulators listen this far above the site's port (MARTECH_PORT, 8000 by
# default: HubSpot on 8471, Salesforce on 8472), so one variable moves all three.
HUBSPOT_PORT_OFFSET = 471
SALESFORCE_PORT_OFFSET = 472
