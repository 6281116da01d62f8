"""Demo: a HubSpot and a Salesforce connection pointed at the local
emulators (scripts/run starts both), each registered object type's default
field mappings for that provider (contacts, companies, tasks, campaigns, and
deals when attribution registered them) and lifecycle values. Idempotent:
a connection's mappings and lifecycle values are written in the transaction
that creates it and never again, so a default mapping ops deleted stays
deleted."""
from __future__ import annotations

from django.db import transaction

from martech.crm import objects
from martech.crm.models import Connection, FieldMapping, LifecycleMapping
from martech.models import LifecycleStage

LIFECYCLE = [("subscriber", "subscriber"), ("lead", "lead"), ("marketingqualifiedlead", "mql"),
             ("salesqualifiedlead", "sql"), ("opportunity", "opportunity"), ("customer", "customer"),
             ("evangelist", "evangelist"), ("other", "other")]
# Salesforce's default Lead Status picklist -> our stages.
SALESFORCE_STATUSES = [("Open - Not Contacted", "lead"), ("Working - Contacted", "mql"), ("Qualified", "sql"),
                       ("Closed - Converted", "customer")]
CONNECTIONS = [("hubspot", "HubSpot (emulator)", LIFECYCLE),
               ("salesforce", "Salesforce (emulator)", SALESFORCE_STATUSES)]


def demo_seed(*, progress: bool) -> dict[str, int]:
    counts = {"crm connections": 0, "crm field mappings": 0, "crm lifecycle values": 0}
    for provider, name, lifecycle in CONNECTIONS:
        for key, n in _seed_connection(provider, name, lifecycle).items():
            counts[key] += n
    return counts


@transaction.atomic
def _seed_connection(provider: str, name: str, lifecycle: list[tuple[str, str]]) -> dict[str, int]:
    connection, created = Connection.objects.get_or_create(provider=provider, defaults={"name": name})
    if not created:
        return {"crm connections": 0, "crm field mappings": 0, "crm lifecycle values": 0}
    mappings = 0
    for obj in objects.all_types():
        for local, remote, kind, extra in obj.default_mappings.get(provider, []):
            _, made = FieldMapping.objects.get_or_create(
                connection=connection, object=obj.key, remote_field=remote,
                defaults={"local_field": local, "kind": kind, **extra})
            mappings += made
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    values = 0
    for remote, key in lifecycle:
        if key in stages:
            _, made = LifecycleMapping.objects.get_or_create(connection=connection, remote_value=remote,
                                                             defaults={"stage": stages[key]})
            values += made
    return {"crm connections": int(created), "crm field mappings": mappings, "crm lifecycle values": values}
