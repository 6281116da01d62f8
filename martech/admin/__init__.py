"""The ops console: one ModelAdmin module per area.

Importing the modules registers their admins with the default site.
"""
from martech.admin import (  # noqa: F401
    accounts,
    api_clients,
    captures,
    campaigns,
    consent,
    events,
    forms,
    identities,
    leads,
    notifications,
    quarantine,
    stages,
    tasks,
    topics,
    websites,
)
