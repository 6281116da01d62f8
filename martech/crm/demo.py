"""Demo: a HubSpot connection pointed at the local emulator (scripts/run
starts it), default field mappings and lifecycle values. Idempotent."""
from __future__ import annotations

from martech.crm.models import Connection, FieldMapping, LifecycleMapping
from martech.models import LifecycleStage

DEFAULT_MAPPINGS = [
    # local field, remote field, kind, extra
    ("email", "email", "text", {}),
    ("first_name", "firstname", "text", {}),
    ("last_name", "lastname", "text", {}),
    ("job_title", "jobtitle", "text", {"system_of_record": "remote"}),
    ("company_name", "company", "text", {}),
    ("country", "country", "text", {}),
    ("lifecycle_stage", "lifecyclestage", "text", {}),
    ("owner", "hubspot_owner_id", "text", {"direction": "push"}),
    ("total_score", "hubspotscore", "number", {"direction": "push"}),
]
LIFECYCLE = [("subscriber", "subscriber"), ("lead", "lead"), ("marketingqualifiedlead", "mql"),
             ("salesqualifiedlead", "sql"), ("opportunity", "opportunity"), ("customer", "customer"),
             ("evangelist", "evangelist"), ("other", "other")]


def demo_seed(*, progress: bool) -> dict[str, int]:
    connection, created = Connection.objects.get_or_create(provider="hubspot", defaults={"name": "HubSpot (emulator)"})
    mappings = 0
    for local, remote, kind, extra in DEFAULT_MAPPINGS:
        _, made = FieldMapping.objects.get_or_create(
            connection=connection, object="contact", remote_field=remote,
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
