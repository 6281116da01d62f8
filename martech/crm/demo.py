"""Demo: a HubSpot and a Salesforce connection pointed at the local
emulators (scripts/run starts both), default field mappings and lifecycle
values. Idempotent."""
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


# Salesforce Lead fields (a Contact gets MailingCountry and no Company/Status,
# see connectors/salesforce.py). LastName and Company are required by
# Salesforce on a Lead, hence the defaults.
SALESFORCE_MAPPINGS = [
    ("email", "Email", "text", {}),
    ("first_name", "FirstName", "text", {}),
    ("last_name", "LastName", "text", {"default": "Unknown"}),
    ("job_title", "Title", "text", {"system_of_record": "remote"}),
    ("company_name", "Company", "text", {"default": "[not provided]"}),
    ("country", "Country", "text", {}),
    ("lifecycle_stage", "Status", "text", {}),
    ("owner", "OwnerId", "text", {"direction": "push"}),
    # Account, Opportunity (StageName through our default pipeline's keys) and Campaign.
    ("name", "Name", "text", {"object": "company"}),
    ("domain", "Website", "text", {"object": "company"}),
    ("industry", "Industry", "text", {"object": "company", "system_of_record": "remote"}),
    ("name", "Name", "text", {"object": "deal"}),
    ("amount", "Amount", "number", {"object": "deal"}),
    ("stage", "StageName", "picklist", {"object": "deal", "value_map": {
        "prospecting": "Prospecting", "qualification": "Qualification", "proposal": "Proposal/Price Quote",
        "negotiation": "Negotiation/Review", "closed_won": "Closed Won", "closed_lost": "Closed Lost"}}),
    ("closed_at", "CloseDate", "date", {"object": "deal", "default": "2099-12-31", "direction": "push"}),
    ("name", "Name", "text", {"object": "campaign"}),
    ("start_date", "StartDate", "date", {"object": "campaign"}),
    ("end_date", "EndDate", "date", {"object": "campaign"}),
    ("budget", "BudgetedCost", "number", {"object": "campaign"}),
]
# Salesforce's default Lead Status picklist -> our stages.
SALESFORCE_STATUSES = [("Open - Not Contacted", "lead"), ("Working - Contacted", "mql"), ("Qualified", "sql"),
                       ("Closed - Converted", "customer")]


def demo_seed(*, progress: bool) -> dict[str, int]:
    counts = {"crm connections": 0, "crm field mappings": 0, "crm lifecycle values": 0}
    for provider, name, mapping_rows, lifecycle in [
        ("hubspot", "HubSpot (emulator)", DEFAULT_MAPPINGS, LIFECYCLE),
        ("salesforce", "Salesforce (emulator)", SALESFORCE_MAPPINGS, SALESFORCE_STATUSES),
    ]:
        for key, n in _seed_connection(provider, name, mapping_rows, lifecycle).items():
            counts[key] += n
    return counts


def _seed_connection(provider, name, mapping_rows, lifecycle) -> dict[str, int]:
    connection, created = Connection.objects.get_or_create(provider=provider, defaults={"name": name})
    mappings = 0
    for local, remote, kind, extra in mapping_rows:
        extra = dict(extra)
        _, made = FieldMapping.objects.get_or_create(
            connection=connection, object=extra.pop("object", "contact"), remote_field=remote,
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
