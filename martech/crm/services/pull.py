"""The pull of an object type: changed records read (list or bulk), applied a page per commit."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, TransientError
from martech.crm.models import Connection, FieldMapping, SyncCursor, SyncRun
from martech.crm.services.allowance import _count_calls, _crashed, _record_call_error, paused_run
from martech.crm.services.apply import pulled_apply_page
from martech.crm.services.failures import (
    PullOutcomes,
    _errors_summary,
    _pull_failures_due,
    _pull_failures_settle,
    _refetch_refused,
    _tally_page,
)
from martech.db import run_in_transaction

log = logging.getLogger(__name__)


# --- pull position: the cursor's time and the records applied at it -----------
# A pull reads from its cursor's time inclusive: Salesforce's SystemModstamp has
# whole seconds and a mass update gives hundreds of records one; HubSpot's
# search restarts its windows at a time shared by several. The records already
# applied at exactly that time are kept beside it (``SyncCursor.seen``: remote
# id -> a digest of what was applied) and skipped unless they changed since,
# so a tie is neither lost nor applied twice. The position is committed every
# PULL_COMMIT_EVERY records (one page), in the page's own transaction with the
# failures noted so far (``_page_apply``), so a pull killed mid-way resumes
# from its last page instead of from the start and never applies a page twice.

PULL_COMMIT_EVERY = 200
# Records a connector that reads without the database (``read_ahead``) may
# have read beyond the page being written: the next page's call is on the
# wire while this one is applied. Nothing is committed ahead: the cursor
# moves with the written pages only.
READ_AHEAD = 2 * PULL_COMMIT_EVERY
# The same for a full import's list pages (HubSpot's 100 records each), in pages.
LIST_READ_AHEAD = 2
# A full import through a list endpoint (HubSpot) reads records in id order,
# not by time: afterwards the incremental pull takes over from the time the
# import started, less this margin (clocks, the search index's lag).
FULL_IMPORT_OVERLAP = dt.timedelta(minutes=5)


def pulled_digest(pulled) -> str:
    """A short digest of what a pulled record or link carries: a tie at the
    cursor's time read again is skipped only while it is unchanged."""
    if hasattr(pulled, "properties"):
        # Properties only: a connector tells a tie before reading its associations.
        data = [pulled.properties]
    else:
        data = [pulled.parent_id, pulled.other_id, pulled.fields]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PullPosition:
    """How far a pull got: the newest modification time handled and the
    records handled at exactly that time (remote id -> digest)."""

    value: str = ""
    seen: dict[str, str] = field(default_factory=dict)

    def already(self, pulled) -> bool:
        """Applied at this very time before, unchanged: nothing to do."""
        return bool(self.value) and pulled.modified_at == self.value \
            and self.seen.get(pulled.remote_id) == pulled_digest(pulled)

    def note(self, pulled) -> None:
        at = pulled.modified_at
        if at > self.value:
            self.value, self.seen = at, {}
        if at == self.value:
            self.seen[pulled.remote_id] = pulled_digest(pulled)

    def as_json(self) -> dict:
        return {"value": self.value, "seen": self.seen}


def _position_save(cursor: SyncCursor, position: PullPosition, *, mode: str, final: bool) -> None:
    """Store a pull's progress. ``incremental``: the cursor itself.
    ``rescan`` (a full pull reading from the beginning by time): kept in
    ``resume`` so a rerun goes on from there, and folded into the cursor when
    done (the cursor never goes back). ``list`` (a full import through a list
    endpoint): ``resume`` holds the list's ``after``; done, the cursor moves
    up to when the import started."""
    cursor.refresh_from_db(fields=["value", "seen", "resume"])
    resume = dict(cursor.resume or {})
    if mode == "incremental":
        cursor.value, cursor.seen = position.value, position.seen
    elif mode == "rescan":
        if not final:
            resume["rescan"] = position.as_json()
        else:
            resume.pop("rescan", None)
            if position.value > cursor.value:
                cursor.value, cursor.seen = position.value, position.seen
            elif position.value == cursor.value:
                cursor.seen = {**(cursor.seen or {}), **position.seen}
    cursor.resume = resume
    cursor.save(update_fields=["value", "seen", "resume", "updated_at"])


class _ReadAhead:
    """Iterate ``records`` in a thread of its own, at most ``depth`` records
    ahead of the consumer, in their order; an exception of the reader is
    raised to the consumer where it happened (after the records read before
    it). ``close`` stops the reader after its call under way (its calls are
    counted before the run closes) and waits for it. The reader must not
    touch the database (connectors say so with ``read_ahead``)."""

    _DONE = object()

    def __init__(self, records: Iterable, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(records,), name="crm-pull-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, records: Iterable) -> None:
        try:
            for record in records:
                if not self._put((record, None)):
                    return
            self._put((self._DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((self._DONE, exc))

    def __iter__(self) -> Iterator:
        while True:
            record, exc = self._queue.get()
            if exc is not None:
                raise exc
            if record is self._DONE:
                return
            yield record

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _pull_commit(connection: Connection, cursor: SyncCursor, key: str, outcomes: PullOutcomes,
                 save: Any) -> int:
    """A link pull's batch done (``links_pull``, whose links commit one by
    one): its failures noted and the position stored in one transaction;
    returns the retried records that went through. An object pull's page
    commits with its position instead (``_page_apply``)."""
    def write() -> int:
        recovered = _pull_failures_settle(connection, key, outcomes)
        save()
        return recovered

    recovered = run_in_transaction(write)
    outcomes.result.clear()
    outcomes.gone.clear()
    outcomes.retried.clear()
    return recovered


@dataclass
class _Tally:
    """A page's counts, added to its run once the page is committed."""

    pulled: int = 0
    failed: int = 0
    skipped: int = 0


def _page_apply(connection: Connection, key: str, page: list, outcomes: PullOutcomes, run: SyncRun,
                errors: list[str], *, write, save: Any | None) -> None:
    """A pulled page's writes, its failures noted and its position stored
    (``save``) in ONE transaction: ``write(then)`` is ``pulled_apply_page``,
    which runs ``then`` after the writes in its transaction; a page with no
    record left to write stores its position alone. Killed at any point,
    either the page and its position are both committed or neither is, so
    the next pull neither loses it nor applies it again. What the run
    counts is taken from the attempt that committed (a conflict retry runs
    ``then`` again from the start). ``save`` None (a dry run): only counted.

    The locks: the page's records (then their outbox rows and push states)
    first, as every write path; the pull failures and the cursor row last,
    a few statements before the commit that releases them all (one commit a
    page instead of two); the failures in remote id order. No other write
    path locks a cursor row before records, so two overlapping pulls of one
    type wait for each other, in that order, and never deadlock."""
    done: dict[str, Any] = {}

    def then(results: list) -> None:
        trial = PullOutcomes(dict(outcomes.result), set(outcomes.retried), set(outcomes.gone))
        tally, page_errors = _Tally(), []
        _tally_page(tally, trial, page_errors, page, results)
        recovered = 0
        if save is not None:
            recovered = _pull_failures_settle(connection, key, trial)
            save()
        done.update(tally=tally, errors=page_errors, outcomes=trial, recovered=recovered)

    if page:
        write(then)
    elif save is not None:
        run_in_transaction(lambda: then([]))
    else:
        return
    tally = done["tally"]
    run.pulled, run.failed, run.skipped = run.pulled + tally.pulled, run.failed + tally.failed, \
        run.skipped + tally.skipped
    errors.extend(done["errors"])
    if save is not None:
        run.recovered += done["recovered"]
        outcomes.result.clear()
        outcomes.gone.clear()
        outcomes.retried.clear()
    else:
        outcomes.result.update(done["outcomes"].result)


def pull_changes(*, connection: Connection, obj: str = "contact", full: bool = False, dry_run: bool = False,
                 connector: Connector | None = None, progress=None) -> SyncRun:
    """Incremental pull of one object type from its stored cursor (HubSpot:
    search on the last-modified date in windows under the 10,000 cap;
    Salesforce: SOQL on SystemModstamp), the cursor's time included and the
    records applied at it skipped (``PullPosition``). Each record goes
    through the object type's write service. The cursor is committed with
    every page (``PULL_COMMIT_EVERY``, one transaction: ``_page_apply``),
    so a pull killed mid-way resumes there.

    ``full``: every record. Through the connector's list endpoint where it
    has one (``list_pages``, HubSpot: no cap), resumable at its last page
    (``SyncCursor.resume``); else from the beginning by time, resumable too.

    First the due failures of earlier pulls are fetched again and applied
    (``_pull_retry``; ``run.retried``/``run.recovered``). A record refused
    now (ValidationError) is recorded as a PullFailure and the rest go on;
    the run's error lists every failure. A dry run neither retries nor records."""
    object_type = objects.get(obj)
    paused = paused_run(connection, SyncRun.Kind.PULL, obj)
    if paused is not None:
        return paused
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=obj)
    connector = connector or connector_for(connection)
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=obj)
    mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
    before = connector.stats.api_calls
    outcomes = PullOutcomes()
    errors: list[str] = []
    mode = "incremental" if not full else "list" if hasattr(connector, "list_pages") else "rescan"
    if mode == "incremental":
        position = PullPosition(cursor.value, dict(cursor.seen or {}))
    else:
        position = PullPosition(**(cursor.resume or {}).get("rescan", {}))

    def apply(page: list, save) -> None:
        """A page written and ``save`` (its position) committed with it, in one transaction."""
        def write(then) -> None:
            pulled_apply_page(connection=connection, page=page, obj=obj, mappings=mappings, dry_run=dry_run,
                              connector=connector, then=then)

        _page_apply(connection, obj, page, outcomes, run, errors, write=write, save=None if dry_run else save)
        if progress is not None:
            progress.update(len(page))

    page: list = []
    reader: _ReadAhead | None = None

    def apply_and_commit(final: bool) -> None:
        """One page applied and its position stored: one transaction."""
        for pulled in page:
            position.note(pulled)  # (noting a record twice changes nothing: a retried page notes again)
        apply(page, lambda: _position_save(cursor, position, mode=mode, final=final))
        page.clear()

    try:
        remote_fields = sorted({m.remote_field for m in mappings})
        if not dry_run:
            _pull_retry(connection, connector, object_type, mappings, run, outcomes, errors, progress)
        if mode != "list" and not dry_run and _bulk_wanted(connector, cursor, obj, remote_fields, position,
                                                           full=full):
            mode = "bulk"
            _pull_bulk(connection, connector, cursor, obj, remote_fields, apply, outcomes, run,
                       full=position if full else None)
        elif mode == "list":
            _pull_list(connection, connector, cursor, object_type.key, remote_fields, apply, outcomes, run,
                       dry_run=dry_run)
        else:
            records = connector.pull_since(object_type.key, position.value, remote_fields, skip=position.already)
            if getattr(connector, "read_ahead", False):
                # (``skip`` then runs in the reader: it only ever skips a record noted
                # at that time with that digest, applied already whenever it reads.)
                reader = records = _ReadAhead(records, READ_AHEAD)
            for pulled in records:
                if position.already(pulled):
                    continue  # applied at the cursor's time before, unchanged since
                page.append(pulled)
                if len(page) >= PULL_COMMIT_EVERY:
                    apply_and_commit(final=False)
            apply_and_commit(final=True)
    except (TransientError, PermanentError) as exc:
        errors.append(str(exc))
        _record_call_error(connection, exc)
        if mode not in ("list", "bulk"):  # (an import or a backfill keeps its last committed page)
            # The records read before the error are applied and their position kept.
            apply_and_commit(final=False)
    except Exception as exc:
        errors.append(_crashed(connection, exc))
    finally:
        if reader is not None:
            reader.close()
        run.error = _errors_summary(errors)
        _run_close(connection, connector, run, calls_before=before)
    return run


def pull_prefetch(*, connection: Connection, connector: Connector, keys: list[str]) -> int:
    """Before the scheduled pull of ``keys`` (and their links): let a
    connector that can (``prefetch``, Salesforce Composite) read every
    first page in one call, which the pulls then use. Its calls are
    counted against the allowance here; returns how many it made."""
    if not hasattr(connector, "prefetch"):
        return 0
    cursors = {c.object: c.value for c in SyncCursor.objects.filter(connection=connection)}
    queries: list[str] = []
    for key in keys:
        fields = sorted({m.remote_field for m in connection.mappings.filter(object=key) if m.pulls})
        queries += connector.pull_queries(key, cursors.get(key, ""), fields)
        for link in pulled_link_keys(connection=connection, obj=key, connector=connector):
            queries += connector.link_queries(link, cursors.get(link, ""))
    before = connector.stats.api_calls
    try:
        connector.prefetch(queries)
    except (TransientError, PermanentError) as exc:
        # Nothing lost: each pull then asks for its own first page.
        log.warning("%s: reading the first pages ahead failed: %s", connection.provider, exc)
    calls = connector.stats.api_calls - before
    _count_calls(connection, calls)
    return calls


def _hubspot_time(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _pull_list(connection: Connection, connector: Connector, cursor: SyncCursor, key: str, fields: list[str],
               apply, outcomes: PullOutcomes, run: SyncRun, *, dry_run: bool) -> None:
    """A full import through the connector's list endpoint, one committed
    page at a time: ``SyncCursor.resume["list"]`` keeps the next page's
    ``after`` and when the import started, so an interrupted import (a
    ``crm_sync --full`` killed, a 5xx) goes on from its last page when run
    again. Done, the incremental cursor moves up to the start of the import
    (less FULL_IMPORT_OVERLAP): every change before it was read by the list.

    Where the connector reads without the database (``read_ahead``) the next
    page is read in a thread while this one is written (``_ReadAhead``, at
    most LIST_READ_AHEAD pages ahead): a page's call no longer waits for the
    last page's writes. Nothing is committed ahead; the resume point moves
    with the written pages only."""
    state = dict((cursor.resume or {}).get("list") or {})
    if not state:
        state = {"after": "", "since": _hubspot_time(timezone.now() - FULL_IMPORT_OVERLAP)}
    pages = connector.list_pages(key, fields, state["after"])
    reader = _ReadAhead(pages, LIST_READ_AHEAD) if getattr(connector, "read_ahead", False) else None
    try:
        _pull_list_pages(connection, cursor, key, reader if reader is not None else pages, state, apply, outcomes,
                         run, dry_run=dry_run)
    finally:
        if reader is not None:
            reader.close()


def _pull_list_pages(connection: Connection, cursor: SyncCursor, key: str, pages, state: dict, apply,
                     outcomes: PullOutcomes, run: SyncRun, *, dry_run: bool) -> None:
    """``_pull_list``'s pages written and committed, one at a time."""
    for page, after in pages:
        if dry_run:
            apply(list(page), None)
            continue
        state = {**state, "after": after}

        def save(final: bool = not after, state: dict = state) -> None:
            cursor.refresh_from_db(fields=["value", "seen", "resume"])
            resume = dict(cursor.resume or {})
            if final:
                resume.pop("list", None)
                if state["since"] > cursor.value:
                    cursor.value, cursor.seen = state["since"], {}
            else:
                resume["list"] = state
            cursor.resume = resume
            cursor.save(update_fields=["value", "seen", "resume", "updated_at"])

        apply(list(page), save)  # the page and its ``after``: one transaction


def _bulk_wanted(connector: Connector, cursor: SyncCursor, key: str, fields: list[str], position: PullPosition,
                 *, full: bool) -> bool:
    """Whether this pull reads through the connector's bulk query
    (``bulk_pages``, Salesforce Bulk API 2.0): a backfill under way (one
    killed mid-way goes on), or a backlog over the connector's
    ``bulk_threshold`` (MARTECH_CRM["SF_BULK_THRESHOLD"]), which the first
    REST query page's ``totalSize`` tells (``backlog``: no call of its own,
    the REST pull starts from that page). A full pull asks the same from
    where it reads (``position``: the beginning, or where an interrupted one
    got to), so a small org's full pull costs what an incremental one does
    (a Bulk job is a create, a poll and a results read per sObject).

    A full pull goes on with a backfill under way only if it is a full
    pull's (``full`` in its state): an incremental backfill reads from the
    cursor, not from where the full pull reads, so the full pull decides
    afresh (and a backfill of its own replaces that one, whose range it
    covers)."""
    if not hasattr(connector, "bulk_pages"):
        return False
    under_way = (cursor.resume or {}).get("bulk")
    if under_way and (not full or under_way.get("full")):
        return True
    # The records applied at the start's very time are read again (>=) and skipped: not backlog.
    start, seen = (position.value, position.seen) if full else (cursor.value, cursor.seen or {})
    return connector.backlog(key, start, fields) - len(seen) > connector.bulk_threshold


def _pull_bulk(connection: Connection, connector: Connector, cursor: SyncCursor, key: str, fields: list[str],
               apply, outcomes: PullOutcomes, run: SyncRun, *, full: PullPosition | None) -> None:
    """A backfill through a bulk query job, one committed page at a time.

    Its rows come in no time order, so the cursor cannot move page by page:
    ``SyncCursor.resume["bulk"]`` keeps where the job was left (its token:
    job, result set, rows read), where it started from (``from``: the cursor
    and its ties; for a full pull, ``full``, where it reads from: the
    beginning, or the position of a full pull on REST that was interrupted)
    and how far it got (``position``: the newest time applied and the
    records applied at it). Killed, the next pull goes on from the token.
    Done, the position becomes the cursor (never moving it back; at an
    equal time the ties are merged), so the next incremental pull reads
    from the newest time the job held, inclusively: a record changed in
    that second after the job read it is not lost, and one the job read is
    not applied again.

    A full pull's REST position (``resume["rescan"]``) is taken over by the
    backfill: the job reads from it (the records the REST pages applied
    are not read again) and it is dropped with the backfill's first
    committed page, so no later full pull starts from it."""
    state = dict((cursor.resume or {}).get("bulk") or {})
    if full is not None and not state.get("full"):
        state = {}  # (an incremental backfill: this one reads all it would, from earlier)
    if not state:
        start = full.as_json() if full is not None else {"value": cursor.value, "seen": dict(cursor.seen or {})}
        state = {"from": start, "token": "", "position": start, "full": full is not None}
    start = PullPosition(**state["from"])
    position = PullPosition(**state["position"])

    def save(state: dict) -> None:
        cursor.refresh_from_db(fields=["value", "seen", "resume"])
        resume = dict(cursor.resume or {})
        if state.get("full"):
            resume.pop("rescan", None)  # the backfill's ``from`` holds it now
        if state["token"]:
            resume["bulk"] = state
        else:
            resume.pop("bulk", None)
            done = PullPosition(**state["position"])
            if done.value > cursor.value:
                cursor.value, cursor.seen = done.value, done.seen
            elif done.value == cursor.value:
                cursor.seen = {**(cursor.seen or {}), **done.seen}
        cursor.resume = resume
        cursor.save(update_fields=["value", "seen", "resume", "updated_at"])

    for page, token in connector.bulk_pages(key, start.value, fields, state["token"], chunk=PULL_COMMIT_EVERY):
        fresh = [p for p in page if not start.already(p)]  # applied at the cursor's time before, unchanged
        for pulled in fresh:
            position.note(pulled)
        state = {**state, "token": token, "position": position.as_json()}
        apply(fresh, lambda state=state: save(state))  # the page and its token: one transaction
    # Every page read (or none left): the backfill is over, its position is the cursor.
    final = {**state, "token": "", "position": position.as_json()}
    apply([], lambda: save(final))


def _cursor_advance(cursor: SyncCursor, value: str) -> None:
    if value != cursor.value:
        cursor.value = value
        cursor.save(update_fields=["value", "updated_at"])


def _run_close(connection: Connection, connector: Connector, run: SyncRun, *, calls_before: int) -> None:
    """Finish a pull run: the calls it made, counted against the allowance."""
    run.api_calls = connector.stats.api_calls - calls_before
    _count_calls(connection, run.api_calls, connector)
    run.finished_at = timezone.now()
    run.save()


def pulled_link_keys(*, connection: Connection, obj: str, connector: Connector | None = None) -> list[str]:
    """The links of object type ``obj`` the connection's connector syncs
    (pulled after ``obj`` itself, so their parents are here)."""
    return [link.key for link in objects.links_synced_by(connector or connector_for(connection), objects.get(obj))]


def pulled_object_keys(*, connection: Connection, connector: Connector | None = None) -> list[str]:
    """Object types to pull for a connection: declared by its connector,
    registered, and with at least one pull mapping."""
    connector = connector or connector_for(connection)
    mapped = set(connection.mappings.filter(direction__in=["pull", "both"]).values_list("object", flat=True))
    return [o.key for o in objects.synced_by(connector) if o.key in mapped]


def _pull_retry(connection: Connection, connector: Connector, object_type: objects.ObjectType,
                mappings: list[FieldMapping], run: SyncRun, outcomes: PullOutcomes, errors: list[str],
                progress=None) -> None:
    """Fetch the due failures of ``object_type`` again and apply them: one
    batch read per page (``fetch_many``), else one read per record where
    the connector has only ``fetch_one``."""
    remote_ids = _pull_failures_due(connection, object_type.key)
    if not remote_ids:
        return
    run.retried += len(remote_ids)
    outcomes.retried.update(remote_ids)
    fields = sorted({m.remote_field for m in mappings})
    try:
        if hasattr(connector, "fetch_many"):
            fetched = connector.fetch_many(object_type.key, remote_ids, fields)
        else:
            fetched = [p for p in (connector.fetch_one(object_type.key, r, fields) for r in remote_ids)
                       if p is not None]
    except PermanentError as exc:
        _refetch_refused(exc, remote_ids, run, outcomes, errors)
        return
    by_id = {p.remote_id: p for p in fetched}
    outcomes.gone.update(r for r in remote_ids if r not in by_id)
    again = [by_id[r] for r in remote_ids if r in by_id]
    for start in range(0, len(again), PULL_COMMIT_EVERY):
        page = again[start:start + PULL_COMMIT_EVERY]
        results = pulled_apply_page(connection=connection, page=page, obj=object_type.key, mappings=mappings,
                                    connector=connector)
        _tally_page(run, outcomes, errors, page, results)
        if progress is not None:
            progress.update(len(page))
