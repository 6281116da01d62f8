"""Connectors: one module per provider behind one small interface (base.py)."""
from __future__ import annotations

from martech.crm.connectors.base import Connector


def connector_for(connection) -> Connector:
    if connection.provider == "hubspot":
        from martech.crm.connectors.hubspot import HubSpotConnector

        return HubSpotConnector(connection)
    if connection.provider == "salesforce":
        from martech.crm.connectors.salesforce import SalesforceConnector

        return SalesforceConnector(connection)
    raise NotImplementedError(f"No connector for provider {connection.provider!r} yet.")
