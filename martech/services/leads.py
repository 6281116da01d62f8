"""Leads: upsert (the one dedupe path), stage changes, identities, consent, merge.

Every function here is keyword-only. Errors are ``ValidationError`` with a
dict keyed by the offending field, so admin, API and importers can name it.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from martech import configcache, hooks, signals
from martech.db import update_rows
from martech.services import capture
from martech.models import (
    CRM_KEYS,
    LEAD_WRITABLE_FIELDS,
    Account,
    ConsentChannel,
    ConsentRecord,
    Event,
    Identity,
    Lead,
    LifecycleStage,
    StageTransition,
    validate_time_zone,
)
from martech.services.normalize import (
    find_unstorable,
    free_mail_domains,
    normalize_country,
    normalize_domain,
    normalize_email,
    normalize_phone,
)

log = logging.getLogger(__name__)

_TEXT_LIMITS = {f.name: f.max_length for f in Lead._meta.get_fields() if getattr(f, "max_length", None)}


def clean_lead_data(data: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalize incoming lead fields. Accepts "properties.<name>"
    keys and a "properties" dict. Raises ValidationError({field: [reason]})
    naming every bad field; unknown fields are errors, never ignored."""
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for key, value in data.items():
        try:
            bad_text = find_unstorable(value, key)
            if bad_text:
                errors.setdefault(bad_text[0], []).append(bad_text[1])
                continue
            if key == "properties":
                if not isinstance(value, dict):
                    raise ValidationError("Must be an object.")
                props.update(value)
            elif key.startswith("properties."):
                name = key.split(".", 1)[1]
                if not name:
                    raise ValidationError("Give a property name after 'properties.'.")
                props[name] = value
            elif key not in LEAD_WRITABLE_FIELDS:
                raise ValidationError("Unknown lead field.")
            elif key == "email":
                out["email"] = normalize_email(value)
            elif key == "phone":
                out["phone"] = normalize_phone(value, region=data.get("country") or None)
            elif key == "country":
                out["country"] = normalize_country(value)
            elif key == "time_zone":
                value = (value or "").strip()
                validate_time_zone(value)
                out["time_zone"] = value
            elif key == "lifecycle_stage":
                out["lifecycle_stage"] = (value or "").strip().lower() or None
            else:
                value = "" if value is None else str(value).strip()
                limit = _TEXT_LIMITS.get(key)
                if limit and len(value) > limit:
                    raise ValidationError(f"At most {limit} characters (got {len(value)}).")
                if key in CRM_KEYS:
                    value = value or None
                out[key] = value
        except ValidationError as exc:
            errors.setdefault(key, []).extend(exc.messages)
    if errors:
        raise ValidationError(errors)
    if props:
        out["properties"] = props
    return out


# Said to whoever sends in a person who was erased (privacy): staff, the
# API and imports read it; public input (forms, the tracker) is answered as
# if accepted instead, so the answer never tells what we hold or held.
ERASED_MESSAGE = "This person's data was erased at their request; it is not taken in again."


class SubjectErased(ValidationError):
    """Input about a person who was erased (a tombstone matches its email,
    CRM id or analytics id). A ValidationError naming the field, so every
    caller that reports those reports it; public and CRM paths suppress it."""


def erased_keys(keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (kind, value) pairs of ``keys`` that belong to an erased person
    (kinds: email, hubspot_id, salesforce_lead_id, salesforce_contact_id,
    anonymous, user). The privacy app provides the check (martech.hooks);
    without it nothing is erased."""
    keys = [(k, v) for k, v in keys if v]
    if not keys:
        return set()
    return hooks.call("erased_keys", keys=keys) or set()


def refuse_erased(keys: list[tuple[str, str]]) -> None:
    """Raise SubjectErased naming the first field whose value was erased."""
    erased = erased_keys(keys)
    if erased:
        field = next(k for k, v in keys if (k, v) in erased)
        raise SubjectErased({field: [ERASED_MESSAGE]})


def person_key_lock(keys: list[tuple[str, str]]) -> None:
    """Serialize the creation of a lead and the erasure of the same person
    (PostgreSQL: a transaction-scoped advisory lock per key, taken in one
    order). Without it a create that checked the tombstones before an
    erasure committed could insert the lead after the erasure looked for it.
    SQLite runs one writer at a time, so there is nothing to do."""
    if connection.vendor != "postgresql":
        return
    ids = sorted({int.from_bytes(hashlib.sha256(f"{k}:{v}".encode()).digest()[:8], "big", signed=True)
                  for k, v in keys if v})
    with connection.cursor() as cursor:
        for lock_id in ids:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def _find_lead(cleaned: dict[str, Any], *, lock: bool) -> Lead | None:
    qs = Lead.objects.select_for_update() if lock else Lead.objects.all()
    if cleaned.get("email"):
        lead = qs.filter(email=cleaned["email"]).first()
        if lead:
            return lead
    for key in CRM_KEYS:
        if cleaned.get(key):
            lead = qs.filter(**{key: cleaned[key]}).first()
            if lead:
                return lead
    return None


def _refuse_taken_keys(lead: Lead, changed: list[str]) -> None:
    """An update must not take another lead's unique key (the unique index
    would turn it into an IntegrityError, a 500 on the API) nor drop the last
    key it has (the lead_has_a_key constraint)."""
    errors: dict[str, list[str]] = {}
    for key in ("email", *CRM_KEYS):
        value = getattr(lead, key)
        if key in changed and value and Lead.objects.filter(**{key: value}).exclude(pk=lead.pk).exists():
            errors[key] = ["Another lead already has this value; merge the two leads instead."]
    if not any(getattr(lead, key) for key in ("email", *CRM_KEYS)):
        errors.setdefault("email", []).append("A lead needs an email or a CRM id.")
    if errors:
        raise ValidationError(errors)


def account_for_domain(email: str | None) -> Account | None:
    """The account whose normalized domain is the email's, unless free mail."""
    domain = normalize_domain(email.rpartition("@")[2]) if email else None
    if not domain or domain in free_mail_domains():
        return None
    return Account.objects.filter(domain=domain).first()


# The lifecycle stages by key, per process (martech.configcache; bumped when a
# stage is saved or deleted): every new lead reads its first stage, a form's
# inside the capture's snapshot at no query.
STAGES_KEY = "martech.stages"


def _load_stages() -> dict[str, LifecycleStage]:
    return {stage.key: stage for stage in LifecycleStage.objects.all()}


def stage_by_key(key: str) -> LifecycleStage:
    """The lifecycle stage with this key (shared by the process: read-only)."""
    stage = configcache.cached(STAGES_KEY, _load_stages).get(key)
    if stage is None:
        raise ValidationError({"lifecycle_stage": f"Unknown lifecycle stage {key!r}."})
    return stage


def default_stage() -> LifecycleStage | None:
    """A new lead's stage when none is given (MARTECH["DEFAULT_LIFECYCLE_STAGE"])."""
    return configcache.cached(STAGES_KEY, _load_stages).get(settings.MARTECH["DEFAULT_LIFECYCLE_STAGE"])


def lead_upsert(
    *,
    data: dict[str, Any],
    source: str,
    actor=None,
    overwrite: bool = False,
    lead: Lead | None = None,
    public: bool = False,
    policy: Mapping[str, str] | None = None,
    unapplied: dict[str, Any] | None = None,
    savepoint: bool = True,
    touch=None,
) -> tuple[Lead, bool]:
    """Create or update the lead found by normalized email, else by CRM id.

    ``lead`` pins the row to update (an edit addressed by id, e.g. API PATCH):
    it is not looked up by key and never created, so an edit may change the
    email. A key (email, CRM id) that another lead holds is refused naming the
    field, and so is an edit that would leave a lead with no key at all.

    Blank incoming values never clear stored ones unless ``overwrite`` (an
    explicit edit). Custom properties are merged key by key. A new lead
    without a stage gets the default stage, through ``lead_change_stage``.
    Concurrent calls for one new email make one lead: the unique index decides
    and the loser re-reads the winner's row. Returns ``(lead, created)``.

    ``public`` marks input from anonymous sources (capture forms, the website
    tracker): it finds a lead by email only, never sets CRM ids, and on an
    existing lead applies ``public_changes`` (by default a field is only filled
    when empty, the stage only moves forward). What was submitted but not
    applied is put into ``unapplied`` when the caller passes a dict.

    A new lead is inserted with its stage and its "created" StageTransition
    written beside it (one row write, no second UPDATE for the stage).
    ``savepoint=False``: the caller owns the transaction and rolls all of it
    back when this raises (a form's store), so no savepoint of its own
    guards it; called outside a transaction it opens one either way.
    ``touch`` (an ``ingest.Touch``): a new lead is inserted with it as its
    first and latest touch; an existing lead is left to the caller's
    ``lead_touch_update``.
    """
    with transaction.atomic(savepoint=savepoint):
        return _lead_upsert(data=data, source=source, actor=actor, overwrite=overwrite, target=lead,
                            public=public, policy=policy, unapplied=unapplied, touch=touch)


def _lead_upsert(
    *,
    data: dict[str, Any],
    source: str,
    actor,
    overwrite: bool,
    target: Lead | None,
    public: bool,
    policy: Mapping[str, str] | None,
    unapplied: dict[str, Any] | None,
    touch,
) -> tuple[Lead, bool]:
    cleaned = clean_lead_data(data)
    if public:
        if overwrite:
            raise ValueError("public input never overwrites")
        for key in CRM_KEYS:
            value = cleaned.pop(key, None)
            if value and unapplied is not None:
                unapplied[key] = value
    if target is None and not cleaned.get("email") and not any(cleaned.get(k) for k in CRM_KEYS):
        raise ValidationError({"email": ["An email (or a CRM id) is required."]})
    # Before any read or write: an erased person's email or CRM id never makes a lead again.
    refuse_erased([(k, cleaned[k]) for k in ("email", *CRM_KEYS) if cleaned.get(k)])
    stage_key = cleaned.pop("lifecycle_stage", None)
    stage = stage_by_key(stage_key) if stage_key else None
    props = cleaned.pop("properties", None)

    if target is not None:
        lead = Lead.objects.select_for_update().get(pk=target.pk)
    else:
        lead = _find_lead(cleaned, lock=True)
    created = False
    if lead is None:
        # A new lead: checked again under the person's key lock, so an
        # erasure that committed meanwhile (and deleted the row we would
        # otherwise have found) is seen.
        keys = [("email", cleaned["email"])] if cleaned.get("email") else \
            [(k, cleaned[k]) for k in CRM_KEYS if cleaned.get(k)]
        person_key_lock(keys)
        refuse_erased(keys)
        lead = Lead(**{k: v for k, v in cleaned.items() if v not in ("", None)})
        lead.properties = props or {}
        lead.account = account_for_domain(lead.email)
        if lead.account and not lead.company_name:
            lead.company_name = lead.account.name
        # Inserted with its first stage (the one given, else the default):
        # the row is written once, its transition below.
        lead.lifecycle_stage = stage or default_stage()
        if touch is not None:
            from martech.services.ingest import touch_fold

            touch_fold(lead, [touch])
        try:
            # The savepoint lets the transaction go on after losing a race.
            with transaction.atomic():
                lead.save(force_insert=True)
            created = True
        except IntegrityError:
            lead = _find_lead(cleaned, lock=True)
            if lead is None:
                raise
    if not created and public:
        cleaned, props, stage, refused = public_changes(lead, cleaned, props, stage, policy or {})
        if unapplied is not None:
            unapplied.update(refused)
    if not created:
        changed = []
        for key, value in cleaned.items():
            if (value in ("", None)) and not overwrite:
                continue
            if getattr(lead, key) != value:
                setattr(lead, key, value)
                changed.append(key)
        if props:
            merged = {**lead.properties, **props}
            if merged != lead.properties:
                lead.properties = merged
                changed.append("properties")
        if "email" in changed and lead.account_id is None:
            lead.account = account_for_domain(lead.email)
            if lead.account:
                changed.append("account")
        if changed:
            _refuse_taken_keys(lead, changed)
            lead.save(update_fields=[*changed, "updated_at"])
            hooks.leads_changed(ids=[lead.pk], fields=changed, source=source)
    else:
        hooks.leads_changed(
            ids=[lead.pk], fields=[f.name for f in Lead._meta.concrete_fields], created=True, source=source
        )

    if created and lead.lifecycle_stage_id is not None:
        # lead_change_stage's record and announcement, without its row lock
        # and UPDATE: nobody else sees the row before this commits, and the
        # "created" hook above already queued every field (the stage too).
        transition = StageTransition.objects.create(
            lead=lead,
            from_stage_id=None,
            to_stage=lead.lifecycle_stage,
            changed_at=lead.created_at,
            reason="created",
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            source=source[:100],
        )
        _stage_changed_announce(lead, transition)
    elif stage is not None and stage.pk != lead.lifecycle_stage_id:
        lead_change_stage(lead=lead, to_stage=stage, reason="set on upsert", actor=actor, source=source)
    if created and capture.deferring():
        capture.note_lead(lead.pk, created=True)  # announced by the form's capture task
    elif created:
        transaction.on_commit(lambda: signals.lead_created.send(sender=Lead, lead=lead, source=source))
    return lead, created


# --- the bulk twin of lead_upsert (CSV import, CRM pulls) ---------------------

# bulk_update builds a CASE WHEN per row and field; its cost is mostly
# Django's (about 0.5 ms a changed row measured), not the database's.
UPDATE_BATCH = 500


@dataclass(frozen=True)
class LeadInput:
    """One lead to upsert in bulk: ``clean_lead_data`` output without
    ``lifecycle_stage``, and the stage it names (already looked up)."""

    cleaned: dict[str, Any]
    stage: LifecycleStage | None = None


@dataclass
class _Plan:
    lead: Lead
    created: bool
    changed: set[str] = field(default_factory=set)
    stage: LifecycleStage | None = None
    needs_account: bool = False


@dataclass
class BulkUpsert:
    # One per input, in order (two inputs with one key share their lead);
    # None for an input about an erased person (``erased``).
    leads: list[Lead | None]
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    # Input index -> the field whose value an erased person had (email or a
    # CRM id): those inputs wrote nothing. Callers report them (an import's
    # row error naming the field) or skip them (a CRM pull).
    erased: dict[int, str] = field(default_factory=dict)


def _erased_rows(rows: list[LeadInput]) -> dict[int, str]:
    """Input index -> the first field (email, then CRM ids) whose value
    belongs to an erased person; one tombstone look-up for all the rows."""
    keyed = [[(k, r.cleaned[k]) for k in ("email", *CRM_KEYS) if r.cleaned.get(k)] for r in rows]
    erased = erased_keys(sorted({k for row_keys in keyed for k in row_keys}))
    if not erased:
        return {}
    return {n: next(k for k, v in row_keys if (k, v) in erased)
            for n, row_keys in enumerate(keyed) if erased.intersection(row_keys)}


def _current(lead: Lead, key: str) -> Any:
    value = getattr(lead, key)
    if key == "phone":
        # Compare E.164 strings: PhoneNumber == str parses the string again,
        # and parsing is most of an import's CPU time.
        return str(value) if value else ""
    return value


def _plan_apply(plan: _Plan, row: LeadInput) -> None:
    lead = plan.lead
    for key, value in row.cleaned.items():
        if key == "properties":
            merged = {**lead.properties, **value}
            if merged != lead.properties:
                lead.properties = merged
                plan.changed.add("properties")
        elif value not in ("", None) and _current(lead, key) != value:
            setattr(lead, key, value)
            plan.changed.add(key)
    if "email" in plan.changed and lead.account_id is None:
        plan.needs_account = True
    if row.stage is not None:
        plan.stage = row.stage


def lead_upsert_many(
    *, rows: list[LeadInput], source: str, actor=None, default_stage: LifecycleStage | None = None
) -> BulkUpsert:
    """``lead_upsert`` for many leads at once, with a handful of queries
    whatever their number: one locked look-up, one account query, bulk
    insert, bulk update, bulk insert of stage transitions, and the lead hooks
    once per set of changed fields. The same rules: found by normalized
    email, else a CRM id; blank values never clear stored ones; custom
    properties merge key by key; a new lead gets ``default_stage``; stage
    changes write ``StageTransition`` rows; the same signals after commit,
    except that new leads are announced once per call (``leads_created``).
    An input about an erased person (a tombstone matches its email or a CRM
    id: one look-up for all the rows) writes nothing: its entry in
    ``leads`` is None and ``erased`` names the field, so no bulk caller
    can take an erased person in again by forgetting to check.

    Must run inside a transaction (the caller's: a chunk, a pulled page).
    A unique-key conflict (a lead created meanwhile, two inputs claiming one
    CRM id for different leads, an email another lead has) raises
    IntegrityError: the caller redoes its rows one by one through
    ``lead_upsert``, in a savepoint it rolls back first, so each row gets
    its own answer."""
    erased = _erased_rows(rows)
    live = [r for n, r in enumerate(rows) if n not in erased]
    emails = {r.cleaned["email"] for r in live if r.cleaned.get("email")}
    crm_q = Q()
    for key in CRM_KEYS:
        values = {r.cleaned[key] for r in live if r.cleaned.get(key)}
        if values:
            crm_q |= Q(**{f"{key}__in": values})
    lookup = Q(email__in=emails) if emails else Q()
    lookup |= crm_q
    # Locked, so a concurrent edit of these leads waits for this chunk instead
    # of being overwritten by bulk_update's stale copy; in primary key order,
    # as every path that locks several leads takes them (docs/architecture.md, "Write paths").
    found = list(Lead.objects.select_for_update().filter(lookup).order_by("pk")) if lookup else []
    by_key: dict[tuple[str, str], _Plan] = {}
    plans: dict[int, _Plan] = {}  # id(plan) -> plan, in first-seen order
    for lead in found:
        plan = _Plan(lead=lead, created=False)
        plans[id(plan)] = plan
        for key in ("email", *CRM_KEYS):
            if getattr(lead, key):
                by_key[(key, getattr(lead, key))] = plan

    row_plans: list[_Plan | None] = []
    for n, row in enumerate(rows):
        if n in erased:
            row_plans.append(None)
            continue
        # The same order as _find_lead: email, then CRM ids.
        plan = None
        for key in ("email", *CRM_KEYS):
            value = row.cleaned.get(key)
            if value and (key, value) in by_key:
                plan = by_key[(key, value)]
                break
        if plan is None:
            lead = Lead(properties={})
            plan = _Plan(lead=lead, created=True, needs_account=True)
            plans[id(plan)] = plan
        _plan_apply(plan, row)
        row_plans.append(plan)
        for key in ("email", *CRM_KEYS):
            if getattr(plan.lead, key):
                by_key[(key, getattr(plan.lead, key))] = plan

    # One query for the accounts of every new (or newly emailed) lead.
    domains = {}
    for key, plan in plans.items():
        if plan.needs_account and plan.lead.email:
            domain = normalize_domain(plan.lead.email.rpartition("@")[2])
            if domain and domain not in free_mail_domains():
                domains[key] = domain
    accounts = {a.domain: a for a in Account.objects.filter(domain__in=set(domains.values()))} if domains else {}
    now = timezone.now()
    new_leads, updated_leads, transitions = [], [], []
    update_fields: set[str] = set()
    unchanged = 0
    for key, plan in plans.items():
        lead = plan.lead
        account = accounts.get(domains.get(key))
        if account is not None and lead.account_id is None:
            lead.account = account
            plan.changed.add("account")
            if plan.created and not lead.company_name:
                lead.company_name = account.name
        stage = plan.stage or (default_stage if plan.created else None)
        if stage is not None and stage.pk != lead.lifecycle_stage_id:
            transitions.append(
                (
                    lead,
                    StageTransition(
                        from_stage_id=lead.lifecycle_stage_id,
                        to_stage=stage,
                        changed_at=now,
                        reason="created" if plan.created else "set on upsert",
                        actor=actor if getattr(actor, "is_authenticated", False) else None,
                        source=source[:100],
                    ),
                )
            )
            lead.lifecycle_stage = stage
            plan.changed.add("lifecycle_stage")
        if plan.created:
            new_leads.append(lead)
        elif plan.changed:
            lead.updated_at = now
            updated_leads.append(lead)
            update_fields |= plan.changed
        else:
            unchanged += 1

    Lead.objects.bulk_create(new_leads, batch_size=500)
    if updated_leads:
        update_rows(Lead, updated_leads, sorted(update_fields | {"updated_at"}), batch_size=UPDATE_BATCH)
    for lead, transition in transitions:
        transition.lead = lead
    StageTransition.objects.bulk_create([t for _, t in transitions], batch_size=500)
    all_fields = [f.name for f in Lead._meta.concrete_fields]
    hooks.leads_changed(ids=[lead.pk for lead in new_leads], fields=all_fields, created=True, source=source)
    # Each lead announced with its own changed fields (one call per distinct
    # set: a page of a pull changes one or two sets), as lead_upsert does.
    by_fields: dict[frozenset[str], list[int]] = {}
    for plan in plans.values():
        if not plan.created and plan.changed:
            by_fields.setdefault(frozenset(plan.changed), []).append(plan.lead.pk)
    for fields, ids in sorted(by_fields.items(), key=lambda item: sorted(item[0])):
        hooks.leads_changed(ids=ids, fields=fields, source=source)

    # The same announcements lead_upsert makes, after the commit: one per
    # lead, under one configuration snapshot (their receivers, nurture's
    # stage triggers, read the configuration once for the batch, not once
    # per lead).
    if transitions:
        announced = tuple(transitions)

        def announce() -> None:
            with configcache.snapshot():
                for lead, t in announced:
                    signals.lead_stage_changed.send(sender=Lead, lead=lead, transition=t)

        transaction.on_commit(announce)
    if new_leads:
        # One announcement per batch (leads_created), not one per lead.
        new_ids = [lead.pk for lead in new_leads]
        transaction.on_commit(lambda: signals.leads_created.send(sender=Lead, lead_ids=new_ids, source=source))
    return BulkUpsert(leads=[plan.lead if plan is not None else None for plan in row_plans], created=len(new_leads),
                      updated=len(updated_leads), unchanged=unchanged, erased=erased)


# What a public submission may do to a field of an existing lead.
FILL, OVERWRITE, NEVER = "fill", "overwrite", "never"
WRITE_POLICIES = (FILL, OVERWRITE, NEVER)


def _empty(value: Any) -> bool:
    return value in ("", None) or value == {} or value == []


def public_changes(
    lead: Lead,
    cleaned: dict[str, Any],
    props: dict[str, Any] | None,
    stage: LifecycleStage | None,
    policy: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Any] | None, LifecycleStage | None, dict[str, Any]]:
    """Split a public submission for an existing lead into what it may change
    and what it may not. ``policy`` maps a lead field (or "properties.<name>")
    to ``fill`` (the default: set only when the lead has no value), ``overwrite``
    or ``never``. The stage only moves forward. Returns the applicable fields,
    properties and stage, and ``{field: submitted value}`` of the rest."""
    refused: dict[str, Any] = {}
    allowed: dict[str, Any] = {}
    for key, value in cleaned.items():
        if _empty(value):
            continue
        rule = policy.get(key, FILL)
        current = getattr(lead, key)
        if value == current:
            continue
        if rule == OVERWRITE or (rule == FILL and _empty(current)):
            allowed[key] = value
        else:
            refused[key] = value
    allowed_props: dict[str, Any] = {}
    for name, value in (props or {}).items():
        key = f"properties.{name}"
        rule = policy.get(key, FILL)
        current = (lead.properties or {}).get(name)
        if _empty(value) or value == current:
            continue
        if rule == OVERWRITE or (rule == FILL and _empty(current)):
            allowed_props[name] = value
        else:
            refused[key] = value
    if stage is not None and stage.pk != lead.lifecycle_stage_id:
        if policy.get("lifecycle_stage", FILL) == NEVER or not _moves_forward(lead, stage):
            refused["lifecycle_stage"] = stage.key
            stage = None
    return allowed, allowed_props or None, stage, refused


def _moves_forward(lead: Lead, stage: LifecycleStage) -> bool:
    if lead.lifecycle_stage_id is None:
        return True
    current = LifecycleStage.objects.filter(pk=lead.lifecycle_stage_id).values_list("order", flat=True).first()
    return current is None or stage.order > current


def lead_change_stage(
    *,
    lead: Lead,
    to_stage: LifecycleStage | str,
    reason: str,
    actor=None,
    source: str = "",
    at: datetime | None = None,
    forward_only: bool = False,
    savepoint: bool = True,
) -> StageTransition | None:
    """The one way a lead's lifecycle stage changes. Writes a StageTransition
    (from, to, when, reason, actor) in the same transaction and announces
    ``lead_stage_changed`` after commit. Returns None when nothing changes.

    ``forward_only`` (lifecycle rules, opportunities): the move is decided
    against the stage read under the lead's row lock, so a caller that read
    the lead earlier (a rule evaluated on an older snapshot while another
    task moved the lead on) never moves it back. ``savepoint=False``: the
    caller owns the transaction (lifecycle rules, whose handoff joins the
    move's transaction in the capture task), as ``lead_upsert``'s."""
    with transaction.atomic(savepoint=savepoint):
        return _stage_change(lead=lead, to_stage=to_stage, reason=reason, actor=actor, source=source, at=at,
                             forward_only=forward_only)


def _stage_change(*, lead: Lead, to_stage: LifecycleStage | str, reason: str, actor, source: str,
                  at: datetime | None, forward_only: bool) -> StageTransition | None:
    if isinstance(to_stage, str):
        to_stage = stage_by_key(to_stage)
    if not reason:
        raise ValidationError({"reason": ["Give a reason for the stage change."]})
    # The lead locked and its stage's order read in one statement.
    locked = (Lead.objects.select_for_update(of=("self",)).select_related("lifecycle_stage")
              .only("id", "lifecycle_stage_id", "lifecycle_stage__order").get(pk=lead.pk))
    if locked.lifecycle_stage_id == to_stage.pk:
        lead.lifecycle_stage = to_stage
        return None
    if forward_only and locked.lifecycle_stage_id is not None:
        stage = locked.lifecycle_stage
        if stage is None or stage.pk != locked.lifecycle_stage_id:
            # A concurrent move committed while this waited for the lock:
            # PostgreSQL re-reads the locked row, not the joined stage.
            stage = LifecycleStage.objects.filter(pk=locked.lifecycle_stage_id).only("order").first()
        current = stage.order if stage is not None else None
        if current is not None and current >= to_stage.order:
            lead.lifecycle_stage_id = locked.lifecycle_stage_id
            return None
    transition = StageTransition.objects.create(
        lead=lead,
        from_stage_id=locked.lifecycle_stage_id,
        to_stage=to_stage,
        changed_at=at or timezone.now(),
        reason=reason[:255],
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        source=source[:100],
    )
    Lead.objects.filter(pk=lead.pk).update(lifecycle_stage=to_stage, updated_at=timezone.now())
    lead.lifecycle_stage = to_stage
    hooks.leads_changed(ids=[lead.pk], fields=["lifecycle_stage"], source=source)
    _stage_changed_announce(lead, transition)
    return transition


def _stage_changed_announce(lead: Lead, transition: StageTransition) -> None:
    """``lead_stage_changed`` after the commit, or by the capture's task
    while a capture is stored."""
    if capture.deferring():
        capture.note_transition(transition.pk)  # announced by the form's capture task
    else:
        transaction.on_commit(
            lambda: signals.lead_stage_changed.send(sender=Lead, lead=lead, transition=transition)
        )


@transaction.atomic
def lead_set_owner(*, lead: Lead, owner, reason: str, source: str, actor=None) -> bool:
    """The one way a lead's owner changes (routing, handoff, admin). The
    ``reason``/``actor`` audit lives with the caller's own record (routing's
    assignment, the handoff); this writes the field and runs the lead hooks
    (the CRM outbox pushes the new owner). Returns False when unchanged."""
    if not reason:
        raise ValidationError({"reason": ["Give a reason for the owner change."]})
    owner_id = getattr(owner, "pk", owner)
    locked = Lead.objects.select_for_update().only("id", "owner_id").get(pk=lead.pk)
    if locked.owner_id == owner_id:
        return False
    Lead.objects.filter(pk=lead.pk).update(owner_id=owner_id, updated_at=timezone.now())
    lead.owner_id = owner_id
    hooks.leads_changed(ids=[lead.pk], fields=["owner"], source=source)
    log.info("lead %s owner -> %s (%s; %s)", lead.pk, owner_id, reason, source)
    return True


def consent_record(
    *,
    lead: Lead,
    channel: str,
    granted: bool,
    source: str,
    evidence: dict[str, Any] | None = None,
    actor=None,
    at: datetime | None = None,
    topic=None,
    lead_locked: bool = False,
    savepoint: bool = True,
) -> ConsentRecord:
    """Append a consent record. The latest record per channel (without a
    topic) is the lead's current consent (selectors.lead_consent_state); with
    ``topic`` (a SubscriptionType of that channel) it is the lead's choice on
    that topic.

    ``lead_locked``: the caller's transaction already holds the lead's row
    lock (``lead_upsert`` took it, or inserted the row), so it is not taken
    again. ``savepoint=False``: the caller rolls its whole transaction back
    when this raises (``lead_upsert``'s ``savepoint``)."""
    if channel not in ConsentChannel.values:
        raise ValidationError({"channel": [f"Unknown consent channel {channel!r}."]})
    if topic is not None and topic.channel != channel:
        raise ValidationError({"topic": [f"The topic {topic.name!r} is on the {topic.get_channel_display()} "
                                         f"channel, not {channel}."]})
    with transaction.atomic(savepoint=savepoint):
        if not lead_locked:
            # The lead's row lock (lead first): nurture checks consent and sends
            # under this lock, so a withdrawal either lands before that check (and
            # is seen) or waits until the send has committed, never in between.
            Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
        record = ConsentRecord.objects.create(
            lead=lead,
            channel=channel,
            topic=topic,
            status=ConsentRecord.Status.GRANTED if granted else ConsentRecord.Status.WITHDRAWN,
            source=source[:100],
            evidence=evidence or {},
            recorded_at=at or timezone.now(),
            actor=actor if getattr(actor, "is_authenticated", False) else None,
        )
    transaction.on_commit(lambda: signals.consent_changed.send(sender=ConsentRecord, record=record))
    return record


@transaction.atomic
def identity_link(*, lead: Lead, kind: str, value: str) -> Identity:
    """Link an id to a lead and attach the events seen earlier under it.

    An id already linked to another lead keeps that link (a shared device
    must not move one person's history onto another); only events that
    belong to no lead yet are attached. Idempotent.
    """
    value = (value or "").strip()
    if not value:
        raise ValidationError({"anonymous_id" if kind == Identity.Kind.ANONYMOUS else "user_id": ["Empty id."]})
    identity, _ = Identity.objects.get_or_create(kind=kind, value=value, defaults={"lead": lead})
    if kind == Identity.Kind.ANONYMOUS:
        _attach_anonymous_history(lead_id=identity.lead_id, anonymous_id=value)
    return identity


def _attach_anonymous_history(*, lead_id: int, anonymous_id: str) -> None:
    """Attach the events seen under an anonymous id to its lead, and fold their
    earliest and latest touches into the lead's first and latest touch (so a
    visitor's UTM page view before the form sets the original source)."""
    from martech.services.ingest import TOUCH_UTM_FIELDS, Touch, lead_touch_update

    orphans = Event.objects.filter(anonymous_id=anonymous_id, lead__isnull=True)
    if not orphans.exists():
        return
    # Lead first, then its events: the lock order of every lead write.
    Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk", flat=True).first()
    touches = orphans.exclude(channel="").values("occurred_at", "channel", *TOUCH_UTM_FIELDS)
    ends = [row for row in (touches.order_by("occurred_at", "id").first(), touches.order_by("-occurred_at", "-id").first()) if row]
    orphans.update(lead_id=lead_id)
    if ends:
        lead_touch_update(
            touches={
                lead_id: [
                    Touch(row["occurred_at"], {f.removeprefix("utm_"): row[f] for f in TOUCH_UTM_FIELDS}, row["channel"])
                    for row in ends
                ]
            }
        )


def _move_related_rows(*, primary: Lead, duplicate: Lead) -> None:
    """Point every row that references the duplicate at the primary: the
    core's (events, identities, consent, stage history) and those of apps
    that come later (contact roles, assignments, enrollments...), found
    through the model graph so the core need not know them. A row that would
    break a unique constraint because the primary already has its twin (both
    leads on one opportunity) is the duplicate's copy of a fact the primary
    keeps; it is deleted with the duplicate."""
    for rel in Lead._meta.related_objects:
        if rel.many_to_many or rel.one_to_one or not rel.field.concrete:
            continue
        model, column = rel.related_model, rel.field.name
        rows = model._base_manager.filter(**{column: duplicate})
        try:
            with transaction.atomic():
                rows.update(**{column: primary})
        except IntegrityError:
            for pk in rows.values_list("pk", flat=True):
                try:
                    with transaction.atomic():
                        model._base_manager.filter(pk=pk).update(**{column: primary})
                except IntegrityError:
                    log.info("merge %s -> %s: %s %s duplicates a row of the primary", duplicate.pk, primary.pk,
                             model._meta.label, pk)


@transaction.atomic
def lead_merge(*, primary: Lead, duplicate: Lead, actor=None, reason: str = "merge") -> Lead:
    """Fold ``duplicate`` into ``primary``: events, identities, consent and
    stage history move over, blank fields of primary are filled from the
    duplicate, custom properties merge (primary wins), then the duplicate is
    deleted. The merge is recorded on primary's properties under
    ``_merged_from`` so the history stays traceable."""
    if primary.pk == duplicate.pk:
        raise ValidationError({"duplicate": ["A lead cannot be merged into itself."]})
    # Both in primary key order, as every path that locks several leads takes
    # them: two merges of the same pair in opposite directions wait, not deadlock.
    locked = {lead.pk: lead for lead in
              Lead.objects.select_for_update().filter(pk__in=[primary.pk, duplicate.pk]).order_by("pk")}
    if primary.pk not in locked or duplicate.pk not in locked:
        raise Lead.DoesNotExist("The lead to merge no longer exists.")
    primary, duplicate = locked[primary.pk], locked[duplicate.pk]
    _move_related_rows(primary=primary, duplicate=duplicate)
    unique_moves = {}
    for f in Lead._meta.concrete_fields:
        if f.primary_key or f.name in {"created_at", "updated_at", "properties"}:
            continue
        mine, theirs = getattr(primary, f.attname), getattr(duplicate, f.attname)
        if mine in (None, "", 0) and theirs not in (None, "", 0):
            if f.unique:
                unique_moves[f.attname] = theirs
            else:
                setattr(primary, f.attname, theirs)
    merged_from = list(primary.properties.get("_merged_from", []))
    merged_from.append({"id": duplicate.pk, "email": duplicate.email, "at": timezone.now().isoformat(), "reason": reason})
    primary.properties = {**duplicate.properties, **primary.properties, "_merged_from": merged_from}
    primary.created_at = min(primary.created_at, duplicate.created_at)
    merged_id = duplicate.pk
    duplicate.delete()  # frees its unique keys before primary takes them
    for attname, value in unique_moves.items():
        setattr(primary, attname, value)
    primary.save()
    hooks.leads_changed(ids=[primary.pk], fields=[f.name for f in Lead._meta.concrete_fields], source="merge")
    transaction.on_commit(
        lambda: signals.lead_merged.send(sender=Lead, lead=primary, merged_id=merged_id, actor=actor)
    )
    return primary
