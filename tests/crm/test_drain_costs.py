"""What a drain pays for before its first record: the HTTP clients are the
thread's (built once, their kept-alive connections reused), the payloads'
configuration is the process's (read once, read again when it changes).
Its queries per batch: test_sync_queries.py."""
from __future__ import annotations

import threading

import pytest
from django.db import connection as db
from django.test.utils import CaptureQueriesContext

from martech import configcache
from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.connectors.salesforce import SalesforceConnector
from martech.crm.models import CrmOwner
from martech.crm.services import PayloadBuilder
from martech.models import Lead

pytestmark = pytest.mark.django_db


def test_hubspot_api_objects_are_built_once_per_thread(connection, monkeypatch):
    import hubspot.discovery.discovery_base as base

    from martech.crm.connectors import hubspot as hubspot_connector

    monkeypatch.setattr(hubspot_connector, "_apis", threading.local())  # none built yet in this thread
    built = []
    factory = base.DiscoveryBase._default_api_factory
    monkeypatch.setattr(base.DiscoveryBase, "_default_api_factory",
                        staticmethod(lambda *args: built.append(args[1]) or factory(*args)))
    first = HubSpotConnector(connection).client.crm.contacts.batch_api
    again = HubSpotConnector(connection).client.crm.contacts.batch_api
    assert first is again and built.count("BatchApi") == 1
    other = []
    thread = threading.Thread(target=lambda: other.append(HubSpotConnector(connection).client.crm.contacts.batch_api))
    thread.start()
    thread.join()
    # Another thread (a pull's read-ahead) has its own: an API object keeps its last response's headers.
    assert other[0] is not first


def test_salesforce_connectors_of_a_thread_share_one_connection_pool(sf_connection, settings):
    one, two = SalesforceConnector(sf_connection), SalesforceConnector(sf_connection)
    assert one.session is not two.session  # each its own hooks and token
    assert one.session.get_adapter("https://x.example") is two.session.get_adapter("https://x.example")


def test_payload_configuration_is_read_once_and_a_saved_change_is_seen(connection):
    lead = Lead.objects.create(email="ann@example.org", first_name="Ann", job_title="")
    with configcache.snapshot():
        PayloadBuilder(connection)
    with CaptureQueriesContext(db) as ctx, configcache.snapshot():
        builder = PayloadBuilder(connection)
    assert len(ctx.captured_queries) == 1, ctx.captured_queries  # the tokens, nothing else
    assert "jobtitle" not in builder.payload(lead)
    mapping = connection.mappings.get(local_field="job_title")
    mapping.default = "Unknown"
    mapping.save()  # the admin's save
    assert PayloadBuilder(connection).payload(lead)["jobtitle"] == "Unknown"
    CrmOwner.objects.create(connection=connection, remote_id="77", email="Rep@Example.org")
    assert PayloadBuilder(connection).owner_by_email == {"rep@example.org": "77"}
