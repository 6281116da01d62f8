"""HubSpot through hubspot-api-client: contacts <-> leads, companies <->
accounts, deals <-> opportunities, tasks <-> sales tasks, owners.

Every object goes through the same three CRM v3 calls of its client package
(batch upsert, search, get by id) and, for associations, the v4 batch calls:
archive for the links the last push made that are no longer here (a deal
moved to another company, a contact taken off a deal, a task given another
lead), then default-association create for the new ones; one call per
association type per batch of 100 records, none for a type that did not
change. Upsert keys: contacts by ``email`` (HubSpot documents it as the
contacts' upsert key), deals and tasks by a unique custom property holding
our id (``martech_deal_id``, ``martech_task_id``: create them once in the
portal with "Require unique values"), so a retried batch updates, never adds.

Companies have no such key: ``domain`` is not a unique-value property and
HubSpot refuses it as ``idProperty``. So do deals and tasks in a portal
whose id property exists without unique values. They are **matched**: by the
HubSpot id we stored (batch update), else by one search per batch on the key
(``IN``), else created (batch create, never retried within the call: a
create whose answer was lost is found by the next attempt's search). Created
ids are handed to ``on_remote_ids`` (the drain stores them at once, before
anything else in the batch can fail), so a retry updates them by id. A
portal without the id property at all refuses the push with the steps to
create it (``crm_sync --check`` lists them too).

Property definitions (``describe``: the properties API, one call per object
type) feed martech.crm.schema: mapping validation and the connection check.

The base URL and the private-app token come from settings (environment);
``HubSpot(access_token=..., host=...)`` is the only way the host sticks
(STACK.md).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import importlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from hubspot import HubSpot
from hubspot.discovery.discovery_base import DiscoveryBase
from hubspot.crm.associations.v4 import (
    BatchInputPublicAssociationMultiArchive,
    BatchInputPublicDefaultAssociationMultiPost,
    BatchInputPublicFetchAssociationsBatchRequest,
    PublicAssociationMultiArchive,
    PublicDefaultAssociationMultiPost,
    PublicFetchAssociationsBatchRequest,
    PublicObjectId,
)
from hubspot.crm.lists import ListCreateRequest, MembershipChangeRequest
from urllib3.exceptions import HTTPError as Urllib3Error

from .base import (
    AuthError,
    CallStats,
    DeletedPage,
    ListChange,
    PartialPush,
    PermanentError,
    Pulled,
    PushRecord,
    PushResult,
    RateLimited,
    TransientError,
    limiter_for,
    with_retries,
)

# How a type's records are written (``_key_mode``): batch upsert by a unique
# key, or matched (stored id, search, create) when there is none.
UPSERT, MATCH = "upsert", "match"
OBJECT_LABELS = {"contacts": "Contact", "companies": "Company", "deals": "Deal", "tasks": "Task"}
FIELD_TYPES = {"text": "Single-line text", "number": "Number", "boolean": "Single checkbox", "date": "Date picker",
               "datetime": "Date picker", "picklist": "Dropdown select", "multi": "Multiple checkboxes"}


@dataclass(frozen=True)
class HubSpotObject:
    name: str          # CRM v3 object type in URLs: contacts, companies, deals, tasks
    package: str       # hubspot.crm.<package> (its models and APIs)
    id_property: str   # batch upsert idProperty
    modified: str      # the last-modified property searched on
    id_arg: str        # get_by_id's id argument name


OBJECTS = {
    "contact": HubSpotObject("contacts", "contacts", "email", "lastmodifieddate", "contact_id"),
    "company": HubSpotObject("companies", "companies", "domain", "hs_lastmodifieddate", "company_id"),
    "deal": HubSpotObject("deals", "deals", "martech_deal_id", "hs_lastmodifieddate", "deal_id"),
    "task": HubSpotObject("tasks", "objects.tasks", "martech_task_id", "hs_lastmodifieddate", "task_id"),
}
# Associations read back on pull (a deal's company becomes the opportunity's
# account, its contacts the opportunity's contact roles; a task's contact is
# the lead of a task made in HubSpot).
PULL_ASSOCIATIONS = {"deal": ("company", "contact"), "task": ("contact",)}
# Association types a record holds one of here (an opportunity's account, a
# task's lead). When what the last push linked is not known (a record pushed
# before that was kept), HubSpot's links of these types are read back in
# batch and any other than ours is stale. To-many types (a deal's contacts)
# are not: a contact a salesperson added in HubSpot is not ours to remove.
SINGLE_ASSOCIATIONS = {"deal": ("company",), "task": ("contact",)}

PAGE = 100
# A search page: HubSpot's documented most (200). A pull's search calls are
# half what pages of 100 cost, and the 10,000 cap is 50 of them exactly.
SEARCH_PAGE = 200
# HubSpot keeps an archived (deleted) record restorable, and listed with ``archived=true``, for 90 days.
ARCHIVE_KEPT_DAYS = 90
# Segment mirrors (martech.crm.lists): MANUAL (static) contact lists.
LIST_OBJECT_TYPE = "0-1"  # contacts
# Record ids per add-and-remove call: HubSpot takes up to 100,000; smaller
# calls keep one refused or timed-out call cheap to redo.
LIST_BATCH = 1000
LIST_PAGE = 250  # memberships read: HubSpot's maximum page
# HubSpot's documented windows: the rolling ten-second one (a 429 names it
# TEN_SECONDLY_ROLLING; X-HubSpot-RateLimit-Interval-Milliseconds says 10000).
SECONDLY_WINDOW = 10.0
# The search endpoints' own limit (MARTECH_CRM_HUBSPOT_SEARCH_RATE, 5 per second
# per token): a 429 of it names SECONDLY; the X-HubSpot-RateLimit-* headers
# describe the ten-second window, not this one, so its wait is one second.
SEARCH_POLICY = "SECONDLY"
SEARCH_WINDOW = 1.0
# X-HubSpot-RateLimit-Remaining at or below this share of -Max: the next call
# waits out the interval (other processes with the same token spend it too).
REMAINING_LOW = 0.05


def _next_after(page: dict) -> str | None:
    """``paging.next.after`` of a JSON answer, or None on the last page."""
    return ((page.get("paging") or {}).get("next") or {}).get("after") or None


def _header(headers, name: str) -> int | None:
    if not headers:
        return None
    raw = headers.get(name)
    if raw is None:  # a plain dict from a test stub: compare without case
        raw = next((v for k, v in dict(headers).items() if k.lower() == name.lower()), None)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _rate_limited(exc) -> RateLimited:
    """HubSpot's 429: ``policyName`` in the JSON body (TEN_SECONDLY_ROLLING,
    DAILY, ...) and the X-HubSpot-RateLimit-* headers, no Retry-After as
    documented (one is honoured if sent). A DAILY limit lasts until midnight
    in the portal's time zone (the caller pauses until then); any other
    until the interval the headers give, else HubSpot's ten seconds."""
    headers = getattr(exc, "headers", None) or {}
    raw = headers.get("Retry-After")
    try:
        retry_after = float(raw) if raw is not None else None
    except ValueError:
        retry_after = None
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    policy = str(body.get("policyName") or "") if isinstance(body, dict) else ""
    daily = policy.upper() == "DAILY"
    interval = _header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
    wait = None if daily else (interval / 1000 if interval else SECONDLY_WINDOW)
    if policy.upper() == SEARCH_POLICY:
        # A secondly limit (the search endpoints'): over within the second, so
        # waited out inside the call (with_retries), never a connection pause.
        wait = SEARCH_WINDOW
        retry_after = SEARCH_WINDOW if retry_after is None else retry_after
    message = (body.get("message") if isinstance(body, dict) else "") or str(exc.body)
    return RateLimited(f"HubSpot 429 {policy or 'rate limit'}: {message}", retry_after=retry_after, wait=wait,
                       policy=policy or "RATE_LIMIT", daily=daily)
OWNERS_PAGE = 500  # the owners API's most per page


def _translate(exc: Exception) -> Exception:
    status = getattr(exc, "status", None)
    # Each hubspot.crm.* package has its own ApiException (and subclasses such
    # as ServiceException), so they are recognised by name along the MRO.
    if status is not None and any(c.__name__ == "ApiException" for c in type(exc).__mro__):
        if status == 401:
            return AuthError(f"HubSpot refused the token (401): {exc.body}")
        if status == 429:
            return _rate_limited(exc)
        if status >= 500:
            return TransientError(f"HubSpot {status}: {exc.body}")
        return PermanentError(f"HubSpot {status}: {exc.body}")
    if isinstance(exc, (Urllib3Error, TimeoutError, ConnectionError)):
        return TransientError(f"HubSpot unreachable: {exc}")
    return exc


# The client's API objects, kept per thread and reused by every connector
# of the thread with the same settings: the client builds a new ApiClient
# (its own connection pool, and a read of the package's metadata for the
# user agent) on every ``client.crm.<package>.<api>`` access, so each drain
# paid two of them and a new TCP connection to HubSpot. Per thread: an
# ApiClient keeps the last response (the rate-limit headers ``_attempt``
# reads) and a pull's read-ahead thread calls at the same time.
_apis = threading.local()


def _api_factory(api_client_package, api_name, config):
    key = (api_client_package.__name__, api_name, tuple(sorted((k, repr(v)) for k, v in config.items())))
    cache = getattr(_apis, "by_key", None)
    if cache is None:
        cache = _apis.by_key = {}
    api = cache.get(key)
    if api is None:
        api = cache[key] = DiscoveryBase._default_api_factory(api_client_package, api_name, config)
    return api


class HubSpotConnector:
    provider = "hubspot"
    # HubSpot's search answers at most 10,000 results of one query (paging
    # further is a 400); pull_since windows under it. Tests lower it with the emulator's.
    search_cap = 10_000
    # The object types this connector syncs (martech.crm.objects): our key -> HubSpot's object type.
    # "erasure": an erasure's GDPR delete of the contact (martech.privacy.crm).
    # "deal_deletion": a deal deleted here, archived in HubSpot (attribution.crm_sync).
    objects = {**{key: spec.name for key, spec in OBJECTS.items()}, "list": "lists", "erasure": "contacts",
               "deal_deletion": "deals"}
    # The types whose deletions ``deleted_since`` lists (services.deleted_keys): archived deals,
    # which a deal pulled here must follow (revenue). Other types keep their copy here.
    deletions_listed = frozenset({"deal"})
    list_batch = LIST_BATCH
    # pull_since reads over HTTP only (no database): a pull may read its next
    # page while writing the last one (services._ReadAhead).
    read_ahead = True

    def __init__(self, connection, *, sleep=None):
        conf = settings.MARTECH_CRM
        self.connection = connection
        self.client = HubSpot(access_token=conf["HUBSPOT_TOKEN"], host=conf["HUBSPOT_URL"], api_factory=_api_factory)
        self.timeout = conf["TIMEOUT"]
        self.stats = CallStats()
        # Looked up at call time so tests can stub time.sleep.
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))
        # Pacing: this process's calls for this connection (all threads) stay
        # under MARTECH_CRM_HUBSPOT_RATE (HubSpot's 190 per 10 s for a private
        # app on Professional/Enterprise), and a low X-HubSpot-RateLimit-Remaining
        # holds the next call for the interval. Search calls also stay under
        # MARTECH_CRM_HUBSPOT_SEARCH_RATE (the search endpoints' own 5 per
        # second), a second limiter of the same kind, shared the same way (the
        # pull's read-ahead thread included).
        key = (getattr(connection, "pk", None), conf["HUBSPOT_URL"])
        try:
            self.limiter = limiter_for(key, conf.get("HUBSPOT_RATE", "190/10s"))
        except ValueError as exc:
            raise ImproperlyConfigured(f"MARTECH_CRM_HUBSPOT_RATE: {exc}") from None
        try:
            self.search_limiter = limiter_for((*key, "search"), conf.get("HUBSPOT_SEARCH_RATE", "5/1s"))
        except ValueError as exc:
            raise ImproperlyConfigured(f"MARTECH_CRM_HUBSPOT_SEARCH_RATE: {exc}") from None
        self.daily: tuple[int, int] | None = None  # (limit, remaining) from the last answer's headers

    def _seen(self, headers) -> None:
        """Read the X-HubSpot-RateLimit-* headers of an answer: the daily
        figures (``allowance_seen``) and the window's remaining calls."""
        daily, daily_left = (_header(headers, "X-HubSpot-RateLimit-Daily"),
                             _header(headers, "X-HubSpot-RateLimit-Daily-Remaining"))
        if daily is not None and daily_left is not None:
            self.daily = (daily, daily_left)
        remaining = _header(headers, "X-HubSpot-RateLimit-Remaining")
        most = _header(headers, "X-HubSpot-RateLimit-Max")
        if remaining is not None and remaining <= max(1, int((most or 0) * REMAINING_LOW)):
            interval = _header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
            self.limiter.hold(interval / 1000 if interval else SECONDLY_WINDOW)

    def allowance_seen(self) -> tuple[int, int] | None:
        """HubSpot's own count of the day's calls, (used, limit), from the
        last answer's X-HubSpot-RateLimit-Daily(-Remaining); None before one."""
        if self.daily is None:
            return None
        limit, remaining = self.daily
        return max(limit - remaining, 0), limit

    # Set by the drain: called with {local id: HubSpot id} as soon as records
    # are created, so the ids are stored before a later call of the batch fails.
    on_remote_ids = None

    def _call_once(self, fn, *args, **kwargs):
        """One call, never retried here: for a create, whose retry after a
        lost answer would make a second record (the next attempt's search
        finds the first)."""
        self.stats.api_calls += 1
        return self._attempt(fn, args, kwargs)

    def describe(self, remote_object: str) -> dict[str, dict]:
        """The portal's property definitions of one object type (properties
        API, one call), in martech.crm.schema's shape."""
        page = self._call(self.client.crm.properties.core_api.get_all, object_type=remote_object)
        out = {}
        for p in page.results or []:
            meta = p.modification_metadata
            read_only = bool(meta and meta.read_only_value)
            external = bool(p.external_options)
            enumeration = p.type == "enumeration"
            out[p.name] = {
                "label": p.label, "type": p.type, "field_type": p.field_type,
                # Owners and other external option lists are not checked against a list.
                "options": [o.value for o in p.options or []] if enumeration and not external else None,
                "read_only": read_only, "calculated": bool(p.calculated), "unique": bool(p.has_unique_value),
                "createable": not read_only, "updateable": not read_only,
                "restricted": enumeration and not external, "external_id": bool(p.has_unique_value),
            }
        return out

    def _key_mode(self, obj: str, spec: HubSpotObject) -> str:
        """UPSERT when the type's key is a unique-value property, else MATCH.
        Contacts: email (documented); companies: never (domain cannot be
        unique); deals and tasks: what the portal says (stored definitions,
        read again when stale), refused with the steps when the property
        does not exist."""
        if obj == "contact":
            return UPSERT
        if obj == "company":
            return MATCH
        from martech.crm.schema import definitions_fresh

        definition = definitions_fresh(self.connection, self, spec.name).get(spec.id_property)
        if definition is None:
            raise PermanentError(f"HubSpot portal has no {spec.name} property {spec.id_property} (our id, the key "
                                 f"that keeps a retry from creating a second record). "
                                 f"{create_steps(spec.name, spec.id_property, 'text', unique=True)}")
        return UPSERT if definition.get("unique") else MATCH

    def _call(self, fn, *args, **kwargs):
        return with_retries(lambda: self._attempt(fn, args, kwargs), self.stats, sleep=self.sleep)

    def _attempt(self, fn, args, kwargs):
        """One HTTP call, paced (the limiter) and read (the rate-limit headers).
        With ``_preload_content=False`` (the pulls' reads: ``_raw``) the
        answer is the JSON body as plain dicts and lists, read within the
        attempt (a connection lost mid-body is retried like any other)."""
        client = getattr(getattr(fn, "__self__", None), "api_client", None)
        # A search takes its search slot first, then a general one (one order:
        # no general slot is held while a search waits for its own).
        search = getattr(fn, "__name__", "") == "do_search"
        if search:
            self.search_limiter.acquire(self.stats.paced)
        try:
            self.limiter.acquire(self.stats.paced)
        except BaseException:
            if search:
                self.search_limiter.release()
            raise
        try:
            result = fn(*args, _request_timeout=self.timeout, **kwargs)
            if kwargs.get("_preload_content") is False:
                response = result
                try:
                    result = json.loads(response.data)
                finally:
                    response.release_conn()
        except Exception as exc:
            self._seen(getattr(exc, "headers", None))
            translated = _translate(exc)
            if search and isinstance(translated, RateLimited) and translated.policy.upper() == SEARCH_POLICY:
                # Another process with the token searched too: every search here waits the second out.
                self.search_limiter.hold(SEARCH_WINDOW)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            self.limiter.release()
            if search:
                self.search_limiter.release()
        response = getattr(client, "last_response", None)
        self._seen(response.getheaders() if response is not None else None)
        return result

    def _raw(self, fn, **kwargs) -> dict:
        """A read through the client's own call (its auth, host, headers and
        errors), answered as the JSON body instead of model objects: the
        client builds a model per record and parses every timestamp in it
        with dateutil, which was most of a pull's CPU. Used where a page of
        records is read (search, list, batch read; records are then read
        from the documented JSON shape, ``_pulled_json``) and for the batch
        upsert's answer (its ``results`` and ``errors``)."""
        return self._call(fn, _preload_content=False, **kwargs)

    def _spec(self, obj: str) -> HubSpotObject:
        try:
            return OBJECTS[obj]
        except KeyError:
            raise PermanentError(f"HubSpot sync of {obj!r} is not implemented") from None

    def _api(self, spec: HubSpotObject):
        api = self.client.crm
        for part in spec.package.split("."):
            api = getattr(api, part)
        return api

    def _models(self, spec: HubSpotObject):
        return importlib.import_module(f"hubspot.crm.{spec.package}")

    @staticmethod
    def _upsert_body(spec: HubSpotObject, records: list[PushRecord]) -> dict:
        """A BatchInputSimplePublicObjectBatchInputUpsert as its JSON (the
        client sends a dict as it is): building the client's model objects,
        each with a Configuration of its own, cost more CPU than the call."""
        return {"inputs": [
            # The key travels as a property too: HubSpot stores it and answers with it.
            {"id": r.key, "idProperty": spec.id_property, "properties": {**r.properties, spec.id_property: r.key}}
            for r in records
        ]}

    @staticmethod
    def _properties(spec: HubSpotObject, record: PushRecord) -> dict[str, str]:
        # The key travels as a property too: HubSpot stores it, answers with it, and a search finds it.
        return {**record.properties, spec.id_property: record.key}

    def _update_body(self, spec: HubSpotObject, records: list[PushRecord], ids: dict[int, str]):
        m = self._models(spec)
        return m.BatchInputSimplePublicObjectBatchInput(inputs=[
            m.SimplePublicObjectBatchInput(id=ids[r.local_id], properties=self._properties(spec, r),
                                           object_write_trace_id=str(r.local_id)) for r in records])

    def _create_body(self, spec: HubSpotObject, records: list[PushRecord]):
        m = self._models(spec)
        return m.BatchInputSimplePublicObjectBatchInputForCreate(inputs=[
            m.SimplePublicObjectBatchInputForCreate(properties=self._properties(spec, r), associations=[],
                                                    object_write_trace_id=str(r.local_id)) for r in records])

    def _search_body(self, spec: HubSpotObject, keys: list[str]):
        m = self._models(spec)
        # HubSpot compares IN values of a string property in lower case.
        return m.PublicObjectSearchRequest(
            filter_groups=[m.FilterGroup(filters=[m.Filter(property_name=spec.id_property, operator="IN",
                                                           values=sorted({k.lower() for k in keys}))])],
            properties=[spec.id_property], sorts=[], limit=PAGE, after="0")

    def request_body(self, obj: str, records: list[PushRecord]) -> dict:
        """The JSON the push sends for ``records`` (the admin's payload
        preview). Matched types (companies; deals and tasks without a unique
        id property) show the update by stored id, or the search and the
        create that follows when the search finds nothing."""
        spec = self._spec(obj)
        sanitize = self._api(spec).batch_api.api_client.sanitize_for_serialization
        if self._key_mode(obj, spec) == UPSERT:
            body = sanitize(self._upsert_body(spec, records))
        else:
            known = [r for r in records if r.remote_id]
            unknown = [r for r in records if not r.remote_id]
            body = {}
            if known:
                body["update"] = sanitize(self._update_body(spec, known, {r.local_id: r.remote_id for r in known}))
            if unknown:
                body["search"] = sanitize(self._search_body(spec, [r.key for r in unknown]))
                body["create_if_not_found"] = sanitize(self._create_body(spec, unknown))
        links = [{"to": OBJECTS[other].name, "from": {"id": r.remote_id or "(id from the upsert)"},
                  "ids": ids} for r in records for other, ids in sorted(r.associations.items()) if ids]
        if links:
            body["associations"] = links
        stale = [{"to": OBJECTS[other].name, "from": {"id": r.remote_id}, "ids": ids}
                 for r in records if r.remote_id for other, ids in sorted(_stale(r, r.linked_before or {}).items())]
        if stale:
            body["associations_archived"] = stale
        return body

    def push_batch(self, obj: str, records: list[PushRecord]) -> list[PushResult]:
        spec = self._spec(obj)
        mode = self._key_mode(obj, spec)
        results: list[PushResult] = []
        for start in range(0, len(records), PAGE):
            try:
                results += self._push_chunk(obj, spec, records[start:start + PAGE], mode)
            except (TransientError, PermanentError) as exc:
                if not results:
                    raise
                # The chunks before were written: their results are kept (PartialPush).
                raise PartialPush(results, exc) from exc
        return results

    def _push_chunk(self, obj: str, spec: HubSpotObject, chunk: list[PushRecord], mode: str = UPSERT
                    ) -> list[PushResult]:
        """One batch of at most 100 records (upserted by their unique key, or
        matched: ``_push_matched``), then their associations. A failure of the
        associations fails the whole chunk (both calls are idempotent, so the
        chunk is simply sent again; a matched chunk finds what it created)."""
        if mode == MATCH:
            return self._with_associations(obj, chunk, self._push_matched(spec, chunk))
        # The answer read as its JSON (``_raw``): the client's models parse two
        # timestamps per record with dateutil, most of a push's CPU before.
        response = self._raw(self._api(spec).batch_api.upsert,
                             batch_input_simple_public_object_batch_input_upsert=self._upsert_body(spec, chunk))
        by_key = {r.key.lower(): r for r in chunk}
        done: dict[str, str] = {}
        for item in response.get("results") or []:
            done[str((item.get("properties") or {}).get(spec.id_property) or "").lower()] = str(item["id"])
        failed: dict[str, str] = {}
        for err in response.get("errors") or []:
            for key in (err.get("context") or {}).get("ids", []):
                failed[key.lower()] = err.get("message") or "refused"
        chunk_results = []
        for key, record in by_key.items():
            if key in done:
                chunk_results.append(PushResult(record.local_id, remote_id=done[key]))
            else:
                # Nothing silently dropped: a record neither done nor named gets an error too.
                chunk_results.append(PushResult(record.local_id,
                                                error=failed.get(key, "not in HubSpot's answer")))
        return self._with_associations(obj, chunk, chunk_results)

    def _with_associations(self, obj: str, chunk: list[PushRecord], chunk_results: list[PushResult]
                           ) -> list[PushResult]:
        refused = self._associate(obj, chunk, {r.local_id: r.remote_id for r in chunk_results if r.remote_id})
        for result in chunk_results:
            if result.local_id in refused:
                result.error = refused[result.local_id]
        return chunk_results

    def _search_keys(self, spec: HubSpotObject, records: list[PushRecord]) -> dict[int, str]:
        """{local id: HubSpot id} of the records HubSpot already has under
        their key: one search (``IN``) for up to 100 keys. Several records
        with one key (made by hand, or before this matching): the oldest."""
        if not records:
            return {}
        page = self._call(self._api(spec).search_api.do_search,
                          public_object_search_request=self._search_body(spec, [r.key for r in records]))
        by_key: dict[str, str] = {}
        for item in page.results or []:
            key = str((item.properties or {}).get(spec.id_property) or "").lower()
            if key and (key not in by_key or int(item.id) < int(by_key[key])):
                by_key[key] = str(item.id)
        return {r.local_id: by_key[r.key.lower()] for r in records if r.key.lower() in by_key}

    def _push_matched(self, spec: HubSpotObject, chunk: list[PushRecord]) -> list[PushResult]:
        """Write records of a type without a unique key: update the ones
        whose HubSpot id we hold or a search finds, create the others. An id
        HubSpot no longer has (deleted there) is searched for like a new
        record. Creates are sent once (``_call_once``) and their ids handed to
        ``on_remote_ids`` at once."""
        batch_api = self._api(spec).batch_api
        ids = {r.local_id: r.remote_id for r in chunk if r.remote_id}
        ids.update(self._search_keys(spec, [r for r in chunk if not r.remote_id]))
        errors: dict[int, str] = {}
        done: dict[int, str] = {}
        by_local = {r.local_id: r for r in chunk}
        for attempt in range(2):
            update = [r for r in chunk if r.local_id in ids and r.local_id not in done and r.local_id not in errors]
            gone: list[PushRecord] = []
            if update:
                response = self._call(batch_api.update, batch_input_simple_public_object_batch_input=self._update_body(
                    spec, update, ids))
                by_remote = {ids[r.local_id]: r.local_id for r in update}
                for item in response.results or []:
                    local = by_remote.get(str(item.id))
                    if local is not None:
                        done[local] = str(item.id)
                for err in getattr(response, "errors", None) or []:
                    for remote in (err.context or {}).get("ids", []):
                        local = by_remote.get(str(remote))
                        if local is None:
                            continue
                        if err.category == "OBJECT_NOT_FOUND" and attempt == 0:
                            gone.append(by_local[local])
                            ids.pop(local)
                        else:
                            errors[local] = err.message
            if not gone:
                break
            ids.update(self._search_keys(spec, gone))
        create = [r for r in chunk if r.local_id not in ids and r.local_id not in errors]
        if create:
            response = self._call_once(batch_api.create,
                                       batch_input_simple_public_object_batch_input_for_create=self._create_body(
                                           spec, create))
            created = {}
            for item in response.results or []:
                trace = str(getattr(item, "object_write_trace_id", "") or "")
                if trace.isdigit() and int(trace) in by_local:
                    created[int(trace)] = str(item.id)
            for err in getattr(response, "errors", None) or []:
                for trace in (err.context or {}).get("objectWriteTraceId", []):
                    if str(trace).isdigit():
                        errors[int(trace)] = err.message
            if created and self.on_remote_ids is not None:
                self.on_remote_ids(created)
            done.update(created)
        out = []
        for record in chunk:
            if record.local_id in done:
                out.append(PushResult(record.local_id, remote_id=done[record.local_id]))
            else:
                # Nothing silently dropped: a record neither done nor named gets an error too.
                out.append(PushResult(record.local_id, error=errors.get(record.local_id, "not in HubSpot's answer")))
        return out

    def _associate(self, obj: str, records: list[PushRecord], remote_ids: dict[int, str]) -> dict[int, str]:
        """Bring each upserted record's associations to ``record.associations``:
        archive the stale ones (linked by the last push, no longer here), then
        create the new ones, one v4 batch call per target type and action.
        Both are idempotent in HubSpot (archiving a missing link or creating
        an existing one changes nothing), so a retried batch is safe.
        Returns {local id: error} for records whose association HubSpot refused."""
        spec = OBJECTS[obj]
        by_remote = {remote: local for local, remote in remote_ids.items()}
        records = [r for r in records if r.local_id in remote_ids]
        # Records whose last links are not known: HubSpot's, for the single-valued types, in batch.
        unknown = [remote_ids[r.local_id] for r in records if r.linked_before is None and r.remote_id]
        read_back: dict[str, dict[str, list[str]]] = {}
        for other in SINGLE_ASSOCIATIONS.get(obj, ()) if unknown else ():
            for remote, ids in self._read_links(obj, other, unknown).items():
                read_back.setdefault(remote, {})[other] = ids
        stale: dict[str, list[tuple[str, list[str]]]] = {}
        new: dict[str, list[tuple[str, str]]] = {}
        for record in records:
            remote = remote_ids[record.local_id]
            before = record.linked_before if record.linked_before is not None else read_back.get(remote, {})
            for other, ids in _stale(record, before).items():
                stale.setdefault(other, []).append((remote, ids))
            for other, ids in record.associations.items():
                # Known links are not sent again; when not known, all are (creating is idempotent).
                known = set(record.linked_before.get(other, [])) if record.linked_before is not None else set()
                new.setdefault(other, []).extend((remote, to) for to in ids if to not in known)
        batch_api = self.client.crm.associations.v4.batch_api
        for other, links in sorted(stale.items()):
            for start in range(0, len(links), PAGE):
                body = BatchInputPublicAssociationMultiArchive(inputs=[
                    PublicAssociationMultiArchive(_from=PublicObjectId(id=a), to=[PublicObjectId(id=b) for b in ids])
                    for a, ids in links[start:start + PAGE]])
                # HubSpot answers 204 with no body: there is nothing per record to refuse.
                self._call(batch_api.archive, from_object_type=spec.name, to_object_type=OBJECTS[other].name,
                           batch_input_public_association_multi_archive=body)
        refused: dict[int, str] = {}
        for other, links in sorted(new.items()):
            for start in range(0, len(links), PAGE):
                body = BatchInputPublicDefaultAssociationMultiPost(inputs=[
                    PublicDefaultAssociationMultiPost(_from=PublicObjectId(id=a), to=PublicObjectId(id=b))
                    for a, b in links[start:start + PAGE]])
                response = self._call(batch_api.create_default, from_object_type=spec.name,
                                      to_object_type=OBJECTS[other].name,
                                      batch_input_public_default_association_multi_post=body)
                for err in getattr(response, "errors", None) or []:
                    for remote in (err.context or {}).get("ids", []):
                        if remote in by_remote:
                            refused[by_remote[remote]] = f"association to {other}: {err.message}"
        return refused

    def _read_links(self, obj: str, other: str, remote_ids: list[str]) -> dict[str, list[str]]:
        """{remote id: [associated ids of type ``other``]}: one v4 batch read per
        page of 100 (a record with none is absent)."""
        batch_api = self.client.crm.associations.v4.batch_api
        out: dict[str, list[str]] = {}
        for start in range(0, len(remote_ids), PAGE):
            body = BatchInputPublicFetchAssociationsBatchRequest(
                inputs=[PublicFetchAssociationsBatchRequest(id=r) for r in remote_ids[start:start + PAGE]])
            response = self._call(batch_api.get_page, from_object_type=OBJECTS[obj].name,
                                  to_object_type=OBJECTS[other].name,
                                  batch_input_public_fetch_associations_batch_request=body)
            for row in response.results or []:
                out[str(row._from.id)] = [str(t.to_object_id) for t in row.to or []]
        return out

    def _read_associations(self, obj: str, pulled: list[Pulled]) -> None:
        """Fill ``Pulled.associations`` for the types in PULL_ASSOCIATIONS:
        one v4 batch read per page and target type."""
        if not pulled or obj not in PULL_ASSOCIATIONS:
            return
        by_id = {p.remote_id: p for p in pulled}
        for other in PULL_ASSOCIATIONS[obj]:
            # Read, so a record absent from the answer has none (the engine
            # then removes the links both sides had: they were removed here).
            for p in pulled:
                p.associations.setdefault(other, [])
            for remote, ids in self._read_links(obj, other, list(by_id)).items():
                if remote in by_id:
                    by_id[remote].associations[other] = ids

    def _search(self, spec: HubSpotObject, filter_groups: list[list[tuple[str, str, str]]], sort: str,
                properties: list[str], after: int) -> tuple[list[Pulled], int | None]:
        """One search page of a pull: its records and the next page's ``after`` (None after the last)."""
        m = self._models(spec)
        request = m.PublicObjectSearchRequest(
            filter_groups=[m.FilterGroup(filters=[m.Filter(property_name=p, operator=op, value=v) for p, op, v in g])
                           for g in filter_groups],
            sorts=[sort], properties=properties, limit=SEARCH_PAGE, after=str(after))
        page = self._raw(self._api(spec).search_api.do_search, public_object_search_request=request)
        nxt = _next_after(page)
        return [self._pulled_json(spec, item) for item in page.get("results") or []], \
            int(nxt) if nxt else None

    def pull_since(self, obj: str, cursor: str, properties: list[str],
                   skip: Callable[[Pulled], bool] | None = None) -> Iterator[Pulled]:
        """Records modified at or after ``cursor`` (inclusive), in
        modification order, however many there are. ``skip``: the caller's
        test for a record it applied already at the cursor's time; those are
        left out before their associations are read, so an idle pull costs
        one search call.

        HubSpot's search applies one sort and stops at ``search_cap``
        (10,000) results: paging further answers 400. So the pull reads in
        windows: sorted by the modified property, and before a page would
        pass the cap the search starts again from the last time seen
        (``GTE``), skipping the records already yielded at that time (ties
        come in no particular order, so they are skipped by id, not by
        position). A window whose every record shares one time (more than
        the cap modified in the same millisecond) cannot move on that way:
        those records are read by ``hs_object_id`` ranges (``EQ`` that time,
        ``GT`` the last id, sorted by id), then the pull goes on after it."""
        spec = self._spec(obj)
        fields = sorted({*properties, spec.id_property, spec.modified})
        lower, op = cursor, "GTE"
        done: set[str] = set()  # read at ``lower`` in this run
        while True:
            filters = [[(spec.modified, op, lower)]] if lower else []
            after = 0
            last_time, at_last = lower, set(done)
            while True:
                if after + SEARCH_PAGE > self.search_cap:
                    break  # the next page would pass the cap: a new window
                pulled, nxt = self._search(spec, filters, spec.modified, fields, after)
                pulled = [p for p in pulled if not (p.modified_at == lower and p.remote_id in done)]
                for p in pulled:
                    if p.modified_at != last_time:
                        last_time, at_last = p.modified_at, set()
                    at_last.add(p.remote_id)
                pulled = [p for p in pulled if skip is None or not skip(p)]
                self._read_associations(obj, pulled)
                yield from pulled
                if nxt is None:
                    return
                after = nxt
            if last_time == lower and lower:
                # A whole window at one time: read that time by id ranges, then go on after it.
                yield from self._same_time(obj, spec, lower, fields, at_last, skip)
                op, done = "GT", set()
            else:
                lower, op, done = last_time, "GTE", at_last

    def _same_time(self, obj: str, spec: HubSpotObject, at: str, fields: list[str], done: set[str],
                   skip: Callable[[Pulled], bool] | None) -> Iterator[Pulled]:
        """Every record modified exactly at ``at``, by ``hs_object_id``
        ranges (each under the cap), except the ``skip`` ones."""
        last_id = 0
        while True:
            after, moved = 0, False
            filters = [[(spec.modified, "EQ", at), ("hs_object_id", "GT", str(last_id))]]
            while after + SEARCH_PAGE <= self.search_cap:
                pulled, nxt = self._search(spec, filters, "hs_object_id", fields, after)
                for p in pulled:
                    last_id, moved = max(last_id, int(p.remote_id)), True
                pulled = [p for p in pulled if p.remote_id not in done and (skip is None or not skip(p))]
                self._read_associations(obj, pulled)
                yield from pulled
                if nxt is None:
                    return
                after = nxt
            if not moved:
                return

    def list_pages(self, obj: str, properties: list[str], after: str = "") -> Iterator[tuple[list[Pulled], str]]:
        """Every record, through the list endpoint (``GET
        /crm/v3/objects/{type}``: id order, ``after`` paging, no 10,000 cap):
        a full import. Yields each page with the ``after`` that reads the
        next one ("" after the last), so an interrupted import resumes there."""
        spec = self._spec(obj)
        fields = sorted({*properties, spec.id_property, spec.modified})
        while True:
            kwargs = {"limit": PAGE, "properties": fields, "archived": False}
            if after:
                kwargs["after"] = after
            page = self._raw(self._api(spec).basic_api.get_page, **kwargs)
            pulled = [self._pulled_json(spec, item) for item in page.get("results") or []]
            self._read_associations(obj, pulled)
            after = _next_after(page) or ""
            yield pulled, after
            if not after:
                return

    @staticmethod
    def _pulled_json(spec: HubSpotObject, item: dict) -> Pulled:
        """A record of a JSON answer (``_raw``) as ``_pulled`` reads a model one."""
        props = dict(item.get("properties") or {})
        modified = props.get(spec.modified)
        if not modified:
            updated = item.get("updatedAt")
            modified = dt.datetime.fromisoformat(updated).isoformat() if updated else ""
        return Pulled(str(item["id"]), props, modified)

    @staticmethod
    def _pulled(spec: HubSpotObject, item) -> Pulled:
        props = dict(item.properties or {})
        modified = props.get(spec.modified) or (item.updated_at.isoformat() if item.updated_at else "")
        return Pulled(str(item.id), props, modified)

    def fetch_many(self, obj: str, remote_ids: list[str], properties: list[str]) -> list[Pulled]:
        """The records with these ids: one batch read per 100, then their
        associations like a pull's (one v4 read per page and type). Ids
        HubSpot does not have (deleted) are left out of the answer."""
        spec = self._spec(obj)
        m = self._models(spec)
        out: list[Pulled] = []
        for start in range(0, len(remote_ids), PAGE):
            body = m.BatchReadInputSimplePublicObjectId(
                inputs=[m.SimplePublicObjectId(id=r) for r in remote_ids[start:start + PAGE]],
                properties=sorted({*properties, spec.id_property, spec.modified}), properties_with_history=[])
            response = self._raw(self._api(spec).batch_api.read, batch_read_input_simple_public_object_id=body)
            pulled = [self._pulled_json(spec, item) for item in response.get("results") or []]
            self._read_associations(obj, pulled)
            out += pulled
        return out

    def fetch_one(self, obj: str, remote_id: str, properties: list[str]) -> Pulled | None:
        spec = self._spec(obj)
        try:
            item = self._call(self._api(spec).basic_api.get_by_id, **{spec.id_arg: remote_id},
                              properties=sorted({*properties, spec.id_property, spec.modified}))
        except PermanentError as exc:
            if "404" in str(exc):
                return None
            raise
        pulled = self._pulled(spec, item)
        self._read_associations(obj, [pulled])
        return pulled

    # --- segment mirrors: lists v3 ---
    def _list_checked(self, found, name: str) -> str:
        lst = found.list
        if lst.object_type_id != LIST_OBJECT_TYPE or lst.processing_type not in ("MANUAL", "SNAPSHOT"):
            raise PermanentError(
                f"HubSpot list {lst.list_id} ({lst.name!r}) is a {lst.processing_type} list of object type "
                f"{lst.object_type_id}: a segment mirror needs a MANUAL contacts list (objectTypeId "
                f"{LIST_OBJECT_TYPE}), whose members only API calls change. Give the mirror another name, or "
                f"rename that list in HubSpot{'' if name == lst.name else f' (asked for {name!r})'}.")
        return str(lst.list_id)

    def list_ensure(self, *, name: str, remote_id: str = "", key: str = "") -> tuple[str, bool]:
        """The mirror's list: (listId, whether it existed before this call).

        A known id is checked (it must be a MANUAL contacts list). Otherwise
        the list is looked up by name first (names are unique per portal and
        not case sensitive): one found is adopted, which is also what a
        retry finds after a create whose answer was lost; else it is created
        MANUAL for contacts. A DYNAMIC list of that name is refused with a
        message saying so (its members follow its filters)."""
        lists_api = self.client.crm.lists.lists_api
        if remote_id:
            try:
                return self._list_checked(self._call(lists_api.get_by_id, list_id=remote_id), name), True
            except PermanentError as exc:
                if "404" in str(exc):
                    raise PermanentError(f"HubSpot has no list {remote_id} (deleted there?); clear the mirror's "
                                         "remote id to make a new one") from None
                raise
        try:
            return self._list_checked(self._call(lists_api.get_by_name, list_name=name,
                                                 object_type_id=LIST_OBJECT_TYPE), name), True
        except PermanentError as exc:
            if "404" not in str(exc):
                raise
        body = ListCreateRequest(name=name, object_type_id=LIST_OBJECT_TYPE, processing_type="MANUAL")
        return self._list_checked(self._call(lists_api.create, list_create_request=body), name), False

    def list_members(self, remote_id: str) -> dict[str, str]:
        """Every member of the list: {contact id: ""}, one call per 250."""
        out: dict[str, str] = {}
        after = None
        while True:
            kwargs = {"after": after} if after else {}
            page = self._call(self.client.crm.lists.memberships_api.get_page, list_id=remote_id, limit=LIST_PAGE,
                              **kwargs)
            out.update({str(row.record_id): "" for row in page.results or []})
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                return out

    def list_change(self, remote_id: str, *, add: list[str], remove: dict[str, str]) -> ListChange:
        """One add-and-remove call (at most ``list_batch`` ids). Idempotent:
        adding a member or removing a non-member changes nothing in HubSpot.
        Ids HubSpot does not have (recordIdsMissing) are refused adds."""
        if len(add) + len(remove) > self.list_batch:
            raise ValueError(f"at most {self.list_batch} ids per list_change call")
        body = MembershipChangeRequest(record_ids_to_add=list(add), record_ids_to_remove=sorted(remove))
        answer = self._call(self.client.crm.lists.memberships_api.add_and_remove, list_id=remote_id,
                            membership_change_request=body)
        missing = {str(i) for i in answer.record_ids_missing or []}
        out = ListChange(removed=sorted(remove))
        for person in add:
            if person in missing:
                out.errors[person] = f"HubSpot has no contact {person} (recordIdsMissing: deleted there?)"
            else:
                out.added[person] = ""
        return out

    # --- deletions ---
    def records_delete(self, obj: str, remote_ids: list[str]) -> dict[str, str]:
        """Archive records (``POST /crm/v3/objects/{type}/batch/archive``,
        100 ids a call, answered 204): HubSpot moves them to its recycling
        bin. HubSpot answers 204 for an id it no longer has too, so every id
        sent is done; returns {id: error} with no errors."""
        spec = self._spec(obj)
        m = self._models(spec)
        for start in range(0, len(remote_ids), PAGE):
            body = m.BatchInputSimplePublicObjectId(
                inputs=[m.SimplePublicObjectId(id=str(i)) for i in remote_ids[start:start + PAGE]])
            self._call(self._api(spec).batch_api.archive, batch_input_simple_public_object_id=body)
        return {}

    def deleted_since(self, key: str, cursor: str) -> DeletedPage:
        """Records of ``key`` archived in HubSpot at or after ``cursor`` (an
        ISO 8601 time): the list endpoint with ``archived=true`` (only
        archived records, each with ``archivedAt``; 100 a page, id order).
        HubSpot filters that list by nothing else, so every page is read
        and the time compared here; the next cursor is the latest
        ``archivedAt`` seen. Archived records are kept 90 days: a cursor
        older than that may have missed some (``DeletedPage.gap``)."""
        if key not in self.deletions_listed:
            raise NotImplementedError(f"HubSpot deletions of {key!r} are not read (only {sorted(self.deletions_listed)})")
        spec = self._spec(key)
        since = dt.datetime.fromisoformat(cursor.replace("Z", "+00:00")) if cursor else None
        now = dt.datetime.now(dt.timezone.utc)
        gap = cursor if since is not None and since < now - dt.timedelta(days=ARCHIVE_KEPT_DAYS) else ""
        rows: list[tuple[str, dt.datetime]] = []
        after = ""
        while True:
            kwargs = {"limit": PAGE, "archived": True, "properties": ["hs_object_id"]}
            if after:
                kwargs["after"] = after
            page = self._call(self._api(spec).basic_api.get_page, **kwargs)
            for item in page.results or []:
                at = item.archived_at or item.updated_at
                if at is not None and (since is None or at >= since):
                    rows.append((str(item.id), at))
            after = page.paging.next.after if page.paging and page.paging.next else ""
            if not after:
                break
        rows.sort(key=lambda r: (r[1], r[0]))
        latest = rows[-1][1].isoformat() if rows else cursor
        return DeletedPage([(i, at.isoformat()) for i, at in rows], latest, gap)

    def person_delete(self, remote_id: str) -> bool:
        """HubSpot's GDPR delete of a contact (``POST /crm/v3/objects/contacts/gdpr-delete``
        with ``{"objectId": id}``, answered 204): the contact and its
        history are purged in HubSpot. False when HubSpot has no such contact
        (404: deleted already, e.g. a retry after a lost answer). The
        generated client has no GDPR API, so the contacts client's
        ``call_api`` sends it (same host, token, errors and retries)."""
        api_client = self.client.crm.contacts.basic_api.api_client

        def purge(_request_timeout=None):
            return api_client.call_api(
                "/crm/v3/objects/contacts/gdpr-delete", "POST", {}, [],
                {"Content-Type": "application/json", "Accept": "*/*"}, body={"objectId": str(remote_id)},
                response_types_map={}, auth_settings=["oauth2"], _request_timeout=_request_timeout)

        try:
            self._call(purge)
        except PermanentError as exc:
            if "404" in str(exc):
                return False
            raise
        return True

    def owners(self) -> list[dict[str, str]]:
        """Every owner, all pages of 500 (the documented most), then the
        archived ones (deactivated users), which HubSpot lists only with
        ``archived=true``: they come back inactive, so a rep linked to one
        sees it."""
        api = self.client.crm.owners.owners_api
        out = []
        for archived in (False, True):
            after = None
            while True:
                kwargs = {"limit": OWNERS_PAGE, "archived": archived}
                if after:
                    kwargs["after"] = after
                page = self._call(api.get_page, **kwargs)
                out += [{"remote_id": str(o.id), "email": o.email or "", "first_name": o.first_name or "",
                         "last_name": o.last_name or "", "is_active": not (archived or o.archived)}
                        for o in page.results or []]
                after = page.paging.next.after if page.paging and page.paging.next else None
                if not after:
                    break
        return out

    def verify_webhook(self, *, method: str, uri: str, body: bytes, headers: dict[str, str]) -> bool:
        return verify_v3_signature(secret=settings.MARTECH_CRM["HUBSPOT_APP_SECRET"], method=method, uri=uri,
                                   body=body, headers=headers)


# --- schema (martech.crm.schema) ---

def schema_objects(connector) -> list[str]:
    """The object types whose definitions the check reads: every one synced."""
    from martech.crm import objects

    return [OBJECTS[o.key].name for o in objects.synced_by(connector) if o.key in OBJECTS]


def schema_targets(obj: str, remote_field: str) -> list[tuple[str, str]]:
    """Where a mapping's remote field lands: (object type, property)."""
    return [(OBJECTS[obj].name, remote_field)] if obj in OBJECTS else []


def create_steps(remote_object: str, name: str, kind: str, *, unique: bool = False) -> str:
    label = OBJECT_LABELS.get(remote_object, remote_object)
    steps = (f"Create it in HubSpot: Settings > Properties > Create property: object {label}, label {name}, "
             f"internal name {name}, type {FIELD_TYPES.get(kind, 'Single-line text').lower()}")
    return steps + (", 'Require unique values' on." if unique else ".")


def schema_requirements(obj: str, connector=None) -> list:
    """The id property a type is upserted by (deals, tasks): ours, so it
    must exist, and with unique values to be upserted (else matched)."""
    from martech.crm.schema import Requirement

    spec = OBJECTS.get(obj)
    if spec is None or obj in ("contact", "company"):
        return []
    return [Requirement(spec.name, spec.id_property, True, create_steps(spec.name, spec.id_property, "text",
                                                                        unique=True),
                        f"our id, so a retried push updates the {OBJECT_LABELS[spec.name].lower()} it made")]


def not_unique(req, definition: dict) -> tuple[bool, str]:
    """(refused?, why) for a requirement present without unique values:
    HubSpot then matches (stored id, search, create), which works but costs
    a search per batch; not a refusal."""
    return False, (f"{req.remote_object}: {req.name} exists without unique values, so {req.remote_object} are "
                   "matched by the stored HubSpot id, else searched by it, else created (one search per batch); "
                   "turn on 'Require unique values' to upsert them in one call.")


def key_notes(obj: str, schemas: dict[str, dict]) -> list[str]:
    if obj == "company":
        return ["companies: domain is not a unique-value property in HubSpot (batch upsert refuses it), so "
                "companies are matched by the stored HubSpot id, else searched by domain, else created."]
    return []


def _stale(record: PushRecord, before: dict[str, list[str]]) -> dict[str, list[str]]:
    """Links in ``before`` that ``record`` no longer has, by object key."""
    out = {}
    for other, ids in before.items():
        gone = sorted(set(ids) - set(record.associations.get(other, [])))
        if gone:
            out[other] = gone
    return out


def sign_v3(*, secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = f"{method}{uri}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_v3_signature(*, secret: str, method: str, uri: str, body: bytes, headers: dict[str, str],
                        now: float | None = None, max_age: int = 300) -> bool:
    """HubSpot v3: base64(HMAC-SHA256(secret, method + uri + body + timestamp)),
    timestamp in milliseconds no older than five minutes."""
    signature = headers.get("X-HubSpot-Signature-v3") or ""
    timestamp = headers.get("X-HubSpot-Request-Timestamp") or ""
    if not secret or not signature or not timestamp.isdigit():
        return False
    now_ms = (now if now is not None else time.time()) * 1000
    if abs(now_ms - int(timestamp)) > max_age * 1000:
        return False
    expected = sign_v3(secret=secret, method=method, uri=uri, body=body, timestamp=timestamp)
    return hmac.compare_digest(expected, signature)
