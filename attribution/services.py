"""Writes of the attribution app. Every opportunity create, update and stage
move goes through here: the API, the CSV import and the CRM sync share it.
"""
from __future__ import annotations

import logging
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from attribution.models import (
    CampaignSpend, Opportunity, OpportunityContactRole, OpportunityDeletion, OpportunityStage, OpportunityStageChange,
    Pipeline, closed_before_created,
)
from martech import hooks, signals
from martech.models import Campaign, Lead

log = logging.getLogger(__name__)

CRM_KEYS = ("salesforce_id", "hubspot_id")
OPPORTUNITY_FIELDS = frozenset(
    {"name", "account", "amount", "currency", "pipeline", "stage", "created_at", "closed_at", "source", "owner",
     "expected_close_date", "probability", *CRM_KEYS}
)


def default_pipeline() -> Pipeline:
    pipeline = Pipeline.objects.filter(is_default=True).first() or Pipeline.objects.order_by("id").first()
    if pipeline is None:
        raise ValidationError({"pipeline": ["No pipeline exists; create one first."]})
    return pipeline


def stage_for(*, pipeline: Pipeline, key: str | OpportunityStage) -> OpportunityStage:
    if isinstance(key, OpportunityStage):
        if key.pipeline_id != pipeline.pk:
            raise ValidationError({"stage": [f"Stage {key.key!r} is not in pipeline {pipeline.key!r}."]})
        return key
    try:
        return pipeline.stages.get(key=key)
    except OpportunityStage.DoesNotExist:
        raise ValidationError({"stage": [f"Unknown stage {key!r} in pipeline {pipeline.key!r}."]}) from None


def _announce(opportunity: Opportunity, kind: str) -> None:
    """Tell other apps (lifecycle automation) after commit: kind is
    created, won or lost. Also queues the recompute of its credits."""
    def send() -> None:
        lead_ids = list(opportunity.contact_roles.values_list("lead_id", flat=True))
        signals.opportunity_changed.send(
            sender=Opportunity, opportunity_id=opportunity.pk, lead_ids=lead_ids, kind=kind
        )

    transaction.on_commit(send)
    attribution_recompute_queue(opportunity_id=opportunity.pk)


class _Recompute:
    """The on-commit callback that queues one opportunity's recompute. A
    class, so a second change in the same transaction can find the pending
    one and not queue the same work twice."""

    def __init__(self, opportunity_id: int) -> None:
        self.opportunity_id = opportunity_id
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        async_task("attribution.tasks.opportunity_attribute", self.opportunity_id, group="attribution")


def attribution_recompute_queue(*, opportunity_id: int) -> None:
    """Queue the recompute of one opportunity's credits when the writing
    transaction commits (never on a rollback). Called by every change that
    moves credits: creation, amount or currency, creation or close date,
    stage, contact roles. Once per opportunity per transaction: a pending
    callback for it (still registered, so not rolled back) is reused. The
    task replaces the rows, so a redelivery is harmless."""
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        # run_on_commit holds (savepoint ids, func, robust); a savepoint rollback removes its entries.
        for entry in connection.run_on_commit:
            func = entry[1]
            if isinstance(func, _Recompute) and func.opportunity_id == opportunity_id and not func.ran:
                return
    transaction.on_commit(_Recompute(opportunity_id))


# Changing one of these moves the opportunity's credits (amounts, the lookback window, won/lost dates).
CREDIT_FIELDS = ("amount", "currency", "created_at", "closed_at")


@transaction.atomic
def opportunity_upsert(
    *,
    data: dict[str, Any],
    source: str,
    actor=None,
    opportunity: Opportunity | None = None,
) -> tuple[Opportunity, bool]:
    """Create or update an opportunity, found by ``opportunity`` (an edit by
    id) or else by a CRM id in ``data``. ``pipeline`` and ``stage`` may be
    keys or instances. A stage change goes through opportunity_change_stage.
    Unknown fields are refused naming the field. Returns (opportunity, created)."""
    unknown = sorted(set(data) - OPPORTUNITY_FIELDS)
    if unknown:
        raise ValidationError({f: ["Unknown opportunity field."] for f in unknown})
    data = dict(data)
    if opportunity is None:
        for key in CRM_KEYS:
            if data.get(key):
                opportunity = Opportunity.objects.select_for_update().filter(**{key: data[key]}).first()
                if opportunity:
                    break
    else:
        opportunity = Opportunity.objects.select_for_update().get(pk=opportunity.pk)
    pipeline = data.pop("pipeline", None)
    if isinstance(pipeline, str):
        pipeline = Pipeline.objects.filter(key=pipeline).first() or _missing("pipeline", pipeline)
    pipeline = pipeline or (opportunity.pipeline if opportunity else default_pipeline())
    stage_key = data.pop("stage", None)
    stage = stage_for(pipeline=pipeline, key=stage_key) if stage_key else None

    created = opportunity is None
    if created:
        if stage is None:
            stage = pipeline.stages.order_by("order").first() or _missing("stage", "(pipeline has no stages)")
        opportunity = Opportunity(pipeline=pipeline, stage=stage, **data)
        if "created_at" not in data and opportunity.closed_at and opportunity.closed_at < opportunity.created_at:
            # Given no creation time (a CRM pull that maps none, an API call
            # without it), a deal that closed already began no later than its
            # close: not "now", which would refuse every won deal pulled late.
            opportunity.created_at = opportunity.closed_at
        if stage.is_closed and not opportunity.closed_at:
            opportunity.closed_at = opportunity.created_at
        opportunity.full_clean()
        try:
            with transaction.atomic():
                opportunity.save(force_insert=True)
        except IntegrityError as exc:
            raise ValidationError({"salesforce_id": [f"Another opportunity holds this CRM id ({exc})."]}) from exc
        OpportunityStageChange.objects.create(
            opportunity=opportunity, to_stage=stage, changed_at=opportunity.created_at,
            actor=_user(actor), source=source[:100],
        )
        hooks.records_changed("opportunities", ids=[opportunity.pk], fields=OPPORTUNITY_FIELDS, created=True,
                              source=source)
        _announce(opportunity, "created")
        if stage.is_closed:
            _announce(opportunity, "won" if stage.is_won else "lost")
        return opportunity, True

    if pipeline.pk != opportunity.pipeline_id and stage is None:
        raise ValidationError({"stage": [f"Moving to pipeline {pipeline.key!r} needs a stage of it."]})
    before = [getattr(opportunity, f) for f in CREDIT_FIELDS]
    for key, value in data.items():
        setattr(opportunity, key, value)
    opportunity.pipeline = pipeline
    opportunity.full_clean(exclude=["stage"])
    opportunity.save()
    if [getattr(opportunity, f) for f in CREDIT_FIELDS] != before:
        attribution_recompute_queue(opportunity_id=opportunity.pk)
    # In this transaction: the CRM outbox queues the push (crm_sync.py).
    hooks.records_changed("opportunities", ids=[opportunity.pk], fields=[*data, "pipeline"], source=source)
    if stage is not None:
        opportunity_change_stage(opportunity=opportunity, to_stage=stage, actor=actor, source=source)
    return opportunity, False


@transaction.atomic
def opportunity_change_stage(
    *,
    opportunity: Opportunity,
    to_stage: OpportunityStage,
    source: str,
    actor=None,
    at: datetime | None = None,
) -> OpportunityStageChange | None:
    """The one way an opportunity's stage changes: writes the stage history
    row, sets ``closed_at`` on entering a won or lost stage (clears it on
    reopening), and announces created/won/lost through
    ``martech.signals.opportunity_changed`` after commit."""
    locked = Opportunity.objects.select_for_update().get(pk=opportunity.pk)
    if locked.stage_id == to_stage.pk:
        return None
    if to_stage.pipeline_id != locked.pipeline_id:
        raise ValidationError({"stage": [f"Stage {to_stage.key!r} is not in this opportunity's pipeline."]})
    when = at or timezone.now()
    change = OpportunityStageChange.objects.create(
        opportunity=locked, from_stage_id=locked.stage_id, to_stage=to_stage, changed_at=when,
        actor=_user(actor), source=source[:100],
    )
    closed_at = (opportunity.closed_at or when) if to_stage.is_closed else None
    # The close time asked for, and the one kept (a deal moved between closed stages keeps its close).
    closed_before_created(locked.created_at, at if to_stage.is_closed else None)
    closed_before_created(locked.created_at, closed_at)
    Opportunity.objects.filter(pk=locked.pk).update(stage=to_stage, closed_at=closed_at, updated_at=timezone.now())
    opportunity.stage, opportunity.closed_at = to_stage, closed_at
    hooks.records_changed("opportunities", ids=[locked.pk], fields=["stage", "closed_at"], source=source)
    if to_stage.is_closed:
        _announce(opportunity, "won" if to_stage.is_won else "lost")
    else:
        # Reopened or moved between open stages: won/closed flags and the window's end change.
        attribution_recompute_queue(opportunity_id=locked.pk)
    return change


@transaction.atomic
def opportunity_set_contact(
    *, opportunity: Opportunity, lead: Lead, role: str = "", is_primary: bool = False, source: str = ""
) -> OpportunityContactRole:
    """Add or update a lead's role on a deal. Making one primary demotes the
    previous primary in the same transaction. Idempotent."""
    if is_primary:
        OpportunityContactRole.objects.filter(opportunity=opportunity, is_primary=True).exclude(lead=lead).update(
            is_primary=False
        )
    before = OpportunityContactRole.objects.filter(opportunity=opportunity, lead=lead).values_list(
        "role", "is_primary").first()
    contact, created = OpportunityContactRole.objects.update_or_create(
        opportunity=opportunity, lead=lead, defaults={"role": role[:60], "is_primary": is_primary}
    )
    if created:
        # A new lead brings its touches into the path (a role or primary change moves no credit).
        attribution_recompute_queue(opportunity_id=opportunity.pk)
    if created or before != (contact.role, contact.is_primary):
        # A new association, or a role / primary change (Salesforce keeps them on
        # OpportunityContactRole); not queued back to the CRM it came from.
        hooks.records_changed("opportunities", ids=[opportunity.pk], fields=["contacts"], source=source)
    return contact


@transaction.atomic
def opportunity_set_contacts(*, opportunity: Opportunity, contacts: list[dict], source: str = ""
                             ) -> list[OpportunityContactRole]:
    """Replace a deal's contact roles with ``contacts`` ([{"lead", "role",
    "is_primary"}]): leads not listed are removed (a removed association
    the CRM push takes off the deal). A non-empty list needs exactly one
    primary. Idempotent."""
    leads = [c["lead"] for c in contacts]
    if len({lead.pk for lead in leads}) != len(leads):
        raise ValidationError({"contacts": ["A lead appears more than once."]})
    primaries = sum(1 for c in contacts if c.get("is_primary"))
    if contacts and primaries != 1:
        raise ValidationError({"contacts": [f"Exactly one contact must be primary (got {primaries})."]})
    removed, _ = OpportunityContactRole.objects.filter(opportunity=opportunity).exclude(
        lead__in=[lead.pk for lead in leads]
    ).delete()
    if removed:
        attribution_recompute_queue(opportunity_id=opportunity.pk)
        # A removed role is a CRM change too (Salesforce deletes its OpportunityContactRole).
        hooks.records_changed("opportunities", ids=[opportunity.pk], fields=["contacts"], source=source)
    # The primary last: setting it demotes any other, and the constraint allows one at a time.
    ordered = sorted(contacts, key=lambda c: bool(c.get("is_primary")))
    OpportunityContactRole.objects.filter(opportunity=opportunity, is_primary=True).exclude(
        lead__in=[c["lead"].pk for c in contacts if c.get("is_primary")]
    ).update(is_primary=False)
    return [
        opportunity_set_contact(
            opportunity=opportunity, lead=c["lead"], role=c.get("role", ""), is_primary=bool(c.get("is_primary")),
            source=source,
        )
        for c in ordered
    ]


@transaction.atomic
def opportunity_remove_contact(*, opportunity: Opportunity, lead: Lead, source: str = "") -> bool:
    """Take one lead's role off a deal (a role removed in a CRM). Unlike
    ``opportunity_set_contacts`` the other roles stay as they are: removing
    the primary leaves the deal without one, as the CRM has it. Returns
    whether there was a role; idempotent."""
    removed, _ = OpportunityContactRole.objects.filter(opportunity=opportunity, lead=lead).delete()
    if removed:
        attribution_recompute_queue(opportunity_id=opportunity.pk)
        # Announced with its source: a removal pulled from a CRM is not queued back to it.
        hooks.records_changed("opportunities", ids=[opportunity.pk], fields=["contacts"], source=source)
    return bool(removed)


@transaction.atomic
def opportunity_close(
    *, opportunity: Opportunity, won: bool, source: str, actor=None, at: datetime | None = None
) -> OpportunityStageChange | None:
    """Close a deal won or lost: moves it to its pipeline's first won (lost)
    stage through opportunity_change_stage, with ``at`` as the close time.
    Closing an already closed deal the same way changes nothing."""
    stage = opportunity.pipeline.stages.filter(is_won=won, is_lost=not won).order_by("order").first()
    if stage is None:
        raise ValidationError({"won": [f"Pipeline {opportunity.pipeline.key!r} has no {'won' if won else 'lost'} stage."]})
    return opportunity_change_stage(opportunity=opportunity, to_stage=stage, source=source, actor=actor, at=at)


@transaction.atomic
def opportunity_delete(*, opportunity: Opportunity, source: str, actor=None) -> dict[str, int]:
    """Delete a deal with everything derived from it: its credits under
    every model and its part of the rollup (the days its credits were in are
    aggregated again), its contact roles and stage history, in one
    transaction, so no report keeps its revenue. Permission is the
    caller's (the API and admin check the opportunity delete permission).
    Logged with the actor and source. Deleting a deal already gone changes
    nothing (returns zeros).

    A deal a CRM holds (a CRM id on it) leaves an ``OpportunityDeletion``
    per connection, in the same transaction: the tombstone that keeps the
    next pull from creating it again, and, for a connection that pushes
    deals, the delete of its copy there through the CRM outbox (so the
    report's revenue and the CRM's stay the same). A deletion pulled from a
    CRM (``source`` "crm:<provider>") is not sent back to that CRM, which
    has no such deal any more, and leaves no tombstone for it (a deal
    restored there comes back). ``crm_deletes`` counts the deletes queued."""
    from attribution.computation import credits_forget, results_lock

    # The results lock before the deal's row: the order attribution_compute takes them in
    # (its lock first; it reads deals without locking them). credits_forget takes it again (a no-op).
    results_lock()
    locked = Opportunity.objects.select_for_update().filter(pk=opportunity.pk).first()
    if locked is None:
        return {"opportunities": 0, "credits": 0, "crm_deletes": 0}
    counts = credits_forget(opportunity_ids=[locked.pk])
    name, pk = locked.name, locked.pk
    queued = _crm_deletions_record(locked, source=source, actor=actor)
    locked.delete()
    log.info("opportunity %s (%r) deleted by user %s via %s; %s credits removed, %s CRM deletes queued", pk, name,
             getattr(_user(actor), "pk", None), source, counts["credits"], queued)
    return {"opportunities": 1, "credits": counts["credits"], "crm_deletes": queued}


def _crm_deletions_record(opportunity: Opportunity, *, source: str, actor) -> int:
    """The deal's ``OpportunityDeletion`` rows (one per connection whose CRM
    id it holds) and the outbox rows of those to delete there; returns how
    many were queued. Its own pending pushes go: the record they would send
    is gone."""
    from attribution.crm_sync import DEAL, DELETION
    from martech.crm import outbox
    from martech.crm.models import Connection, FieldMapping, OutboxItem
    from martech.crm.models import PushState

    held = {provider: getattr(opportunity, column) for provider, column in DEAL.id_fields.items()
            if getattr(opportunity, column, None)}
    OutboxItem.objects.filter(object=DEAL.key, local_id=opportunity.pk, status=OutboxItem.Status.PENDING).delete()
    if not held:
        PushState.objects.filter(object=DEAL.key, local_id=opportunity.pk).delete()
        return 0
    pushing = set(FieldMapping.objects.filter(object=DEAL.key, direction__in=["push", "both"])
                  .values_list("connection_id", flat=True))
    queue: list[tuple[int, str, int]] = []
    for connection in Connection.objects.filter(provider__in=held).order_by("pk"):
        remote_id = held[connection.provider]
        if source == f"crm:{connection.provider}":
            status = OpportunityDeletion.Status.REMOTE  # deleted there: nothing to send, no tombstone
        elif connection.pk in pushing:
            status = OpportunityDeletion.Status.PENDING
        else:
            status = OpportunityDeletion.Status.KEPT
        row, _ = OpportunityDeletion.objects.update_or_create(
            connection=connection, remote_id=remote_id,
            defaults={"opportunity_id": opportunity.pk, "name": opportunity.name, "amount": opportunity.amount,
                      "currency": opportunity.currency, "deleted_at": timezone.now(), "actor": _user(actor),
                      "source": source[:100], "status": status, "done_at": None})
        if status == OpportunityDeletion.Status.PENDING:
            queue.append((connection.pk, DELETION, row.pk))
    outbox.enqueue(queue)
    # What was synced with the deal goes with it (after the outbox rows: the one lock order).
    PushState.objects.filter(object=DEAL.key, local_id=opportunity.pk).delete()
    return len(queue)


def campaign_spend_upsert(
    *, campaign: Campaign, date: date, amount: Decimal, currency: str | None = None, impressions: int = 0, clicks: int = 0
) -> tuple[CampaignSpend, bool]:
    """What one campaign cost on one day (``currency`` default: the company
    currency); the same (campaign, date) again replaces the figures
    (idempotent). The CSV import does the same in bulk."""
    currency = currency or settings.MARTECH_COMPANY_CURRENCY
    spend = CampaignSpend(campaign=campaign, date=date, amount=amount, currency=currency, impressions=impressions, clicks=clicks)
    spend.full_clean(exclude=["campaign"], validate_unique=False, validate_constraints=False)
    return CampaignSpend.objects.update_or_create(
        campaign=campaign, date=date,
        defaults={"amount": amount, "currency": currency, "impressions": impressions, "clicks": clicks},
    )


def _missing(field: str, value: str):
    raise ValidationError({field: [f"Unknown {field} {value!r}."]})


def _user(actor):
    """The actor as a User row for audit columns, else None: an API client's
    stand-in user (martech.api.auth.ApiClientUser) is authenticated but no
    row, and saving it in a foreign key fails."""
    return actor if isinstance(actor, get_user_model()) and actor.pk and actor.is_authenticated else None
