"""The pull of a link type (associations / lookups), and one pull of either kind by its key."""
from __future__ import annotations

import itertools
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, TransientError
from martech.crm.models import Connection, PushState, SyncCursor, SyncRun
from martech.crm.services.allowance import _crashed, _record_call_error, paused_run
from martech.crm.services.apply import _locals_by_remote_ids, pulled_apply_page
from martech.crm.services.failures import PullOutcomes, _errors_summary, _link_retry, _pull_failures_settle
from martech.crm.services.pull import (
    PULL_COMMIT_EVERY,
    PullPosition,
    _position_save,
    _pull_commit,
    _run_close,
    pull_changes,
)


def _link_of(key: str) -> tuple[objects.ObjectType, objects.Link]:
    for obj in objects.all_types():
        for link in obj.links:
            if link.key == key:
                return obj, link
    raise LookupError(f"No CRM link {key!r} is registered.")


def _link_others(connection: Connection, connector: Connector, other: objects.ObjectType, remote_ids: set[str],
                 errors: list[str]) -> dict[str, Any]:
    """The local records pulled links name, by remote id. Ones not here yet
    are read in one query (``fetch_many``) and written like any pulled
    record (for leads ``lead_upsert``, the capture dedupe path)."""
    found = _locals_by_remote_ids(connection, other, remote_ids)
    missing = sorted(set(remote_ids) - found.keys())
    if missing and hasattr(connector, "fetch_many"):
        mappings = [m for m in connection.mappings.filter(object=other.key) if m.pulls]
        outcomes = PullOutcomes()  # recorded against the record's own type
        written: list[str] = []
        fetched = list(connector.fetch_many(other.key, missing, sorted({m.remote_field for m in mappings})))
        for start in range(0, len(fetched), PULL_COMMIT_EVERY):
            page = fetched[start:start + PULL_COMMIT_EVERY]
            results = pulled_apply_page(connection=connection, page=page, obj=other.key, mappings=mappings,
                                        connector=connector)
            for pulled, outcome in zip(page, results):
                if isinstance(outcome, ValidationError):
                    errors.append(f"{pulled.remote_id}: {outcomes.failed(pulled.remote_id, outcome)}")
                    continue
                outcomes.applied(pulled.remote_id)
                written.append(pulled.remote_id)
        found.update(_locals_by_remote_ids(connection, other, written))
        _pull_failures_settle(connection, other.key, outcomes)
    return found


LINK_BATCH = 200


def _link_removed_here(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent, other,
                       other_remote_id: str) -> bool:
    """Both sides had this link at the last sync and it is gone here: it was
    removed here and the deletion is not pushed yet, so a pull must not bring
    it back."""
    state = PushState.objects.filter(connection=connection, object=parent_type.key, local_id=parent.pk).first()
    synced = (state.links or {}).get(link.key, {}) if state is not None else {}
    return other_remote_id in synced and other.pk not in link.details(parent)


def _link_synced_set(connection: Connection, parent_type: objects.ObjectType, link: objects.Link, parent,
                     other, other_remote_id: str) -> None:
    """After a link pull both sides agree on it: record its fields as synced."""
    state = PushState.objects.select_for_update().filter(connection=connection, object=parent_type.key,
                                                         local_id=parent.pk).first()
    if state is None:
        return  # never pushed nor pulled: the first push records what both sides have
    fields = link.details(parent).get(other.pk)
    synced = dict((state.links or {}).get(link.key, {}))
    if fields is not None and synced.get(other_remote_id) != fields:
        synced[other_remote_id] = fields
        state.links = {**(state.links or {}), link.key: dict(sorted(synced.items()))}
        state.save(update_fields=["links"])


def links_pull(*, connection: Connection, link: str, full: bool = False, connector: Connector | None = None
               ) -> SyncRun:
    """Incremental pull of one link type (a Salesforce CampaignMember or
    OpportunityContactRole, ``objects.Link``) since its own stored cursor
    (``SyncCursor.object`` is the link key). Each changed link is written by
    ``Link.apply`` through the parent's service, which is idempotent, so a
    re-run (or a full pull) adds nothing. Per batch of LINK_BATCH links the
    records they name that are not here yet are read in one query and
    written through their own object type first.

    A link that cannot be applied (its parent not pulled yet, the person
    unknown to the CRM, a refused value) is counted as failed with its
    reason in the run's error and kept as a PullFailure (object: the link
    key), and the cursor moves past it like the other pulls; the next runs
    fetch the due ones again by id (``fetch_links``) ahead of the changed
    links. Links deleted in the CRM are not seen by a modification-time pull
    and stay here."""
    parent_type, spec = _link_of(link)
    other_type = objects.get(spec.other)
    paused = paused_run(connection, SyncRun.Kind.PULL, link)
    if paused is not None:
        return paused
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=link)
    connector = connector or connector_for(connection)
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=link)
    mode = "rescan" if full else "incremental"
    position = (PullPosition(cursor.value, dict(cursor.seen or {})) if not full
                else PullPosition(**(cursor.resume or {}).get("rescan", {})))

    def commit(final: bool) -> None:
        run.recovered += _pull_commit(connection, cursor, link, outcomes,
                                      lambda: _position_save(cursor, position, mode=mode, final=final))
    before = connector.stats.api_calls
    source = f"crm:{connection.provider}"
    errors: list[str] = []
    outcomes = PullOutcomes()
    try:
        # Earlier failures that are due first, through the same steps as the changed links.
        retry = _link_retry(connection, connector, link, run, outcomes, errors)
        # Links applied at the cursor's time before and unchanged are skipped (PullPosition).
        changed = (p for p in connector.pull_links(link, position.value) if not position.already(p))
        stream = itertools.chain(((p, False) for p in retry), ((p, True) for p in changed))
        while True:
            tagged = list(itertools.islice(stream, LINK_BATCH))
            if not tagged:
                break
            chunk = [p for p, _ in tagged]
            others = _link_others(connection, connector, other_type, {p.other_id for p in chunk if p.other_id},
                                  errors)
            parents = _locals_by_remote_ids(connection, parent_type, {p.parent_id for p in chunk})
            for pulled in chunk:
                try:
                    parent = parents.get(pulled.parent_id)
                    if parent is None:
                        raise ValidationError({parent_type.key: [
                            f"{parent_type.label} {pulled.parent_id} is not here yet (pull {parent_type.key} first)."]})
                    other = others.get(pulled.other_id) if pulled.other_id else None
                    if other is None:
                        raise ValidationError({spec.other: [
                            f"{other_type.label} {pulled.other_id or '(none)'} could not be found or pulled."]})
                    with transaction.atomic():
                        if spec.removable and _link_removed_here(connection, parent_type, spec, parent, other,
                                                                 pulled.other_id):
                            run.skipped += 1  # removed here; the parent's next push deletes it there
                        else:
                            spec.apply(parent=parent, other=other, fields=pulled.fields,
                                       remote_id=pulled.remote_id, modified_at=pulled.modified_at, source=source)
                            if spec.removable:
                                _link_synced_set(connection, parent_type, spec, parent, other, pulled.other_id)
                            run.pulled += 1
                    outcomes.applied(pulled.remote_id)
                except ValidationError as exc:
                    run.failed += 1
                    errors.append(f"{spec.label} {pulled.remote_id}: {outcomes.failed(pulled.remote_id, exc)}")
            for pulled, streamed in tagged:
                if streamed:
                    position.note(pulled)
            commit(final=False)
        commit(final=True)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
        commit(final=False)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        run.error = _errors_summary(errors)
        _run_close(connection, connector, run, calls_before=before)
    return run


def pull_one(*, connection: Connection, key: str, connector: Connector | None = None) -> SyncRun:
    """One pull of an object type (``pull_changes``) or a link type
    (``links_pull``) by its key: its due failures first, then its changes."""
    if any(link.key == key for obj in objects.all_types() for link in obj.links):
        return links_pull(connection=connection, link=key, connector=connector)
    return pull_changes(connection=connection, obj=key, connector=connector)
