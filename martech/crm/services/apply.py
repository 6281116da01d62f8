"""Pulled records applied here: matched to local rows, merged field by field, written, marked synced."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from martech import configcache, hooks
from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector
from martech.crm.models import Connection, CrmOwner, FieldMapping, LifecycleMapping, OutboxItem, PushState
from martech.crm.services.payloads import (
    PayloadBuilder,
    PayloadError,
    _link_raw,
    _link_resolve,
    _remote_ids,
    record_hash,
)
from martech.crm.transforms import TransformError, read_local, to_local
from martech.db import run_in_transaction

log = logging.getLogger(__name__)


# --- pulled records applied ---------------------------------------------------

def _local_changed_since_sync(instance, obj: objects.ObjectType, state: PushState | None, pending: bool) -> bool:
    """Whether the record holds something the CRM does not have: a pending
    push (queued, or in flight: a change during a push keeps its row
    pending), no sync yet, or a change after the record was read for the
    last push (``pushed_at``)."""
    if pending or state is None:
        return True
    modified = getattr(instance, obj.modified_field, None)
    return state.pushed_at is not None and modified is not None and modified > state.pushed_at


def _same_as_sent(mapping: FieldMapping, pulled: Any, sent: dict[str, Any]) -> bool:
    """The CRM's value of this field is the one we last sent (or agreed on):
    our own push read back, not a change made there. Compared as local
    values, so the CRM's formatting of a number or a date does not count as
    a change."""
    if mapping.remote_field not in sent:
        return False
    ours = sent[mapping.remote_field]
    try:
        return to_local(mapping.kind, pulled, mapping.value_map) == to_local(mapping.kind, ours, mapping.value_map)
    except (TransformError, ArithmeticError, ValueError):
        return str(pulled) == str(ours)


def _parse_time(value: str) -> dt.datetime | None:
    try:
        return to_local("datetime", value)
    except TransformError:
        return None


def _locals_by_remote_ids(connection: Connection, obj: objects.ObjectType, remote_ids: Iterable[str]
                          ) -> dict[str, Any]:
    """The local records of these remote ids: by what we pushed or pulled
    before (PushState), else the remote id column. One query for the states,
    one for their records, one per id column for the rest, whatever the
    number of ids (a links pull asks for a batch of 200)."""
    wanted = {r for r in remote_ids if r}
    if not wanted:
        return {}
    model = obj.model_class.objects.select_related(*obj.select_related)
    by_state: dict[str, int] = {}
    for remote_id, local_id in (PushState.objects.filter(connection=connection, object=obj.key, remote_id__in=wanted)
                                .order_by("pk").values_list("remote_id", "local_id")):
        by_state.setdefault(remote_id, local_id)
    rows = model.in_bulk(set(by_state.values())) if by_state else {}
    found = {r: rows[local_id] for r, local_id in by_state.items() if local_id in rows}
    by_column: dict[str, set[str]] = {}
    for remote_id in wanted - found.keys():
        by_column.setdefault(obj.id_field(connection.provider, remote_id), set()).add(remote_id)
    for column, ids in by_column.items():
        for instance in model.filter(**{f"{column}__in": ids}).order_by("pk"):
            found.setdefault(getattr(instance, column), instance)
    return found


def _page_local_ids(connection: Connection, obj: objects.ObjectType, page: list, mappings: list[FieldMapping]
                    ) -> dict[str, int]:
    """The local record each pulled one is (remote id -> primary key), in
    the order of ``_locals_by_remote_ids`` and then the natural key: by what
    we pushed or pulled before (PushState), else the remote id column, else
    the natural key (email, domain). Two queries whatever the page's size:
    the states, then one look-up of keys only by every way at once; the
    records themselves are read once, by ``_page_lock`` (locked) or
    ``_page_locals``."""
    wanted = {p.remote_id for p in page if p.remote_id}
    by_state: dict[str, int] = {}
    if wanted:
        for remote_id, local_id in (PushState.objects.filter(connection=connection, object=obj.key,
                                                             remote_id__in=wanted)
                                    .order_by("pk").values_list("remote_id", "local_id")):
            by_state.setdefault(remote_id, local_id)
    by_column: dict[str, set[str]] = {}
    for remote_id in wanted:
        by_column.setdefault(obj.id_field(connection.provider, remote_id), set()).add(remote_id)
    keys: dict[str, list[str]] = {}
    if obj.key_field:
        remote = next((m.remote_field for m in mappings if m.local_field == obj.key_field), obj.key_field)
        for pulled in page:
            # The key columns hold normalized, lower-case values (emails,
            # domains): an exact IN on the lowered values is the case-blind
            # match and uses their unique index.
            value = (pulled.properties.get(remote) or "").strip().lower()
            if value:
                keys.setdefault(value, []).append(pulled.remote_id)
    lookup = Q(pk__in=set(by_state.values())) if by_state else Q()
    for column, ids in by_column.items():
        lookup |= Q(**{f"{column}__in": ids})
    if keys:
        lookup |= Q(**{f"{obj.key_field}__in": keys})
    if not lookup:
        return {}
    columns = sorted({*by_column, *([obj.key_field] if keys else [])})
    rows = list(obj.model_class.objects.filter(lookup).order_by("pk").values_list("pk", *columns))
    there = {row[0] for row in rows}
    found = {r: local_id for r, local_id in by_state.items() if local_id in there}
    for column in by_column:
        n = columns.index(column) + 1
        for row in rows:
            if row[n] in by_column[column]:
                found.setdefault(row[n], row[0])
    if keys:
        n = columns.index(obj.key_field) + 1
        for row in rows:
            for remote_id in keys.get(row[n], ()):
                found.setdefault(remote_id, row[0])
    return found


def _page_locals(connection: Connection, obj: objects.ObjectType, page: list, mappings: list[FieldMapping]
                 ) -> dict[str, Any]:
    """``_page_local_ids`` with the records (unlocked: the dry run)."""
    ids = _page_local_ids(connection, obj, page, mappings)
    rows = obj.model_class.objects.select_related(*obj.select_related).in_bulk(set(ids.values())) if ids else {}
    return {r: rows[pk] for r, pk in ids.items() if pk in rows}


class _OwnerUsers(dict):
    """Pulled owner id -> local user, asked once per id (a page's records share a few owners)."""

    def __init__(self, connection: Connection):
        super().__init__()
        self.connection = connection

    def __missing__(self, remote_owner_id: str):
        self[remote_owner_id] = user = _owner_user(self.connection, remote_owner_id)
        return user


def _owner_user(connection: Connection, remote_owner_id: str):
    """A pulled owner id -> the local user: the provider first (routing's
    reps carry CRM owner ids), else the pulled CRM owner's email."""
    from django.contrib.auth import get_user_model

    if not remote_owner_id:
        return None
    user_id = hooks.call("crm_owner_user_id", remote_owner_id=remote_owner_id, provider=connection.provider)
    User = get_user_model()
    if user_id:
        return User.objects.filter(pk=user_id).first()
    owner = CrmOwner.objects.filter(connection=connection, remote_id=remote_owner_id).exclude(email="").first()
    return User.objects.filter(email__iexact=owner.email).order_by("pk").first() if owner else None


@dataclass
class _PageState:
    """What deciding a pulled page needs about the records it touches, read
    in a fixed number of queries: their push states, which have a pending
    push, the records their associations name, the owners' users."""

    states: dict[int, PushState]
    pending: set[int]
    linked: dict[str, dict[str, Any]]  # associated object key -> remote id -> local record
    owners: _OwnerUsers
    stage_by_value: dict[str, str]


def _page_state(connection: Connection, object_type: objects.ObjectType, page: list, found: dict[str, Any],
                stage_by_value: dict[str, str]) -> _PageState:
    local_ids = {i.pk for i in found.values()}
    states = {s.local_id: s for s in PushState.objects.filter(connection=connection, object=object_type.key,
                                                              local_id__in=local_ids)} if local_ids else {}
    pending = set(OutboxItem.objects.filter(connection=connection, object=object_type.key, local_id__in=local_ids,
                                            status=OutboxItem.Status.PENDING)
                  .values_list("local_id", flat=True)) if local_ids else set()
    linked = {}
    for other in object_type.association_fields:
        first = {(p.associations.get(other) or [None])[0] for p in page} - {None}
        linked[other] = _locals_by_remote_ids(connection, objects.get(other), first)
    return _PageState(states, pending, linked, _OwnerUsers(connection), stage_by_value)


def _stage_by_value(connection: Connection, mappings: list[FieldMapping]) -> dict[str, str]:
    """The connection's lifecycle values -> stage keys, read only when a mapping pulls the stage."""
    return {lm.remote_value: lm.stage.key for lm in
            LifecycleMapping.objects.filter(connection=connection).select_related("stage")} \
        if any(m.local_field == "lifecycle_stage" for m in mappings) else {}


def _page_dry_run(connection: Connection, object_type: objects.ObjectType, page: list,
                  mappings: list[FieldMapping], stage_by_value: dict[str, str]) -> list[str | ValidationError]:
    """What applying the page would do, per record, with nothing locked or written."""
    found = _page_locals(connection, object_type, page, mappings)
    state = _page_state(connection, object_type, page, found, stage_by_value)
    outcomes: list[str | ValidationError] = []
    for pulled in page:
        try:
            data = _pulled_data(connection, object_type, pulled, mappings, found.get(pulled.remote_id), state)[0]
        except ValidationError as exc:
            outcomes.append(exc)
        else:
            outcomes.append("pulled" if data else "skipped")
    return outcomes


def _page_lock(connection: Connection, object_type: objects.ObjectType, page: list,
               mappings: list[FieldMapping]) -> dict[str, Any]:
    """Step 1: the page's local records (remote id -> record), found by
    their keys and read once, locked."""
    ids = _page_local_ids(connection, object_type, page, mappings)
    if not ids:
        return {}
    # The records first, then their outbox rows and push states (the one
    # lock order), in primary key order: an edit cannot land between the
    # decisions below and the writes, and a drain settles these records
    # before or after. Only the records' own rows are locked (``of``), not
    # the rows select_related joins.
    rows = {r.pk: r for r in object_type.model_class.objects.select_for_update(of=("self",))
            .select_related(*object_type.select_related).filter(pk__in=set(ids.values())).order_by("pk")}
    return {r: rows[pk] for r, pk in ids.items() if pk in rows}


def _page_decide(connection: Connection, object_type: objects.ObjectType, page: list, mappings: list[FieldMapping],
                 found: dict[str, Any], state: _PageState
                 ) -> tuple[list[str | ValidationError], list[tuple[int, Any, dict, bool, bool, bool]]]:
    """Step 2: per record, the data to write or its outcome now ('skipped',
    or the ValidationError naming the field). Returns the outcomes so far and
    the writes to make (``(index, instance, data, take_all, local_changed, pending)``)."""
    outcomes: list[str | ValidationError] = [""] * len(page)
    todo: list[tuple[int, Any, dict, bool, bool, bool]] = []
    for n, pulled in enumerate(page):
        instance = found.get(pulled.remote_id)
        try:
            data, take_all, local_changed, pending = _pulled_data(connection, object_type, pulled, mappings,
                                                                  instance, state)
        except ValidationError as exc:
            outcomes[n] = exc
            continue
        if data is None:
            outcomes[n] = "skipped"
        else:
            todo.append((n, instance, data, take_all, local_changed, pending))
    return outcomes, todo


def _pulled_associations_apply(connection: Connection, object_type: objects.ObjectType, record, pulled) -> None:
    """The pulled record's associations (other than the association fields)
    set on the written record, where the type applies them."""
    linked = {}
    for other, remote_ids in pulled.associations.items():
        if other in object_type.association_fields:
            continue
        # Ones we do not have yet come with their pull.
        others = _locals_by_remote_ids(connection, objects.get(other), remote_ids)
        linked[other] = [others[r] for r in remote_ids if r in others]
    object_type.apply_associations(instance=record, linked=linked, source=f"crm:{connection.provider}")


def _page_settle(connection: Connection, object_type: objects.ObjectType, page: list, todo: list, written: list,
                 outcomes: list[str | ValidationError], connector: Connector | None) -> None:
    """Step 4: each write's outcome; the associations of records taken whole;
    pending pushes of written records bumped; push states marked synced."""
    synced: list[tuple[Any, str, bool]] = []
    bump: set[int] = set()
    for (n, _instance, _data, take_all, local_changed, pending), record in zip(todo, written):
        pulled = page[n]
        if isinstance(record, ValidationError):
            outcomes[n] = record
            continue
        if record is None:
            outcomes[n] = "skipped"
            continue
        if pending:
            bump.add(record.pk)
        if take_all and object_type.apply_associations and pulled.associations:
            _pulled_associations_apply(connection, object_type, record, pulled)
        _associations_removed_apply(connection, object_type, record, pulled)
        synced.append((record, pulled.remote_id, local_changed))
        outcomes[n] = "pulled"
    if bump:
        # A push of these records is queued or in flight with values read
        # before this write: it must not settle as the latest one.
        OutboxItem.objects.filter(connection=connection, object=object_type.key, local_id__in=sorted(bump),
                                  status=OutboxItem.Status.PENDING).update(version=F("version") + 1)
    _mark_synced_many(connection, object_type, synced, connector)


def pulled_apply(*, connection: Connection, pulled, obj: str = "contact",
                 mappings: list[FieldMapping] | None = None, dry_run: bool = False,
                 connector: Connector | None = None) -> str:
    """Write one pulled record (``pulled_apply_page`` with a page of one);
    returns 'pulled', 'skipped' or raises ValidationError naming the field."""
    (outcome,) = pulled_apply_page(connection=connection, page=[pulled], obj=obj, mappings=mappings,
                                   dry_run=dry_run, connector=connector)
    if isinstance(outcome, ValidationError):
        raise outcome
    return outcome


def pulled_apply_page(*, connection: Connection, page: list, obj: str = "contact",
                      mappings: list[FieldMapping] | None = None, dry_run: bool = False,
                      connector: Connector | None = None,
                      then: Callable[[list[str | ValidationError]], None] | None = None
                      ) -> list[str | ValidationError]:
    """Write a page of pulled records through their object type's service,
    in one transaction; returns per record 'pulled', 'skipped' or the
    ValidationError naming the field that refused it (that record wrote
    nothing; the others are written).

    A fixed number of queries per page, not per record: the local records
    found in one look-up per way (``_page_locals``) and locked in primary key
    order, their push states and pending pushes read together
    (``_page_state``), the writes in bulk where the type has ``write_many``
    (leads: ``lead_upsert_many``, the capture dedupe path in bulk, whose
    lead hooks, stage transitions and signals are per page), else one
    ``write`` per record, then every push state stored in one upsert.
    ``then(outcomes)`` runs in the same transaction after the writes (run
    again with it on a conflict retry): the pull stores the page's failures
    and position there (``pull._page_apply``), so a page and its position
    commit together and a pull killed at any point never applies a page
    twice. (A dry run calls it with the outcomes, outside any transaction.)

    Conflicts (both sides changed since the last sync): under "system of
    record" each mapping whose system of record is the CRM takes the remote
    value and the others keep ours; under "most recent" the side modified
    last wins every field.

    In steps: the records locked (``_page_lock``), their state read
    (``_page_state``), each record decided (``_page_decide``), written
    (``_page_write``), settled (``_page_settle``)."""
    object_type = objects.get(obj)
    if mappings is None:
        mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
    stage_by_value = _stage_by_value(connection, mappings)
    if not page:
        return []
    if dry_run:
        outcomes = _page_dry_run(connection, object_type, page, mappings, stage_by_value)
        if then is not None:
            then(outcomes)
        return outcomes

    def write() -> list[str | ValidationError]:
        # The configuration the page's writes and hooks read (tombstones,
        # push mappings, list mirrors, workflows...): every token in one query.
        with configcache.snapshot():
            found = _page_lock(connection, object_type, page, mappings)
            state = _page_state(connection, object_type, page, found, stage_by_value)
            outcomes, todo = _page_decide(connection, object_type, page, mappings, found, state)
            written = _page_write(object_type, todo, source=f"crm:{connection.provider}")  # step 3
            _page_settle(connection, object_type, page, todo, written, outcomes, connector)
        if then is not None:
            then(outcomes)  # (after the records' locks, the one order: failures and the cursor last)
        return outcomes

    return run_in_transaction(write)


def _page_write(object_type: objects.ObjectType, todo: list, *, source: str) -> list:
    """The writes of a page: per entry of ``todo`` the written record, None
    (the service wrote nothing) or the ValidationError that refused it.
    In bulk through ``write_many`` where the type has it; when the bulk write
    meets a unique-key conflict (a record created meanwhile, two records
    claiming one key) it is rolled back and the page is written record by
    record, so each gets its own answer. A page of one (a webhook, a
    retried failure) goes through ``write``, the single service."""
    if object_type.write_many is not None and len(todo) > 1:
        try:
            with transaction.atomic():
                return object_type.write_many(items=[(t[1], t[2]) for t in todo], source=source)
        except IntegrityError:
            log.info("%s pull: a unique-key conflict in a page of %d; written one by one", object_type.key, len(todo))
    written: list = []
    for _n, instance, data, *_rest in todo:
        try:
            with transaction.atomic():
                written.append(object_type.write(instance=instance, data=data, source=source))
        except ValidationError as exc:
            written.append(exc)
    return written


def _pulled_data(connection: Connection, object_type: objects.ObjectType, pulled, mappings: list[FieldMapping],
                 instance, page: _PageState) -> tuple[dict[str, Any] | None, bool, bool, bool]:
    """What a pulled record writes here: (data or None to skip, whether it
    takes every field, whether the record has changes the CRM lacks, whether
    it has a pending push row).

    A field whose CRM value is the one we last sent (``PushState.pushed_properties``)
    was not changed there: over a record changed here since, it never
    replaces ours, whatever the conflict rule, so an edit made while its
    push was in flight is not overwritten by the older value coming back."""
    props = pulled.properties
    take_all, local_changed, pending, sent = True, False, False, {}
    if instance is not None:
        state = page.states.get(instance.pk)
        pending = instance.pk in page.pending
        local_changed = _local_changed_since_sync(instance, object_type, state, pending)
        sent = (state.pushed_properties or {}) if state is not None else {}
    if local_changed:
        if connection.conflict_rule == Connection.ConflictRule.MOST_RECENT:
            if all(_same_as_sent(m, props[m.remote_field], sent) for m in mappings if m.remote_field in props):
                return None, False, local_changed, pending  # nothing changed there that we did not send
            remote_at = _parse_time(pulled.modified_at)
            take_all = remote_at is not None and remote_at > getattr(instance, object_type.modified_field)
            if not take_all:
                return None, False, local_changed, pending
        else:
            take_all = False
    data: dict[str, Any] = {object_type.id_field(connection.provider, pulled.remote_id): pulled.remote_id}
    properties: dict[str, Any] = {}
    for m in mappings:
        if m.remote_field not in props:
            continue
        if m.local_field == "owner" and object_type.key == "contact":
            continue  # a lead's owner changes through routing / lead_set_owner, not a pull
        if m.local_field == object_type.key_field:
            value = (props.get(m.remote_field) or "").strip().lower()
            if value:
                data[m.local_field] = value
            continue
        if not take_all and m.system_of_record != FieldMapping.Owner.REMOTE:
            continue  # both sides changed: the local side is this field's system of record
        if local_changed and _same_as_sent(m, props.get(m.remote_field), sent):
            continue  # not changed in the CRM since our push: ours is newer
        raw = props.get(m.remote_field)
        if m.default and raw == m.default and (instance is None or read_local(instance, m.local_field) in (None, "")):
            continue  # the default we sent for an empty field ("[not provided]") is not pulled back into it
        if m.local_field == "lifecycle_stage" and page.stage_by_value:
            value = page.stage_by_value.get(raw)
        elif m.local_field == "owner":
            value = page.owners[raw or ""]
        else:
            try:
                value = to_local(m.kind, raw, m.value_map)
            except TransformError as exc:
                raise ValidationError({m.local_field: f"{m.remote_field}: {exc}"}) from None
        if value is None:
            continue
        if isinstance(value, list):
            value = ";".join(value) if not m.local_field.startswith("properties.") else value
        if m.local_field.startswith("properties."):
            properties[m.local_field.removeprefix("properties.")] = (
                str(value) if hasattr(value, "as_tuple") or isinstance(value, (dt.date,)) else value)
        else:
            data[m.local_field] = value
    if properties:
        data["properties"] = properties
    if take_all:
        for other, local_field in object_type.association_fields.items():
            remote_ids = pulled.associations.get(other) or []
            linked = page.linked.get(other, {}).get(remote_ids[0]) if remote_ids else None
            if linked is not None:  # one we do not have yet stays as it is until it is pulled
                data[local_field] = linked
    return data, take_all, local_changed, pending


def _mark_synced(connection: Connection, obj: objects.ObjectType, instance, remote_id: str,
                 connector: Connector | None = None, *, local_unsent: bool = False) -> None:
    _mark_synced_many(connection, obj, [(instance, remote_id, local_unsent)], connector)


def _mark_synced_many(connection: Connection, obj: objects.ObjectType, synced: list[tuple[Any, str, bool]],
                      connector: Connector | None = None) -> None:
    """After a pull both sides agree: store the payload we would now push
    (``synced``: (record, remote id, local_unsent)), so the record is not
    seen as changed here on the next pull and an identical push is skipped.
    The records read again in one query and every push state stored in one
    upsert, in local id order (the one order of push-state locks).

    ``local_unsent``: the record had changes the CRM does not have yet,
    and the fields the pull did not take kept them. Only the remote id is
    stored then; the last pushed hash stays, so the pending push still
    sends them (storing the hash would skip it)."""
    if not synced:
        return
    last = {instance.pk: (remote_id, unsent) for instance, remote_id, unsent in synced}  # a record pulled twice: the last
    unsent = {pk: remote_id for pk, (remote_id, flag) in last.items() if flag}
    if unsent:
        PushState.objects.bulk_create(
            [PushState(connection=connection, object=obj.key, local_id=pk, remote_id=remote_id)
             for pk, remote_id in sorted(unsent.items())],
            update_conflicts=True, unique_fields=["connection", "object", "local_id"], update_fields=["remote_id"])
    agreed = sorted(pk for pk in last if pk not in unsent)
    if not agreed:
        return
    builder = PayloadBuilder(connection, obj)
    link_specs = objects.links_synced_by(connector or connector_for(connection), obj) if obj.links else []
    now = timezone.now()
    states = []
    instances = list(obj.model_class.objects.select_related(*obj.select_related).filter(pk__in=agreed).order_by("pk"))
    builder.prefetch(instances)
    # The payloads first, then the CRM ids of every record they point at in
    # one look-up per type (``_remote_ids``), not one per record.
    read: list[tuple[Any, dict | None, dict, dict]] = []
    wanted: dict[str, set[int]] = {}
    for instance in instances:
        try:
            properties = builder.payload(instance)
            links = obj.associations(instance) if obj.associations else {}
            raw = _link_raw(link_specs, instance)
        except PayloadError:
            read.append((instance, None, {}, {}))
            continue
        for key, ids in links.items():
            wanted.setdefault(key, set()).update(i for i in ids if i)
        for link in link_specs:
            wanted.setdefault(link.other, set()).update(raw[link.key])
        read.append((instance, properties, links, raw))
    remote = _remote_ids(connection, wanted) if any(wanted.values()) else {}
    for instance, properties, links, raw in read:
        if properties is None:
            digest, associations = "", None
        else:
            associations = {k: sorted(remote[(k, i)] for i in v if (k, i) in remote) for k, v in sorted(links.items())}
            associations = {k: v for k, v in associations.items() if v}
            digest = record_hash(properties, associations, _link_resolve(link_specs, raw, remote)[0])
        states.append(PushState(connection=connection, object=obj.key, local_id=instance.pk,
                                remote_id=last[instance.pk][0], payload_hash=digest, pushed_at=now,
                                pushed_properties=properties, associations=associations))
    PushState.objects.bulk_create(
        states, update_conflicts=True, unique_fields=["connection", "object", "local_id"],
        update_fields=["remote_id", "payload_hash", "pushed_at", "pushed_properties", "associations"],
        batch_size=500)


def _associations_removed_apply(connection: Connection, obj: objects.ObjectType, instance, pulled) -> None:
    """Links both sides had at the last sync (``PushState.associations``)
    that the pulled record no longer has were removed in the CRM: removed
    here through ``ObjectType.remove_associations``. Only association types
    the connector read (a key in ``pulled.associations``) are compared, and a
    link added here and not pushed yet is not in the state, so it stays."""
    if obj.remove_associations is None:
        return
    state = PushState.objects.select_for_update().filter(connection=connection, object=obj.key,
                                                         local_id=instance.pk).first()
    if state is None or not state.associations:
        return  # never synced, or not known which links both sides had
    removed: dict[str, list] = {}
    kept = dict(state.associations)
    for other, synced in state.associations.items():
        if other not in pulled.associations:
            continue
        gone = sorted(set(synced) - set(pulled.associations[other]))
        if gone:
            removed[other] = list(_locals_by_remote_ids(connection, objects.get(other), gone).values())
            kept[other] = [r for r in synced if r not in gone]
    if not removed:
        return
    obj.remove_associations(instance=instance, removed=removed, source=f"crm:{connection.provider}")
    state.associations = {k: v for k, v in kept.items() if v}
    state.save(update_fields=["associations"])
