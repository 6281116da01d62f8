"""Records and links deleted in the CRM, read and applied here."""
from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from martech import hooks
from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, TransientError
from martech.crm.models import Connection, PushState, SyncCursor, SyncRun
from martech.crm.services.allowance import _crashed, _record_call_error, paused_run
from martech.crm.services.apply import _locals_by_remote_ids, _parse_time
from martech.crm.services.links import _link_of
from martech.crm.services.owners import slow_ask_due
from martech.crm.services.pull import _cursor_advance, _run_close, pulled_link_keys

log = logging.getLogger(__name__)


# --- deletions made in the CRM -------------------------------------------------

def _deleted_cursor_key(key: str) -> str:
    """SyncCursor / SyncRun ``object`` for the deletions of ``key`` ("del:contact_role")."""
    return f"del:{key}"


def deleted_keys(*, connection: Connection, keys: list[str], connector: Connector | None = None) -> list[str]:
    """What ``deletions_pull`` reads after pulling ``keys``, in order: the
    links first (their parents and people are still found by their CRM ids),
    then the object types. Empty for a connector that cannot list deletions."""
    connector = connector or connector_for(connection)
    if not hasattr(connector, "deleted_since"):
        return []
    links = [link for key in keys for link in pulled_link_keys(connection=connection, obj=key, connector=connector)]
    # A connector may list the deletions of some types only (HubSpot: archived deals).
    listed = getattr(connector, "deletions_listed", None)
    return [*links, *(key for key in keys if listed is None or key in listed)]


def deletions_pull(*, connection: Connection, key: str, connector: Connector | None = None) -> SyncRun:
    """Records of object type or link ``key`` deleted in the CRM since the
    stored cursor (``SyncCursor.object`` = "del:<key>"): a modification-time
    pull cannot see them. One ask per CRM object (Salesforce Get Deleted);
    the run is recorded with ``object`` "del:<key>", ``pulled`` counting the
    deletions applied here and ``skipped`` those of records we never had.

    - A link (a CampaignMember, an OpportunityContactRole): taken off here
      through ``Link.remove`` (the parent's service); for a removable link
      also dropped from ``PushState.links``, so the parent's next push does
      not create it again.
    - A record (Lead, Contact, Account, Opportunity, Campaign, Task): ours is
      kept (the marketing record outlives the CRM's) and only its CRM id is
      cleared, with the sync state for it (hash, links), and the deletion is
      logged. Nothing sends it back by itself; its next change here (or a
      record that needs it, a deal its account) creates it there again.
      A type with ``remote_deleted`` (a deal) is deleted here instead,
      through its service.

    Idempotent: applying a deletion twice changes nothing, and the cursor
    (the CRM's last date covered) moves only after the whole window is read."""
    paused = paused_run(connection, SyncRun.Kind.PULL, _deleted_cursor_key(key))
    if paused is not None:
        return paused
    connector = connector or connector_for(connection)
    if not hasattr(connector, "deleted_since"):
        raise NotImplementedError(f"The {connection.provider} connector cannot list deleted records.")
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=_deleted_cursor_key(key))
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=_deleted_cursor_key(key))
    before = connector.stats.api_calls
    errors: list[str] = []
    try:
        page = connector.deleted_since(key, cursor.value)
        if page is not None:
            if page.gap:
                errors.append(f"deletions after {page.gap} and before the oldest date the CRM still lists were "
                              "not read (a full pull brings the records back; removed ones stay here)")
            if key in objects.get_link_keys():
                _deleted_links_apply(connection, connector, key, page.records, run, errors)
            else:
                _deleted_records_apply(connection, objects.get(key), page.records, run)
            _cursor_advance(cursor, page.cursor)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        run.error = "; ".join(errors)[:2000]
        _run_close(connection, connector, run, calls_before=before)
    return run


def _deleted_links_apply(connection: Connection, connector: Connector, key: str, deleted: list[tuple[str, str]],
                         run: SyncRun, errors: list[str]) -> None:
    parent_type, spec = _link_of(key)
    other_type = objects.get(spec.other)
    source = f"crm:{connection.provider}"
    # The deleted ids name neither parent nor person: read them back in one query per 200.
    where = connector.deleted_links(key, [remote_id for remote_id, _ in deleted]) if deleted and spec.remove else {}
    parents = _locals_by_remote_ids(connection, parent_type, {p for p, _ in where.values()})
    others = _locals_by_remote_ids(connection, other_type, {o for _, o in where.values()})
    for remote_id, deleted_at in deleted:
        if spec.remove is None:
            run.skipped += 1
            continue
        parent_id, other_id = where.get(remote_id, ("", ""))
        parent, other = parents.get(parent_id), others.get(other_id)
        try:
            with transaction.atomic():
                changed = spec.remove(parent=parent, other=other, remote_id=remote_id,
                                      deleted_at=_parse_time(deleted_at), source=source)
                if spec.removable and parent is not None and other_id:
                    _link_synced_drop(connection, parent_type, spec, parent, other_id)
        except ValidationError as exc:
            run.failed += 1
            errors.append(f"{spec.label} {remote_id}: {exc.message_dict if hasattr(exc, 'message_dict') else exc}")
            continue
        if changed:
            run.pulled += 1
        else:
            run.skipped += 1  # not here (never pulled, removed already, or its parent unknown)


def _link_synced_drop(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent,
                      other_remote_id: str) -> None:
    """A link deleted in the CRM is no longer one both sides have."""
    state = PushState.objects.select_for_update().filter(connection=connection, object=parent_type.key,
                                                         local_id=parent.pk).first()
    synced = dict((state.links or {}).get(link.key, {})) if state is not None else {}
    if other_remote_id in synced:
        del synced[other_remote_id]
        state.links = {**state.links, link.key: synced}
        state.save(update_fields=["links"])


def _deleted_records_apply(connection: Connection, obj: objects.ObjectType, deleted: list[tuple[str, str]],
                           run: SyncRun) -> None:
    source = f"crm:{connection.provider}"
    model = obj.model_class
    found = _locals_by_remote_ids(connection, obj, [remote_id for remote_id, _ in deleted])
    for remote_id, deleted_at in deleted:
        instance = found.get(remote_id)
        if instance is None:
            run.skipped += 1
            continue
        if obj.remote_deleted is not None:
            with transaction.atomic():
                removed = obj.remote_deleted(instance=instance, remote_id=remote_id,
                                             deleted_at=_parse_time(deleted_at), source=source)
            run.pulled += 1 if removed else 0
            run.skipped += 0 if removed else 1
            continue
        column = obj.id_field(connection.provider, remote_id)
        with transaction.atomic():
            if getattr(instance, column, None) == remote_id:
                model.objects.filter(pk=instance.pk).update(
                    **{column: None if model._meta.get_field(column).null else ""})
                # Announced like any write (source crm:<provider>, so not queued back).
                hooks.records_changed(obj.hook, ids=[instance.pk], fields=[column], source=source)
            # What was synced with that record is gone with it: the next push starts afresh.
            PushState.objects.filter(connection=connection, object=obj.key, local_id=instance.pk,
                                     remote_id=remote_id).update(remote_id="", payload_hash="", associations={},
                                                                 links={})
        log.warning("%s deleted %s %s at %s: %s #%s is kept here, its %s cleared", connection.provider,
                    obj.label, remote_id, deleted_at, obj.label, instance.pk, column)
        run.pulled += 1


def deletions_pull_recorded(*, connection: Connection, keys: list[str], connector: Connector | None = None,
                            if_due: bool = False) -> list[SyncRun]:
    """``deletions_pull`` for every key ``deleted_keys`` gives (the schedule
    and the command). ``if_due`` (the schedule): only when ``slow_ask_due``
    for the connection's deletions, else none (Get Deleted is one call per
    sObject: eight a run for an idle org)."""
    connector = connector or connector_for(connection)
    wanted = deleted_keys(connection=connection, keys=keys, connector=connector)
    if wanted and if_due and not slow_ask_due(connection=connection, key="del:*"):
        return []
    return [deletions_pull(connection=connection, key=key, connector=connector) for key in wanted]
