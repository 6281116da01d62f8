"""martech's own CRM object types: leads (contact), accounts (company) and
sales tasks (task). Registered from CrmConfig.ready; attribution registers
"deal" the same way (attribution/crm_sync.py)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from martech.crm.objects import Link, ObjectType, register


def _lead_write(*, instance, data: dict[str, Any], source: str):
    from martech.services.leads import SubjectErased, lead_upsert

    # No ``lead=``: lead_upsert finds the row by email, else CRM id (the capture dedupe path).
    try:
        lead, _ = lead_upsert(data=data, source=source)
    except SubjectErased:
        # An erased person pulled again (the CRM still has them, or a webhook
        # names them): skipped, not a pull failure to retry (the pull counts it).
        return None
    return lead


def _leads_write_many(*, items: list[tuple[Any, dict[str, Any]]], source: str) -> list:
    """A pulled page of leads through ``lead_upsert_many``: each found by
    email, else CRM id, like ``_lead_write``; one refused by
    ``clean_lead_data`` (or naming an unknown stage) is its ValidationError
    and the others are written. An erased person (``lead_upsert_many``
    writes nothing for them: its entry is None) is skipped, as
    ``_lead_write`` skips them."""
    from django.conf import settings

    from martech.models import LifecycleStage
    from martech.services.leads import CRM_KEYS, LeadInput, clean_lead_data, lead_upsert_many

    stages = {s.key: s for s in LifecycleStage.objects.all()}
    out: list = [None] * len(items)
    rows, at = [], []
    for n, (_instance, data) in enumerate(items):
        try:
            cleaned = clean_lead_data(data)
            if not cleaned.get("email") and not any(cleaned.get(k) for k in CRM_KEYS):
                raise ValidationError({"email": ["An email (or a CRM id) is required."]})
            key = cleaned.pop("lifecycle_stage", None)
            if key and key not in stages:
                raise ValidationError({"lifecycle_stage": f"Unknown lifecycle stage {key!r}."})
        except ValidationError as exc:
            out[n] = exc
            continue
        rows.append(LeadInput(cleaned=cleaned, stage=stages[key] if key else None))
        at.append(n)
    if rows:
        result = lead_upsert_many(rows=rows, source=source,
                                  default_stage=stages.get(settings.MARTECH["DEFAULT_LIFECYCLE_STAGE"]))
        for n, lead in zip(at, result.leads):
            out[n] = lead
    return out


def _account_write(*, instance, data: dict[str, Any], source: str):
    from martech.services.accounts import account_upsert

    account, _ = account_upsert(data=data, account=instance, source=source)
    return account


def _task_write(*, instance, data: dict[str, Any], source: str):
    """A pulled task.

    One we do not have (made in the CRM) becomes a local task through
    ``task_create``, idempotent by its CRM id (the key ``<source>:task:<id>``,
    and the id column the next pull finds it by): subject, body, due date,
    owner (the pull mapped the CRM owner to a user: routing's reps, else the
    owner's email), status, and the lead its associated contact (HubSpot) or
    ``WhoId`` (Salesforce) is here. No such lead: a ValidationError naming
    ``lead``: the run counts it failed with that error (a full pull, or the
    task's next change in the CRM, brings it again once the contact is here).

    One of ours takes what the pull's system-of-record rule let through, but
    only subject and description, and a completion: the due date does not
    round-trip (HubSpot requires ``hs_timestamp``, so a task with no due date
    goes with its creation time; Salesforce's ``ActivityDate`` is a day), the
    owner changes here through routing or by hand, and the lead is the one
    the task was made for (a lead changed here is pushed, not pulled)."""
    import datetime as dt

    from django.core.exceptions import ValidationError

    from martech.models import SalesTask
    from martech.services.tasks import CRM_ID_FIELDS, task_complete, task_create, task_update

    if instance is None:
        crm_ids = {k: v for k, v in data.items() if k in CRM_ID_FIELDS and v}
        remote_id = next(iter(crm_ids.values()), "")
        if data.get("lead") is None:
            raise ValidationError({"lead": [f"The CRM task {remote_id} is associated with no contact or lead "
                                            "known here; pull that contact first."]})
        due_at = data.get("due_at")
        if isinstance(due_at, dt.date) and not isinstance(due_at, dt.datetime):
            due_at = dt.datetime.combine(due_at, dt.time.min, tzinfo=dt.timezone.utc)  # a CRM date: that UTC day
        status = data.get("status") or SalesTask.Status.OPEN
        task, _ = task_create(
            key=f"{source}:task:{remote_id}", lead=data["lead"], source=source,
            # HubSpot allows a task with no subject; ours need one.
            subject=data.get("subject") or f"CRM task {remote_id}", description=data.get("description") or "",
            due_at=due_at, owner=data.get("owner"), crm_ids=crm_ids,
            status=SalesTask.Status.CANCELLED if status == SalesTask.Status.CANCELLED else SalesTask.Status.OPEN)
        if status == SalesTask.Status.DONE:
            task_complete(task=task, source=source, at=data.get("completed_at"))
        return task
    edits = {k: data[k] for k in ("subject", "description") if data.get(k) is not None}
    if edits:
        task_update(task=instance, data=edits, source=source)
    if data.get("status") == SalesTask.Status.DONE and instance.status == SalesTask.Status.OPEN:
        task_complete(task=instance, source=source, at=data.get("completed_at"))
    return instance


def _campaign_write(*, instance, data: dict[str, Any], source: str):
    from martech.models import Campaign
    from martech.services.campaigns import campaign_save

    campaign = instance or Campaign()
    for key, value in data.items():
        if key not in {f.name for f in Campaign._meta.concrete_fields} or key in ("id", "created_at", "updated_at"):
            raise ValidationError({key: ["Not a writable campaign field."]})
        setattr(campaign, key, value)
    if not campaign.name:
        raise ValidationError({"name": ["A campaign pulled from the CRM needs a name."]})
    return campaign_save(campaign=campaign, source=source)


def _campaign_members(campaign) -> dict[str, list[int]]:
    """A campaign's members are the leads with a touch (an event) attributed
    to it: pushed as Salesforce CampaignMembers."""
    from martech.services.campaigns import campaign_member_events

    return {"contact": sorted(set(campaign_member_events(campaign=campaign).values_list("lead_id", flat=True)))}


def _campaign_member_details(campaign) -> dict[int, dict[str, Any]]:
    """Per member lead, whether it responded (pushed as the CampaignMember's
    Status; see services.campaigns.campaign_member_statuses)."""
    from martech.services.campaigns import campaign_member_statuses

    return {lead_id: {"responded": responded}
            for lead_id, responded in campaign_member_statuses(campaign=campaign).items()}


def _campaign_member_apply(*, parent, other, fields: dict[str, Any], remote_id: str, modified_at: str,
                           source: str) -> None:
    """A member pulled from the CRM becomes a ``campaign_member_added`` touch
    on the campaign (campaign_member_record: one event per member id)."""
    from martech.crm.transforms import TransformError, to_local
    from martech.services.campaigns import campaign_member_record

    try:
        at = to_local("datetime", fields.get("joined_at") or modified_at)
    except TransformError as exc:
        raise ValidationError({"joined_at": [str(exc)]}) from None
    campaign_member_record(campaign=parent, lead=other, member_id=remote_id, source=source,
                           status=str(fields.get("status") or ""), has_responded=bool(fields.get("has_responded")),
                           at=at)


def _campaign_member_remove(*, parent, other, remote_id: str, deleted_at, source: str) -> bool:
    """A member deleted in the CRM: its membership event is marked removed
    (kept as the touch it was; see campaign_member_remove)."""
    from martech.services.campaigns import campaign_member_remove

    return campaign_member_remove(member_id=remote_id, source=source, at=deleted_at)


CAMPAIGN_MEMBER = Link(key="campaign_member", label="Campaign member", other="contact",
                       details=_campaign_member_details, apply=_campaign_member_apply,
                       remove=_campaign_member_remove)


def _task_associations(task) -> dict[str, list[int]]:
    return {"contact": [task.lead_id]}


CONTACT_MAPPINGS = [
    ("email", "email", "text", {}),
    ("first_name", "firstname", "text", {}),
    ("last_name", "lastname", "text", {}),
    ("job_title", "jobtitle", "text", {"system_of_record": "remote"}),
    ("company_name", "company", "text", {}),
    ("country", "country", "text", {}),
    ("lifecycle_stage", "lifecyclestage", "text", {}),
    ("owner", "hubspot_owner_id", "text", {"direction": "push"}),
    # Not hubspotscore: HubSpot computes that one and refuses writes (READ_ONLY_VALUE).
    # martech_score is a custom number property the connection check asks to create.
    ("total_score", "martech_score", "number", {"direction": "push"}),
]
COMPANY_MAPPINGS = [
    ("domain", "domain", "text", {}),
    ("name", "name", "text", {}),
    ("industry", "industry", "text", {"system_of_record": "remote"}),
    ("employee_count", "numberofemployees", "number", {}),
    ("annual_revenue", "annualrevenue", "number", {}),
    ("country", "country", "text", {}),
    ("owner", "hubspot_owner_id", "text", {}),
]
# Salesforce Lead fields (a Contact gets MailingCountry and no Company/Status,
# see connectors/salesforce.py). LastName and Company are required by
# Salesforce on a Lead, hence the defaults.
SALESFORCE_CONTACT_MAPPINGS = [
    ("email", "Email", "text", {}),
    ("first_name", "FirstName", "text", {}),
    ("last_name", "LastName", "text", {"default": "Unknown"}),
    ("job_title", "Title", "text", {"system_of_record": "remote"}),
    ("company_name", "Company", "text", {"default": "[not provided]"}),
    ("country", "Country", "text", {}),
    ("lifecycle_stage", "Status", "text", {}),
    ("owner", "OwnerId", "text", {"direction": "push"}),
]
SALESFORCE_ACCOUNT_MAPPINGS = [
    ("name", "Name", "text", {}),
    ("domain", "Website", "text", {}),
    ("industry", "Industry", "text", {"system_of_record": "remote"}),
    ("employee_count", "NumberOfEmployees", "number", {}),
]
SALESFORCE_CAMPAIGN_MAPPINGS = [
    ("name", "Name", "text", {}),
    ("start_date", "StartDate", "date", {}),
    ("end_date", "EndDate", "date", {}),
    ("budget", "BudgetedCost", "number", {}),
]
TASK_STATUS = {"open": "NOT_STARTED", "done": "COMPLETED", "cancelled": "DEFERRED"}
# Both ways: a task made in the CRM is created here with all of these; a task
# of ours takes only subject, description and a completion back (_task_write).
TASK_MAPPINGS = [
    ("subject", "hs_task_subject", "text", {}),
    ("description", "hs_task_body", "text", {}),
    ("due_at", "hs_timestamp", "datetime", {}),
    ("status", "hs_task_status", "picklist", {"value_map": TASK_STATUS, "system_of_record": "remote"}),
    ("owner", "hubspot_owner_id", "text", {}),
]
# Salesforce Task: the same task type, Salesforce's fields. The lead goes as
# WhoId (the association to the contact, connectors/salesforce.py LOOKUPS),
# our id as Martech_Id__c. A Task Salesforce reports closed (IsClosed) is
# pulled as "Completed" whatever the org calls its closed status.
SALESFORCE_TASK_STATUS = {"open": "Not Started", "done": "Completed", "cancelled": "Deferred"}
SALESFORCE_TASK_MAPPINGS = [
    ("subject", "Subject", "text", {}),
    ("description", "Description", "text", {}),
    ("due_at", "ActivityDate", "date", {}),
    ("status", "Status", "picklist", {"value_map": SALESFORCE_TASK_STATUS, "system_of_record": "remote"}),
    ("owner", "OwnerId", "text", {}),
]


def register_core() -> None:
    register(ObjectType(key="contact", label="Contact / Lead", model="martech.Lead", hook="leads",
                        write=_lead_write, write_many=_leads_write_many, key_field="email",
                        select_related=("owner", "lifecycle_stage"),
                        id_fields={"hubspot": "hubspot_id", "salesforce": "salesforce_lead_id"},
                        id_prefixes={"salesforce": {"003": "salesforce_contact_id", "00Q": "salesforce_lead_id"}},
                        order=20, default_mappings={"hubspot": CONTACT_MAPPINGS,
                                                    "salesforce": SALESFORCE_CONTACT_MAPPINGS}))
    register(ObjectType(key="company", label="Company / Account", model="martech.Account", hook="accounts",
                        write=_account_write, key_field="domain", select_related=("owner",), order=10,
                        default_mappings={"hubspot": COMPANY_MAPPINGS, "salesforce": SALESFORCE_ACCOUNT_MAPPINGS}))
    register(ObjectType(key="campaign", label="Campaign (and its members)", model="martech.Campaign",
                        hook="campaigns", write=_campaign_write, associations=_campaign_members, order=30,
                        links=(CAMPAIGN_MEMBER,),
                        default_mappings={"salesforce": SALESFORCE_CAMPAIGN_MAPPINGS}))
    register(ObjectType(key="task", label="Task", model="martech.SalesTask", hook="tasks", write=_task_write,
                        select_related=("owner", "lead"), associations=_task_associations, order=90,
                        # HubSpot requires hs_timestamp (the due date): a task without one is due when made.
                        readers={"due_at": lambda t: t.due_at or t.created_at},
                        # Pulled: the task's contact (HubSpot) or WhoId (Salesforce) is the lead of a task
                        # made in the CRM.
                        association_fields={"contact": "lead"},
                        extra_trigger_fields=frozenset({"lead"}),
                        default_mappings={"hubspot": TASK_MAPPINGS, "salesforce": SALESFORCE_TASK_MAPPINGS}))
