"""Segment mirrors: a segment's members kept as a CRM list, incrementally,
through the outbox.

A ``ListMirror`` ties a segment (martech.scoring: its members are computed in
SQL from its condition) to a connection: a MANUAL (static) contact list in
HubSpot (lists v3), or a Campaign's CampaignMembers in Salesforce. The
mirror is a record of object type ``list`` in the object registry, so it
goes through the one outbox: claimed under the drain's lease, retried on
its backoff, a dead letter after MAX_ATTEMPTS, counted in the health page.

What is sent: the difference between the segment now and the members both
sides had at the last sync (``ListMember`` rows): adds and removes only, in
calls of the connector's ``list_batch`` ids, each call's outcome recorded
when it returns, so a failure later in the run does not resend it. Every
call is idempotent in the CRM (adding a member or removing a non-member
changes nothing), so a retry after a lost answer adds no duplicate.

A member whose lead is not in the CRM yet (no CRM id) makes the list wait:
the others are sent, the lead is queued for push, and the mirror's outbox
row is failed with "waiting for ..." (the engine's association rule), so it
is tried again after its backoff, when the lead is there.

When a mirror is queued:
- a lead write touching a field the segment's condition reads (or a new
  lead; an account write for ``account.*`` conditions), in the write's own
  transaction (martech.hooks), like every other outbox row;
- the sweep (``lists_sweep``, scheduled) for what no write announces: a
  condition on time (``latest_touch_at < now - 30 days``), a segment whose
  condition was edited; it queues only mirrors whose membership differs;
- saving or resuming a mirror (``mirror_save``, ``mirror_set_active``).

A paused mirror (``is_active`` off) is not queued, and a row already queued
for it is settled without a call; resuming queues it, and the difference
since the last sync is sent then.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from martech import configcache, hooks
from martech.conditions import ConditionError
from martech.crm import objects, outbox
from martech.crm.connectors.base import AuthError, PermanentError, RateLimited, TransientError
from martech.crm.models import Connection, ListMember, ListMirror, OutboxItem
from martech.db import run_in_transaction

log = logging.getLogger(__name__)

KEY = "list"
MIRRORS_KEY = "crm.list_mirrors"
ERRORS_SHOWN = 5  # refused members named in an error message (the count is always given)


# --- which writes queue a mirror ---------------------------------------------------

@dataclass(frozen=True)
class _Watch:
    mirror_id: int
    connection_id: int
    lead_fields: frozenset[str]  # Lead model fields the condition reads
    account_fields: frozenset[str]  # Account fields it reads (account.<field>)


def _lead_field(path: str) -> str:
    if path.startswith("properties."):
        return "properties"
    if path == "email_domain":
        return "email"
    if path == "account" or path.startswith("account."):
        return "account"
    return path


def _load_watches() -> tuple[_Watch, ...]:
    from martech.scoring.selectors import segment_condition

    out = []
    for mirror in (ListMirror.objects.filter(is_active=True, connection__is_active=True)
                   .select_related("segment").order_by("pk")):
        try:
            paths = segment_condition(mirror.segment).fields
        except ConditionError:
            continue  # the push fails with the reason; the sweep does not hide it either
        out.append(_Watch(mirror.pk, mirror.connection_id, frozenset(_lead_field(p) for p in paths),
                          frozenset(p.removeprefix("account.") for p in paths if p.startswith("account."))))
    return tuple(out)


def _queue(mirrors: list[tuple[int, int]]) -> None:
    outbox.enqueue((connection_id, KEY, mirror_id) for mirror_id, connection_id in mirrors)


def _lead_changed(*, ids, fields, created, source) -> None:
    """A lead write: queue the mirrors whose condition reads a changed field
    (any, for a new lead). Cheap: the watches are cached per process."""
    watches = configcache.cached(MIRRORS_KEY, _load_watches)
    _queue([(w.mirror_id, w.connection_id) for w in watches if created or w.lead_fields & fields])


def _account_changed(*, ids, fields, created, source) -> None:
    watches = configcache.cached(MIRRORS_KEY, _load_watches)
    _queue([(w.mirror_id, w.connection_id) for w in watches if w.account_fields & fields])


# --- the membership difference ------------------------------------------------------

def _members_now(mirror: ListMirror, now=None) -> set[int]:
    """The segment's lead ids now (its compiled condition, in SQL)."""
    from martech.models import Lead
    from martech.scoring.selectors import segment_condition

    return set(Lead.objects.filter(segment_condition(mirror.segment).to_q(now=now)).values_list("pk", flat=True))


def mirror_pending(*, mirror: ListMirror) -> tuple[int, int]:
    """(leads to add, members to remove) since the last sync: the admin's
    status, and what the sweep asks."""
    wanted = _members_now(mirror)
    synced = set(ListMember.objects.filter(mirror=mirror).values_list("lead_id", flat=True))
    return len(wanted - synced), len(synced - wanted)


def lists_sweep(*, now=None) -> int:
    """Queue every active mirror whose segment's members differ from the
    ones last synced (the schedule; conditions on time change with no write).
    Returns how many were queued."""
    queued = []
    for mirror in (ListMirror.objects.filter(is_active=True, connection__is_active=True, connection__stopped_reason="")
                   .select_related("segment").order_by("pk")):
        try:
            wanted = _members_now(mirror, now)
        except ConditionError as exc:
            ListMirror.objects.filter(pk=mirror.pk).update(last_error=f"segment condition: {exc.messages[0]}")
            continue
        synced = set(ListMember.objects.filter(mirror=mirror).values_list("lead_id", flat=True))
        if wanted != synced or mirror.last_synced_at is None:
            queued.append((mirror.pk, mirror.connection_id))
    _queue(queued)
    return len(queued)


# --- admin / API services -------------------------------------------------------------

def mirror_save(*, mirror: ListMirror | None = None, segment, connection: Connection, name: str = "",
                remote_id: str = "", is_active: bool = True) -> ListMirror:
    """Create or change a mirror, and queue it (its first push finds or makes
    the list). A new remote id means another list: what was synced with the
    old one is forgotten, and the new one's members are read at its first
    push."""
    from martech.crm.connectors import connector_for

    mirror = mirror or ListMirror()
    # Compared with the stored row: the admin's form has already set the new values on ``mirror``.
    before = ListMirror.objects.filter(pk=mirror.pk).values("remote_id", "connection_id").first() if mirror.pk \
        else None
    changed_list = before is not None and (before["remote_id"] != remote_id.strip()
                                           or before["connection_id"] != connection.pk)
    mirror.segment, mirror.connection = segment, connection
    mirror.name, mirror.remote_id, mirror.is_active = name.strip(), remote_id.strip(), is_active
    try:
        declares = KEY in (getattr(type(connector_for(connection)), "objects", {}) or {})
    except NotImplementedError:
        declares = False
    if not declares:
        raise ValidationError({"connection": [f"The {connection.provider} connector does not mirror segments."]})
    if connection.provider == "hubspot":
        clash = (ListMirror.objects.filter(connection=connection).exclude(pk=mirror.pk)
                 .select_related("segment"))
        if any(other.remote_name.lower() == mirror.remote_name.lower() for other in clash):
            raise ValidationError({"name": [f"Another mirror already uses the HubSpot list name "
                                            f"{mirror.remote_name!r}; list names are unique per portal."]})
    mirror.full_clean()

    def write() -> ListMirror:
        mirror.save()
        if changed_list:
            ListMember.objects.filter(mirror=mirror).delete()
            ListMirror.objects.filter(pk=mirror.pk).update(last_synced_at=None, member_count=0)
        if mirror.is_active:
            _queue([(mirror.pk, mirror.connection_id)])
        return mirror

    return run_in_transaction(write)


def mirror_set_active(*, mirrors, active: bool) -> int:
    """Pause or resume mirrors (admin actions). Resuming queues them: the
    difference since their last sync is sent."""
    with transaction.atomic():
        ids = list(ListMirror.objects.filter(pk__in=[m.pk for m in mirrors]).select_for_update().order_by("pk")
                   .values_list("pk", "connection_id"))
        ListMirror.objects.filter(pk__in=[pk for pk, _ in ids]).update(is_active=active, updated_at=timezone.now())
        configcache.bump(MIRRORS_KEY)  # update() sends no post_save: the hooks' cache learns it here
        if active:
            _queue(ids)
    return len(ids)


# --- the push (ObjectType.push of "list") -------------------------------------------

@dataclass
class _Outcome:
    added: int = 0
    removed: int = 0
    waiting: list[int] = field(default_factory=list)  # lead ids not in the CRM yet
    refused: dict[int, str] = field(default_factory=dict)  # lead id -> the CRM's reason


def lists_push(connection, connector, builder, items: list[OutboxItem], run) -> None:
    """The drain's push of claimed ``list`` rows: one mirror at a time."""
    from martech.crm import services

    for n, item in enumerate(items):
        mirror = ListMirror.objects.select_related("segment").filter(pk=item.local_id).first()
        if mirror is None:
            services._fail([item], f"segment mirror #{item.local_id} deleted", dead_now=True)
            run.failed += 1
            continue
        if not mirror.is_active:
            services._finish(connection, builder.obj, [item])  # paused: nothing sent; resuming queues it again
            run.skipped += 1
            continue
        before = connector.stats.api_calls
        try:
            outcome = _sync(connection, connector, mirror)
        except AuthError:
            services._count_calls(connection, connector.stats.api_calls - before)
            services._release([item])
            raise
        except RateLimited as exc:
            # A limit says nothing about the mirror: due again at the pause end,
            # no attempt charged; the drain pauses the connection.
            services._count_calls(connection, connector.stats.api_calls - before)
            services._release(items[n:], at=services._pause_for(connection, exc))
            raise
        except (TransientError, PermanentError, ConditionError) as exc:
            services._count_calls(connection, connector.stats.api_calls - before)
            message = (f"segment condition: {exc.messages[0]}" if isinstance(exc, ConditionError)
                       else str(exc))
            if not isinstance(exc, ConditionError):
                services._record_error(connection, message)
            ListMirror.objects.filter(pk=mirror.pk).update(last_error=message[:4000])
            services._fail([item], message, dead_now=isinstance(exc, ConditionError))
            run.failed += 1
            continue
        services._count_calls(connection, connector.stats.api_calls - before)
        problems = []
        if outcome.refused:
            shown = "; ".join(f"lead #{lead_id}: {reason}" for lead_id, reason in
                              sorted(outcome.refused.items())[:ERRORS_SHOWN])
            problems.append(f"{len(outcome.refused)} member(s) refused by the CRM ({shown})")
        if outcome.waiting:
            run.queued_waits = True  # the contacts queued go in this drain's next claim
            shown = ", ".join(f"contact #{i}" for i in outcome.waiting[:ERRORS_SHOWN])
            more = f" and {len(outcome.waiting) - ERRORS_SHOWN} more" if len(outcome.waiting) > ERRORS_SHOWN else ""
            problems.append(f"waiting for {shown}{more} to be pushed first")
        ListMirror.objects.filter(pk=mirror.pk).update(last_error="; ".join(problems)[:4000])
        if problems:
            # Sent what could go; the row is due again after its backoff for the rest.
            services._fail([item], "; ".join(problems))
            if outcome.refused:
                run.failed += 1
            else:
                run.skipped += 1
            continue
        services._finish(connection, builder.obj, [item])
        run.pushed += 1


def _sync(connection: Connection, connector, mirror: ListMirror) -> _Outcome:
    from martech.crm import services

    if not mirror.remote_id or mirror.last_synced_at is None:
        remote_id, existed = connector.list_ensure(name=mirror.remote_name, remote_id=mirror.remote_id,
                                                   key=f"list:{mirror.pk}")
        if remote_id != mirror.remote_id:
            mirror.remote_id = remote_id
            ListMirror.objects.filter(pk=mirror.pk).update(remote_id=remote_id)
        if existed:
            _adopt(connection, connector, mirror)
    wanted = _members_now(mirror)
    synced = {lead_id: (remote_id, member_id) for lead_id, remote_id, member_id in
              ListMember.objects.filter(mirror=mirror).values_list("lead_id", "remote_id", "member_id")}
    to_add = sorted(wanted - synced.keys())
    to_remove = sorted(synced.keys() - wanted)
    remote = services._remote_ids(connection, {"contact": set(to_add)})
    outcome = _Outcome(waiting=[i for i in to_add if ("contact", i) not in remote])
    if outcome.waiting:
        # The engine's association rule: the lead goes first, the list waits for it.
        OutboxItem.objects.bulk_create([OutboxItem(connection=connection, object="contact", local_id=i)
                                        for i in outcome.waiting], ignore_conflicts=True)
    ops = [("remove", i, synced[i][0]) for i in to_remove]
    ops += [("add", i, remote[("contact", i)]) for i in to_add if ("contact", i) in remote]
    batch = connector.list_batch
    for start in range(0, len(ops), batch):
        chunk = ops[start:start + batch]
        adds = {person: lead_id for kind, lead_id, person in chunk if kind == "add"}
        removes = {person: lead_id for kind, lead_id, person in chunk if kind == "remove"}
        change = connector.list_change(mirror.remote_id, add=list(adds),
                                       remove={person: synced[lead_id][1] for person, lead_id in removes.items()})
        _record(mirror, added={adds[p]: (p, m) for p, m in change.added.items() if p in adds},
                removed=[removes[p] for p in change.removed if p in removes])
        outcome.added += len(change.added)
        outcome.removed += len(change.removed)
        outcome.refused.update({adds[p]: reason for p, reason in change.errors.items() if p in adds})
    ListMirror.objects.filter(pk=mirror.pk).update(
        last_synced_at=timezone.now(), member_count=ListMember.objects.filter(mirror=mirror).count())
    return outcome


def _adopt(connection: Connection, connector, mirror: ListMirror) -> None:
    """A list (campaign) that was there before the mirror's first sync: its
    members that are leads here are recorded as synced, so the push removes
    those not in the segment and does not add the others again. Members that
    are not leads here are left alone."""
    from martech.crm import services

    members = connector.list_members(mirror.remote_id)
    leads = services._locals_by_remote_ids(connection, objects.get("contact"), list(members))
    _record(mirror, added={lead.pk: (person, members[person]) for person, lead in leads.items()}, removed=[])


def _record(mirror: ListMirror, *, added: dict[int, tuple[str, str]], removed: list[int]) -> None:
    """What one call did, in its own transaction: the mirror row first (the
    record, as every write path locks it), then its member rows (its push
    state)."""
    if not added and not removed:
        return
    now = timezone.now()

    def write() -> None:
        list(ListMirror.objects.select_for_update().filter(pk=mirror.pk).values_list("pk", flat=True))
        if removed:
            ListMember.objects.filter(mirror=mirror, lead_id__in=removed).delete()
        if added:
            ListMember.objects.bulk_create(
                [ListMember(mirror=mirror, lead_id=lead_id, remote_id=person, member_id=member_id, synced_at=now)
                 for lead_id, (person, member_id) in sorted(added.items())],
                update_conflicts=True, unique_fields=["mirror", "lead_id"],
                update_fields=["remote_id", "member_id", "synced_at"], batch_size=1000)

    run_in_transaction(write)


# --- registration -------------------------------------------------------------------

def _no_write(*, instance, data, source):
    raise ValidationError({"list": ["Segment mirrors are pushed, never pulled."]})


def register() -> None:
    """From CrmConfig.ready: the ``list`` object type (pushed after the
    contacts it names), the lead and account hooks, and the cache of what
    each mirror's condition reads."""
    from martech.scoring.models import Segment

    objects.register(objects.ObjectType(
        key=KEY, label="Segment mirror (CRM list)", model="crm.ListMirror", hook="lists", write=_no_write,
        order=95, push=lists_push))
    hooks.on_leads_changed(_lead_changed)
    hooks.on_accounts_changed(_account_changed)
    configcache.watch(MIRRORS_KEY, ListMirror, Segment, Connection)
