"""Demo: a HubSpot connection pointed at the local emulator (scripts/run
starts it), each registered object type's default field mappings (contacts,
companies, tasks, and deals when attribution registered them) and lifecycle
values. Idempotent."""
from __future__ import annotations

from martech.crm import objects
from martech.crm.models import Connection, FieldMapping, LifecycleMapping
from martech.models import LifecycleStage

LIFECYCLE = [("subscriber", "subscriber"), ("lead", "lead"), ("marketingqualifiedlead", "mql"),
             ("salesqualifiedlead", "sql"), ("opportunity", "opportunity"), ("customer", "customer"),
             ("evangelist", "evangelist"), ("other", "other")]


def demo_seed(*, progress: bool) -> dict[str, int]:
    connection, created = Connection.objects.get_or_create(provider="hubspot", defaults={"name": "HubSpot (emulator)"})
    mappings = 0
    for obj in objects.all_types():
        for local, remote, kind, extra in obj.default_mappings.get(connection.provider, []):
            _, made = FieldMapping.objects.get_or_create(
                connection=connection, object=obj.key, remote_field=remote,
                defaults={"local_field": local, "kind": kind, **extra})
            mappings += made
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    values = 0
    for remote, key in LIFECYCLE:
        if key in stages:
            _, made = LifecycleMapping.objects.get_or_create(connection=connection, remote_value=remote,
                                                             defaults={"stage": stages[key]})
            values += made
    return {"crm connections": int(created), "crm field mappings": mappings, "crm lifecycle values": values}
