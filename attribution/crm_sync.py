"""The "deal" CRM object type: opportunities <-> HubSpot deals (and, through
the same registry, any connector that declares "deal").

Registered from AttributionConfig.ready, so martech (an earlier stage) never
imports attribution. Our services call ``hooks.records_changed("opportunities",
...)`` inside their transactions; the CRM outbox subscribes to that kind.

- Close date: HubSpot ``closedate`` and Salesforce ``CloseDate`` hold a
  closed deal's close and an open deal's expected close date, so the
  mapping of ``closed_at`` carries ``expected_close_date`` while the deal is
  open, both ways (``_close_date``, ``_close_fields``).
- Pushed: the mapped fields (name, amount as a Decimal string, closedate,
  dealstage through an editable picklist mapping {our stage key: CRM stage},
  owner), and associations to the account's company and the contact roles' contacts.
- Pulled: through ``opportunity_upsert`` (the one write path), found by the
  CRM id, the stage by the reverse of the same value map; the deal's company
  becomes the account and its contacts contact roles (``opportunity_set_contact``).
- Contact roles as records of their own (the ``contact_role`` link, for a
  connector that declares it: Salesforce OpportunityContactRole): pushed
  with the deal (role and primary flag hashed with it, so a change pushes the
  deal), pulled by their own cursor onto the deal's contacts.
"""
from __future__ import annotations

from datetime import datetime, time, timezone as dt_timezone
from typing import Any

from martech.crm.objects import Link, ObjectType, register

HOOK = "opportunities"
DELETION = "deal_deletion"


def deleted_here(*, provider: str, remote_id: str) -> bool:
    """Whether the deal with this CRM id was deleted here (a tombstone)."""
    from attribution.models import OpportunityDeletion

    return bool(remote_id) and OpportunityDeletion.objects.filter(connection__provider=provider, remote_id=remote_id
                                                                  ).exclude(status=OpportunityDeletion.Status.REMOTE
                                                                            ).exists()


def _close_date(opportunity):
    """What the CRM's close date carries (HubSpot ``closedate``, Salesforce
    ``CloseDate``): a closed deal's close, an open deal's expected close
    date (its own, as midnight UTC; none: nothing is sent, or the mapping's
    default)."""
    if opportunity.closed_at is not None:
        return opportunity.closed_at
    if opportunity.expected_close_date is not None:
        return datetime.combine(opportunity.expected_close_date, time.min, tzinfo=dt_timezone.utc)
    return None


def _close_fields(instance, data: dict[str, Any]) -> dict[str, Any]:
    """A pulled close date (under ``closed_at``, the mapping's local field)
    is the close of a deal in a closed stage and the expected close date of
    an open one: the stage is the pulled one, else the deal's. A CRM date
    (Salesforce) on the day of the deal's own close keeps that close time,
    so a pull never moves a close by hours (nor its credits)."""
    if "closed_at" not in data:
        return data
    from attribution.services import default_pipeline, stage_for

    value = data.pop("closed_at")
    if value is None:
        return data
    stage = data.get("stage")
    if stage:
        pipeline = instance.pipeline if instance is not None else default_pipeline()
        closed = stage_for(pipeline=pipeline, key=stage).is_closed
    else:
        closed = instance is not None and instance.stage.is_closed
    is_datetime = isinstance(value, datetime)
    if not closed:
        data["expected_close_date"] = value.astimezone(dt_timezone.utc).date() if is_datetime else value
    elif is_datetime:
        data["closed_at"] = value
    elif instance is None or instance.closed_at is None or instance.closed_at.astimezone(dt_timezone.utc).date() != value:
        data["closed_at"] = datetime.combine(value, time.min, tzinfo=dt_timezone.utc)
    return data


def _write(*, instance, data: dict[str, Any], source: str):
    from attribution.services import opportunity_upsert

    if instance is None:
        provider = source.removeprefix("crm:")
        column = DEAL.id_fields.get(provider, "")
        if deleted_here(provider=provider, remote_id=str(data.get(column) or "")):
            # Deleted here: the CRM's copy (not deleted there yet, or kept by a
            # pull-only connection) is not created again. Skipped, not a failure.
            return None
    data = _close_fields(instance, dict(data))
    if instance is None and not data.get("name"):
        # A new deal needs a name; HubSpot allows an empty dealname.
        data["name"] = f"Deal {next((v for k, v in data.items() if k.endswith('_id') and v), '')}".strip()
    opportunity, _ = opportunity_upsert(data=data, source=source, opportunity=instance)
    return opportunity


def _apply_associations(*, instance, linked: dict[str, list], source: str) -> None:
    """A pulled deal's contacts become contact roles (added here; a contact
    the CRM dropped since the last sync is removed by _remove_associations,
    never one it simply does not have: a role added here and not pushed yet)."""
    from attribution.services import opportunity_set_contact

    have = set(instance.contact_roles.values_list("lead_id", flat=True))
    for lead in linked.get("contact", []):
        if lead.pk not in have:
            opportunity_set_contact(opportunity=instance, lead=lead, source=source)


def _contact_role_details(opportunity) -> dict[int, dict[str, Any]]:
    """Per contact role's lead: its role and primary flag (Salesforce
    OpportunityContactRole Role and IsPrimary)."""
    return {lead_id: {"role": role, "is_primary": is_primary} for lead_id, role, is_primary in
            opportunity.contact_roles.order_by("lead_id").values_list("lead_id", "role", "is_primary")}


def _contact_role_apply(*, parent, other, fields: dict[str, Any], remote_id: str, modified_at: str,
                        source: str) -> None:
    """A contact role added or changed in the CRM: the lead's role on the
    opportunity through opportunity_set_contact (a new primary demotes the
    old one; idempotent)."""
    from attribution.services import opportunity_set_contact

    opportunity_set_contact(opportunity=parent, lead=other, role=str(fields.get("role") or ""),
                            is_primary=bool(fields.get("is_primary")), source=source)


def _contact_role_remove(*, parent, other, remote_id: str, deleted_at, source: str) -> bool:
    """A contact role deleted in the CRM: the lead's role comes off the deal
    (opportunity_remove_contact; the deal's other roles stay)."""
    from attribution.services import opportunity_remove_contact

    if parent is None or other is None:
        return False
    return opportunity_remove_contact(opportunity=parent, lead=other, source=source)


def _remove_associations(*, instance, removed: dict[str, list], source: str) -> None:
    """Links the CRM dropped since the last sync (HubSpot: a contact taken
    off the deal, the deal's company removed): the contact's role is
    removed, and the account cleared when it is the company removed there
    (a deal moved to another company already took the new one)."""
    from attribution.services import opportunity_remove_contact, opportunity_upsert

    for lead in removed.get("contact", []):
        opportunity_remove_contact(opportunity=instance, lead=lead, source=source)
    if instance.account_id and instance.account_id in {a.pk for a in removed.get("company", [])}:
        opportunity_upsert(data={"account": None}, opportunity=instance, source=source)


def _remote_deleted(*, instance, remote_id: str, deleted_at, source: str) -> bool:
    """A deal deleted (archived) in the CRM: deleted here too, with its
    credits and its part of the rollup (``opportunity_delete``; the
    deletion is logged with the CRM as its source). Not when the deal holds
    another CRM id for that provider by now."""
    from attribution.services import opportunity_delete

    provider = source.removeprefix("crm:")
    if getattr(instance, DEAL.id_field(provider), None) != remote_id:
        return False
    return opportunity_delete(opportunity=instance, source=source)["opportunities"] == 1


def deal_deletions_push(connection, connector, builder, items, run) -> None:
    """The drain's push of claimed "deal_deletion" rows: the CRM ids
    deleted in batches (``connector.records_delete``: HubSpot batch
    archive, 100 a call; Salesforce Collections delete, 200 a call). An id
    the CRM no longer has is what we wanted (done)."""
    from django.utils import timezone

    from attribution.models import OpportunityDeletion
    from martech.crm import services
    from martech.crm.connectors.base import AuthError, PermanentError, RateLimited, TransientError

    rows = OpportunityDeletion.objects.in_bulk([i.local_id for i in items])
    todo, finished = [], []
    for item in items:
        row = rows.get(item.local_id)
        if row is None or row.connection_id != connection.pk or row.status != OpportunityDeletion.Status.PENDING:
            finished.append(item)  # done already (a redelivery)
            run.skipped += 1
        else:
            todo.append((item, row))
    if finished:
        services._finish(connection, builder.obj, finished)
    if not todo:
        return
    before = connector.stats.api_calls
    try:
        outcome = connector.records_delete("deal", [row.remote_id for _, row in todo])
    except AuthError:
        services._count_calls(connection, connector.stats.api_calls - before)
        services._release([item for item, _ in todo])
        raise
    except RateLimited as exc:
        services._count_calls(connection, connector.stats.api_calls - before)
        services._release([item for item, _ in todo], at=services._pause_for(connection, exc))
        raise
    except (TransientError, PermanentError) as exc:
        services._count_calls(connection, connector.stats.api_calls - before)
        services._fail([item for item, _ in todo], f"deal delete: {exc}")
        run.failed += len(todo)
        return
    services._count_calls(connection, connector.stats.api_calls - before)
    done, failed = [], []
    for item, row in todo:
        error = outcome.get(row.remote_id, "")
        if error:
            services._fail([item], f"deal {row.remote_id} ({row.name}): {error}")
            failed.append(item)
        else:
            done.append(row.pk)
            run.pushed += 1
    run.failed += len(failed)
    OpportunityDeletion.objects.filter(pk__in=done).update(status=OpportunityDeletion.Status.DONE,
                                                           done_at=timezone.now())
    settled = set(done)
    services._finish(connection, builder.obj, [item for item, row in todo if row.pk in settled])


def _no_write(*, instance, data, source):
    from django.core.exceptions import ValidationError

    raise ValidationError({DELETION: ["Deal deletions are pushed, never pulled."]})


CONTACT_ROLE = Link(key="contact_role", label="Opportunity contact role", other="contact",
                    details=_contact_role_details, apply=_contact_role_apply, removable=True,
                    remove=_contact_role_remove)


def _associations(opportunity) -> dict[str, list[int]]:
    return {
        "company": [opportunity.account_id] if opportunity.account_id else [],
        "contact": sorted(opportunity.contact_roles.values_list("lead_id", flat=True)),
    }


# Our default pipeline's stages -> HubSpot's default sales pipeline stage ids
# (an editable picklist mapping: marketing ops change it in the admin).
HUBSPOT_STAGES = {"prospecting": "appointmentscheduled", "qualification": "qualifiedtobuy",
                  "proposal": "presentationscheduled", "negotiation": "contractsent",
                  "closed_won": "closedwon", "closed_lost": "closedlost"}
HUBSPOT_MAPPINGS = [
    ("name", "dealname", "text", {}),
    ("amount", "amount", "number", {}),
    ("currency", "deal_currency_code", "text", {}),
    ("stage", "dealstage", "picklist", {"value_map": HUBSPOT_STAGES}),
    # The close: a closed deal's close time, an open deal's expected close date (_close_date, _close_fields).
    ("closed_at", "closedate", "datetime", {}),
    ("owner", "hubspot_owner_id", "text", {}),
]

# Salesforce Opportunity: StageName through our default pipeline's stage keys;
# CloseDate (required there) is a closed deal's close day and an open deal's
# expected close date, both ways; an open deal without one sends a far date
# (the default, never pulled back into it).
SALESFORCE_STAGES = {"prospecting": "Prospecting", "qualification": "Qualification",
                     "proposal": "Proposal/Price Quote", "negotiation": "Negotiation/Review",
                     "closed_won": "Closed Won", "closed_lost": "Closed Lost"}
SALESFORCE_MAPPINGS = [
    ("name", "Name", "text", {}),
    ("amount", "Amount", "number", {}),
    ("stage", "StageName", "picklist", {"value_map": SALESFORCE_STAGES}),
    ("closed_at", "CloseDate", "date", {"default": "2099-12-31"}),
    ("owner", "OwnerId", "text", {"direction": "push"}),
]

DEAL = ObjectType(
    key="deal",
    label="Deal / Opportunity",
    model="attribution.Opportunity",
    hook=HOOK,
    write=_write,
    select_related=("stage", "owner", "account"),
    associations=_associations,
    association_fields={"company": "account"},
    apply_associations=_apply_associations,
    remove_associations=_remove_associations,
    links=(CONTACT_ROLE,),
    # Associations are not mapped fields, but changing them must push.
    # (and the expected close date, which goes as the close date of an open deal).
    extra_trigger_fields=frozenset({"account", "contacts", "expected_close_date"}),
    readers={"stage": lambda o: o.stage.key, "pipeline": lambda o: o.pipeline.key, "closed_at": _close_date},
    order=60,
    default_mappings={"hubspot": HUBSPOT_MAPPINGS, "salesforce": SALESFORCE_MAPPINGS},
    remote_deleted=_remote_deleted,
)
# Deals deleted here, deleted in the CRM: after every upsert of the drain.
DEAL_DELETION = ObjectType(key=DELETION, label="Deal deletion (CRM delete)", model="attribution.OpportunityDeletion",
                           hook="opportunity_deletions", write=_no_write, order=98, push=deal_deletions_push)


def register_deal() -> None:
    register(DEAL)
    register(DEAL_DELETION)
