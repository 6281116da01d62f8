"""HubSpot CRM emulator: the endpoints the connector uses, with the request
and response shapes of HubSpot's published OpenAPI documents
(tests/fixtures/hubspot/ validates both sides).

CRM v3, for each of contacts, companies, deals and tasks:
- POST /crm/v3/objects/{type}/batch/upsert   (idProperty: contacts email,
  companies domain, deals martech_deal_id, tasks martech_task_id; 100 max)
- POST /crm/v3/objects/{type}/search         (HubSpot's documented limits, unkind parts
  included: at most 200 a page; one sort (``sorts[0]``, ascending) and records
  sharing its value come in no particular order (a fixed scramble of their
  ids, not the id order); paging stops at 10,000 results: ``after`` + ``limit``
  past ``search_cap`` answers 400 VALIDATION_ERROR while ``paging.next`` is
  still offered; ``total`` is the real count. Filters EQ, NEQ, GT, GTE, LT,
  LTE on any property, AND within a group, OR between groups)
- GET  /crm/v3/objects/{type}?limit=&after=&properties=&archived=  (the list endpoint:
  id order, at most 100 a page, ``after`` paging with no cap; ``archived=true``
  lists only archived records, each with ``archivedAt``)
- DELETE /crm/v3/objects/{type}/{id} and POST /crm/v3/objects/{type}/batch/archive
  (100 max): archive (HubSpot's delete: to the recycling bin), 204 with no
  body, an id not there included; the record leaves search, list, get and
  batch read, its associations go, its unique key is free again
- POST /crm/v3/objects/{type}/batch/read     (by record id, 100 max; ids not found answer
  207 with an OBJECT_NOT_FOUND error naming them, like HubSpot)
- GET  /crm/v3/objects/{type}/{id}
- POST /crm/v3/objects/contacts/gdpr-delete  (``{"objectId", "idProperty"}``:
  by record id, or by email with ``idProperty: "email"``; 204 and the contact,
  its associations and list memberships are gone; as documented, an email
  not found is added to the portal's blocklist (``gdpr_blocked``, 204); an
  id not found is 404 OBJECT_NOT_FOUND)
- GET  /crm/v3/owners/?limit=&after=&archived=  (at most 500 a page; archived
  owners, deactivated users, are listed only with ``archived=true``, and only they)
CRM v4 associations (shapes of the client library's v4 models; the
document is not in the shared specs):
- POST /crm/v4/associations/{from}/{to}/batch/associate/default
- POST /crm/v4/associations/{from}/{to}/batch/read
- POST /crm/v4/associations/{from}/{to}/batch/archive  (204, no body, like HubSpot;
  removes every association between each pair, both directions)

Lists v3 (shapes of hubspot-api-client's ``hubspot.crm.lists`` models; the
document is not in the shared specs):
- POST /crm/v3/lists                      (name, objectTypeId, processingType
  MANUAL, DYNAMIC or SNAPSHOT; a name already used in the portal, whatever its
  case, is refused with 409 CONFLICT)
- GET  /crm/v3/lists/{listId}
- GET  /crm/v3/lists/object-type-id/{objectTypeId}/name/{listName}  (name not case sensitive; 404)
- PUT  /crm/v3/lists/{listId}/memberships/add-and-remove  (recordIdsToAdd,
  recordIdsToRemove; MANUAL and SNAPSHOT lists only: a DYNAMIC list's
  members follow its filters and the call is refused 400; at most 100,000
  ids per call; ids of records the portal does not have are answered in
  recordIdsMissing and not added; adding a member or removing a non-member
  changes nothing and is not in recordsIdsAdded / recordIdsRemoved)
- GET  /crm/v3/lists/{listId}/memberships  (by recordId ascending, ``limit``
  at most 250, ``after`` paging)
Also, per object type:
- POST /crm/v3/objects/{type}/batch/create   (no idProperty: every input is a new record)
- POST /crm/v3/objects/{type}/batch/update   (by record id; ids not found: OBJECT_NOT_FOUND)
- search filters ``IN`` / ``EQ`` on any property (companies by ``domain``)
Properties API (hubspot_schema.py holds the standard definitions):
- GET  /crm/v3/properties/{type}             (every property with its flags)
- POST /crm/v3/properties/{type}             (create a custom one; 409 if it exists)

Per-record refusals answer HTTP 207 with an error naming the input, like
HubSpot: an email that is not an address (INVALID_EMAIL), a domain that is
not a host name, a deal amount that is not a number, a deal stage the
pipeline does not have, a task without hs_timestamp; a property the portal
does not have (PROPERTY_DOESNT_EXIST), one HubSpot sets itself
(READ_ONLY_VALUE), an enumeration value not among its options
(INVALID_OPTION). Batch upsert refuses (400, the whole call) an
``idProperty`` that is not a unique-value property (``hasUniqueValue``;
contacts also take ``email``, as HubSpot documents): companies cannot be
upserted by ``domain``, deals and tasks only once ``martech_deal_id`` /
``martech_task_id`` exist with unique values. ``lose_answers`` (the next N
writes are done but answered 503) plays a lost answer.

Rate limits, as HubSpot documents them for private apps: every answer
carries ``X-HubSpot-RateLimit-Max``, ``-Remaining`` and
``-Interval-Milliseconds`` (the rolling window: 190 per 10 s by default),
``-Secondly``/``-Secondly-Remaining`` and ``-Daily``/``-Daily-Remaining``
(the day, in UTC here), counted from the requests the emulator accepted.
``rate_limit`` ("190/10s") enforces the window and ``daily_limit`` the day;
off by default (counted, not enforced). A refused request answers 429 with
HubSpot's body (``status``, ``message``, ``errorType`` RATE_LIMIT,
``correlationId``, ``policyName`` TEN_SECONDLY_ROLLING or DAILY) and the
headers, and no ``Retry-After`` (HubSpot sends none). ``burst_429`` answers
the next N requests the same way (policy TEN_SECONDLY_ROLLING).

The search endpoints have a limit of their own, per token (the
``Authorization`` header): ``search_rate``, enforced by default at HubSpot's
documented 5 requests per second (its CRM search guide, "Limitations"; an
older changelog said 4: set ``search_rate="4/1s"`` for that, or None to turn
it off). A search past it, in any rolling second, answers 429 with the body
HubSpot sends for a secondly limit (``policyName`` SECONDLY, "You have
reached your secondly limit."), the usual X-HubSpot-RateLimit-* headers
(they describe the ten-second window, not this one) and no ``Retry-After``.
A refused search counts against no limit; an accepted one counts against
the general ones too.
"""
from __future__ import annotations

import bisect
import collections
import datetime as dt
import hashlib
import itertools
import json
import math
import re
import time
import uuid
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from martech.crm.connectors.base import parse_rate

from .base import EmulatorBase
from .hubspot_schema import OBJECT_TYPE_IDS, PROJECT_PROPERTIES, STANDARD, from_create

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
# HubSpot's default sales pipeline stage ids.
DEAL_STAGES = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
               "contractsent", "closedwon", "closedlost")
# HubSpot-defined default association type ids (from -> to).
ASSOCIATION_TYPES = {("deals", "companies"): 5, ("companies", "deals"): 6, ("deals", "contacts"): 3,
                     ("contacts", "deals"): 4, ("tasks", "contacts"): 204, ("contacts", "tasks"): 203,
                     ("tasks", "companies"): 192, ("companies", "tasks"): 191, ("contacts", "companies"): 279,
                     ("companies", "contacts"): 280, ("tasks", "deals"): 216, ("deals", "tasks"): 215}


def now_iso(at: dt.datetime | None = None) -> str:
    at = at or dt.datetime.now(dt.timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ObjectKind:
    name: str
    id_property: str  # the unique property batch upsert accepts
    modified: str     # last-modified property


KINDS = {k.name: k for k in (
    ObjectKind("contacts", "email", "lastmodifieddate"),
    ObjectKind("companies", "domain", "hs_lastmodifieddate"),
    ObjectKind("deals", "martech_deal_id", "hs_lastmodifieddate"),
    ObjectKind("tasks", "martech_task_id", "hs_lastmodifieddate"),
)}


# What the headers report when the knobs are off: a Professional/Enterprise
# private app's window and a Professional portal's daily allowance.
DEFAULT_RATE = (190, 10.0)
DEFAULT_DAILY = 625_000
# Search requests per token: HubSpot's CRM search guide ("Limitations") says 5
# per second (its 2020 changelog said 4).
DEFAULT_SEARCH_RATE = "5/1s"


_UNSET = object()


class HubSpotEmulator(EmulatorBase):
    BATCH_MAX = 100
    SEARCH_PAGE_MAX = 200
    LIST_PAGE_MAX = 100
    OWNERS_PAGE_MAX = 500

    def __init__(self, *, rate_limit: str | None = None, daily_limit: int | None = None,
                 search_rate: str | None = DEFAULT_SEARCH_RATE, **kwargs):
        super().__init__(**kwargs)
        self.search_rate = search_rate  # "5/1s" per token, enforced; None: not limited
        self.search_window: dict[str, collections.deque] = {}  # token -> monotonic times of accepted searches
        self.retry_after = None  # HubSpot's 429 has no Retry-After
        self.rate_limit = rate_limit  # "190/10s": enforced; None: counted only
        self.daily_limit = daily_limit  # enforced when set
        self.window: collections.deque = collections.deque()  # monotonic times of accepted requests
        self.day, self.day_used = None, 0
        self.refused_429: collections.Counter = collections.Counter()  # by policyName
        self.clock = time.monotonic
        self.store: dict[str, dict[str, dict]] = {name: {} for name in KINDS}  # type -> id -> SimplePublicObject
        self.index: dict[str, dict[str, str]] = {name: {} for name in KINDS}   # type -> unique key -> id
        # Archived (deleted) records: type -> id -> the record with archived/archivedAt (the recycling bin).
        self.archived: dict[str, dict[str, dict]] = {name: {} for name in KINDS}
        # (from type, from id, to type) -> set of to ids; kept both ways.
        self.associations: dict[tuple[str, str, str], set[str]] = {}
        self.owners: list[dict] = []
        self._ids = itertools.count(1001)
        # Lists v3: listId -> PublicObjectList (without "size"), and listId -> {record id: joined at}.
        self.lists: dict[str, dict] = {}
        # Emails a GDPR delete by email did not find (HubSpot blocklists them).
        self.gdpr_blocked: set[str] = set()
        self.list_members: dict[str, dict[str, str]] = {}
        self._list_ids = itertools.count(1)
        # The next N writes (POST/PUT) are done, then answered 503 (a lost answer).
        self.lose_answers = 0
        self._clock_ms = 0  # makes updatedAt strictly increase even within one millisecond
        # HubSpot's search stops at 10,000 results; tests lower it to exercise the
        # windowing on fewer records (the connector's ``search_cap`` follows).
        self.search_cap = 10_000
        self._scrambled: dict[str, str] = {}  # record id -> its place among ties (a fixed scramble)
        # The bench's big portals: a search's sorted matches kept for its next
        # pages while nothing was written (``put``, ``archive`` or any request
        # but a GET or a search moves ``_version``). Off by default: a test that edits a
        # record in place between pages sees the change as HubSpot would.
        self.search_memo = False
        self._memo: tuple = ()
        self._version = 0
        self._list_memo: dict[tuple[str, bool], tuple] = {}  # the list endpoint's sorted ids (``_sorted_ids``)
        # type -> property name -> definition (the properties API's Property shape).
        self.properties: dict[str, dict[str, dict]] = {
            name: {p["name"]: dict(p) for p in STANDARD[name]} for name in KINDS}

    def add_property(self, kind: str, body: dict) -> dict:
        """Create a custom property as *Settings > Properties* or the
        properties API does (``body`` is a PropertyCreate)."""
        definition = from_create(body)
        self.properties[kind][definition["name"]] = definition
        return definition

    def add_project_properties(self) -> None:
        """The custom properties this project needs (hubspot_schema.PROJECT_PROPERTIES),
        as an operator creates them once per portal."""
        for kind, bodies in PROJECT_PROPERTIES.items():
            for body in bodies:
                self.add_property(kind, body)

    # --- rate limits ---
    def _rate(self) -> tuple[int, float]:
        return parse_rate(self.rate_limit) if self.rate_limit else DEFAULT_RATE

    def _counts(self) -> tuple[int, int, int]:
        """Requests accepted in the rolling window, in the last second, and today (UTC)."""
        now = self.clock()
        limit, window = self._rate()
        while self.window and self.window[0] <= now - window:
            self.window.popleft()
        today = dt.datetime.now(dt.timezone.utc).date()
        if self.day != today:
            self.day, self.day_used = today, 0
        last_second = sum(1 for t in self.window if t > now - 1)
        return len(self.window), last_second, self.day_used

    def rate_limited(self, policy: str = "TEN_SECONDLY_ROLLING") -> Response:
        """HubSpot's 429: its body and headers, no Retry-After."""
        self.refused_429[policy] += 1
        what = "daily" if policy == "DAILY" else policy.lower()
        return self.json({"status": "error", "message": f"You have reached your {what} limit.",
                          "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()), "policyName": policy,
                          "requestId": str(uuid.uuid4())}, status=429)

    def _search_refused(self, request: Request) -> bool:
        """A search past ``search_rate`` for its token; an accepted one is counted."""
        if not (self.search_rate and request.method == "POST" and request.path.rstrip("/").endswith("/search")):
            return False
        limit, window = parse_rate(self.search_rate)
        now = self.clock()
        times = self.search_window.setdefault(request.headers.get("Authorization", ""), collections.deque())
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= limit:
            return True
        times.append(now)
        return False

    def limit_refusal(self, request: Request) -> Response | None:
        in_window, _, today = self._counts()
        limit, _ = self._rate()
        if self.daily_limit is not None and today >= self.daily_limit:
            return self.rate_limited("DAILY")
        if self.rate_limit and in_window >= limit:
            return self.rate_limited("TEN_SECONDLY_ROLLING")
        if self._search_refused(request):
            return self.rate_limited("SECONDLY")
        self.window.append(self.clock())
        self.day_used += 1
        return None

    def decorate(self, request: Request, response: Response) -> None:
        in_window, last_second, today = self._counts()
        limit, window = self._rate()
        daily = self.daily_limit if self.daily_limit is not None else DEFAULT_DAILY
        secondly = math.ceil(limit / window)
        response.headers.update({
            "X-HubSpot-RateLimit-Max": str(limit),
            "X-HubSpot-RateLimit-Remaining": str(max(limit - in_window, 0)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(window * 1000)),
            "X-HubSpot-RateLimit-Secondly": str(secondly),
            "X-HubSpot-RateLimit-Secondly-Remaining": str(max(secondly - last_second, 0)),
            "X-HubSpot-RateLimit-Daily": str(daily),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(daily - today, 0)),
        })

    # Contacts under their old names (tests and the bench use them).
    @property
    def contacts(self) -> dict[str, dict]:
        return self.store["contacts"]

    @property
    def by_email(self) -> dict[str, str]:
        return self.index["contacts"]

    @property
    def companies(self) -> dict[str, dict]:
        return self.store["companies"]

    @property
    def deals(self) -> dict[str, dict]:
        return self.store["deals"]

    @property
    def tasks(self) -> dict[str, dict]:
        return self.store["tasks"]

    def find(self, kind: str, key: str) -> dict | None:
        object_id = self.index[kind].get(str(key).lower())
        return self.store[kind].get(object_id) if object_id else None

    def associated(self, from_kind: str, from_id: str, to_kind: str) -> set[str]:
        return set(self.associations.get((from_kind, str(from_id), to_kind), set()))

    def _stamp(self) -> str:
        now = dt.datetime.now(dt.timezone.utc)
        ms = max(int(now.timestamp() * 1000), self._clock_ms + 1)
        self._clock_ms = ms
        return now_iso(dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc))

    # --- state helpers (tests use them to play "a salesperson edited it") ---
    def put(self, kind: str, properties: dict[str, str], *, object_id: str | None = None,
            at: dt.datetime | None = None) -> dict:
        spec = KINDS[kind]
        key = str(properties.get(spec.id_property) or "").lower()
        if object_id is None and key:
            object_id = self.index[kind].get(key)
        stamp = now_iso(at) if at else self._stamp()
        self._version += 1
        if object_id is None or object_id not in self.store[kind]:
            object_id = object_id or str(next(self._ids))
            self.store[kind][object_id] = {"id": object_id, "properties": {"createdate": stamp}, "createdAt": stamp,
                                           "archived": False}
        if key:
            self.index[kind][key] = object_id
        record = self.store[kind][object_id]
        record["properties"].update({k: ("" if v is None else str(v)) for k, v in properties.items()})
        if key:
            record["properties"][spec.id_property] = key if kind in ("contacts", "companies") else \
                str(properties[spec.id_property])
        record["properties"]["hs_object_id"] = object_id
        record["properties"][spec.modified] = stamp
        record["updatedAt"] = stamp
        return record

    def put_contact(self, properties: dict[str, str], *, at: dt.datetime | None = None) -> dict:
        return self.put("contacts", properties, at=at)

    def associate(self, from_kind: str, from_id: str, to_kind: str, to_id: str) -> None:
        self.associations.setdefault((from_kind, str(from_id), to_kind), set()).add(str(to_id))
        self.associations.setdefault((to_kind, str(to_id), from_kind), set()).add(str(from_id))

    def dissociate(self, from_kind: str, from_id: str, to_kind: str, to_id: str) -> None:
        self.associations.get((from_kind, str(from_id), to_kind), set()).discard(str(to_id))
        self.associations.get((to_kind, str(to_id), from_kind), set()).discard(str(from_id))

    def archive(self, kind: str, object_id: str, *, at: dt.datetime | None = None) -> bool:
        """Archive (delete) a record, as ``DELETE /crm/v3/objects/{type}/{id}``
        and batch archive do: it leaves search, the list, get and batch read,
        its unique key is free again and its associations go; it is listed
        with ``archived=true`` (with ``archivedAt``). False when there is none."""
        record = self.store[kind].pop(str(object_id), None)
        if record is None:
            return False
        self._version += 1
        stamp = now_iso(at) if at else self._stamp()
        self.archived[kind][record["id"]] = {**record, "archived": True, "archivedAt": stamp, "updatedAt": stamp}
        for key, value in list(self.index[kind].items()):
            if value == record["id"]:
                del self.index[kind][key]
        for (from_kind, from_id, to_kind), ids in list(self.associations.items()):
            if (from_kind, from_id) == (kind, record["id"]):
                del self.associations[(from_kind, from_id, to_kind)]
            elif to_kind == kind:
                ids.discard(record["id"])
        return True

    def restore(self, kind: str, object_id: str) -> dict:
        """A user restores an archived record from HubSpot's recycling bin:
        live again with its id, modified now (so a pull by modification sees it)."""
        record = self.archived[kind].pop(str(object_id))
        record = {k: v for k, v in record.items() if k != "archivedAt"}
        record["archived"] = False
        self.store[kind][record["id"]] = record
        key = record["properties"].get(KINDS[kind].id_property)
        if key:
            self.index[kind][key.lower()] = record["id"]
        return self.put(kind, {}, object_id=record["id"])

    def add_owner(self, *, owner_id: str, email: str, first_name: str = "", last_name: str = "",
                  archived: bool = False) -> None:
        self.owners.append({"id": owner_id, "email": email, "firstName": first_name, "lastName": last_name,
                            "userId": int(owner_id), "userIdIncludingInactive": int(owner_id),
                            "createdAt": now_iso(), "updatedAt": now_iso(), "archived": archived, "type": "PERSON"})

    def archive_owner(self, owner_id: str) -> None:
        """A user deactivated in HubSpot: the owner leaves the default listing."""
        for owner in self.owners:
            if owner["id"] == str(owner_id):
                owner.update(archived=True, updatedAt=now_iso())

    def put_list(self, name: str, *, processing_type: str = "MANUAL", object_type_id: str = "0-1") -> dict:
        """A list as if made in HubSpot (tests: a DYNAMIC list of the same name)."""
        list_id = str(next(self._list_ids))
        stamp = self._stamp()
        self.lists[list_id] = {"listId": list_id, "name": name, "objectTypeId": object_type_id,
                               "processingType": processing_type, "processingStatus": "COMPLETE",
                               "listVersion": 1, "createdAt": stamp, "updatedAt": stamp}
        self.list_members[list_id] = {}
        return self.lists[list_id]

    def list_by_name(self, name: str, object_type_id: str = "0-1") -> dict | None:
        return next((lst for lst in self.lists.values()
                     if lst["name"].lower() == name.lower() and lst["objectTypeId"] == object_type_id), None)

    def _list_public(self, list_id: str) -> dict:
        return {**self.lists[list_id], "size": len(self.list_members[list_id])}

    # --- HTTP ---
    def dispatch(self, request: Request) -> Response:
        if not (request.method == "GET" or request.method == "POST" and request.path.endswith("/search")):
            self._version += 1  # a request that may write (GETs and searches never do)
        response = self._dispatch(request)
        if self.lose_answers > 0 and _is_write(request) and response.status_code < 400:
            # The write happened; the caller never hears about it.
            self.lose_answers -= 1
            return self.unavailable()
        return response

    def _dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        parts = path.split("/")
        if parts[1:4] == ["crm", "v3", "lists"]:
            return self.lists_route(request, parts[4:])
        if path == "/crm/v3/owners" and request.method == "GET":
            return self.owners_page(request.args)
        if len(parts) == 5 and parts[1:4] == ["crm", "v3", "properties"] and parts[4] in KINDS:
            if request.method == "GET":
                return self.json({"results": list(self.properties[parts[4]].values())})
            if request.method == "POST":
                return self.property_create(parts[4], request.get_json())
        if path == "/crm/v3/objects/contacts/gdpr-delete" and request.method == "POST":
            return self.gdpr_delete(request.get_json())
        if len(parts) >= 5 and parts[1:4] == ["crm", "v3", "objects"] and parts[4] in KINDS:
            kind, rest = parts[4], parts[5:]
            if request.method == "POST" and rest == ["batch", "upsert"]:
                return self.batch_upsert(kind, request.get_json())
            if request.method == "POST" and rest == ["batch", "create"]:
                return self.batch_create(kind, request.get_json())
            if request.method == "POST" and rest == ["batch", "update"]:
                return self.batch_update(kind, request.get_json())
            if request.method == "POST" and rest == ["batch", "read"]:
                return self.batch_read(kind, request.get_json())
            if request.method == "POST" and rest == ["batch", "archive"]:
                return self.batch_archive(kind, request.get_json())
            if request.method == "DELETE" and len(rest) == 1:
                # Archive: 204 whether or not the record is there (HubSpot's documented answer is 204).
                self.archive(kind, rest[0])
                return Response(status=204)
            if request.method == "POST" and rest == ["search"]:
                return self.search(kind, request.get_json())
            if request.method == "GET" and not rest:
                return self.list_page(kind, request.args)
            if request.method == "GET" and len(rest) == 1:
                record = self.store[kind].get(rest[0])
                if record is None:
                    return self.error(404, "OBJECT_NOT_FOUND", "Not found")
                # The client repeats the parameter; HubSpot also takes a comma-separated list.
                wanted = [p for value in request.args.getlist("properties") for p in value.split(",") if p]
                return self.json(self._public(record, wanted))
        if len(parts) == 8 and parts[1:4] == ["crm", "v4", "associations"] and request.method == "POST":
            from_kind, to_kind, action = parts[4], parts[5], "/".join(parts[6:])
            if from_kind in KINDS and to_kind in KINDS:
                if action == "batch/read":
                    return self.associations_read(from_kind, to_kind, request.get_json())
                if action == "batch/archive":
                    return self.associations_archive(from_kind, to_kind, request.get_json())
        if len(parts) == 9 and parts[1:4] == ["crm", "v4", "associations"] and request.method == "POST" \
                and parts[6:] == ["batch", "associate", "default"] and parts[4] in KINDS and parts[5] in KINDS:
            return self.associate_default(parts[4], parts[5], request.get_json())
        return self.error(404, "NOT_FOUND", f"No route {request.method} {path}")

    def gdpr_delete(self, body) -> Response:
        """HubSpot's GDPR delete: the contact is purged (not archived: it
        is in no list, search or association any more)."""
        body = body if isinstance(body, dict) else {}
        object_id = str(body.get("objectId") or "")
        if str(body.get("idProperty") or "") == "email":
            email = object_id.lower()
            object_id = self.by_email.get(email, "")
            if object_id not in self.contacts:
                # "If email address is not found, the email address will be added to a blocklist."
                self.gdpr_blocked.add(email)
                return Response(status=204)
        record = self.contacts.get(object_id)
        if record is None:
            return self.error(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.")
        del self.contacts[object_id]
        for key, value in list(self.by_email.items()):
            if value == object_id:
                del self.by_email[key]
        for (from_kind, from_id, to_kind), ids in list(self.associations.items()):
            if (from_kind, from_id) == ("contacts", object_id):
                del self.associations[(from_kind, from_id, to_kind)]
            elif to_kind == "contacts":
                ids.discard(object_id)
        for members in self.list_members.values():
            members.pop(object_id, None)
        return Response(status=204)

    # --- lists v3 ---
    LIST_IDS_MAX = 100_000  # record ids per membership call
    MEMBERSHIPS_PAGE_MAX = 250  # memberships read; the objects' list pages stay at LIST_PAGE_MAX

    def lists_route(self, request: Request, rest: list[str]) -> Response:
        method = request.method
        if method == "POST" and rest == []:
            return self.list_create(request.get_json(silent=True))
        if method == "GET" and len(rest) == 4 and rest[0] == "object-type-id" and rest[2] == "name":
            found = self.list_by_name(rest[3], rest[1])
            if found is None:
                return self.error(404, "OBJECT_NOT_FOUND", f"List with name {rest[3]} does not exist.")
            return self.json({"list": self._list_public(found["listId"])})
        if not rest or rest[0] not in self.lists:
            return self.error(404, "OBJECT_NOT_FOUND", f"List {rest[0] if rest else ''} does not exist.")
        list_id = rest[0]
        if method == "GET" and len(rest) == 1:
            return self.json({"list": self._list_public(list_id)})
        if method == "PUT" and rest[1:] == ["memberships", "add-and-remove"]:
            return self.list_add_and_remove(list_id, request.get_json(silent=True))
        if method == "GET" and rest[1:] == ["memberships"]:
            return self.list_memberships(list_id, request.args)
        return self.error(404, "NOT_FOUND", f"No route {method} {request.path}")

    def list_create(self, body) -> Response:
        body = body if isinstance(body, dict) else {}
        missing = [f for f in ("name", "objectTypeId", "processingType") if not body.get(f)]
        if missing:
            return self.error(400, "VALIDATION_ERROR", f"Missing required fields: {', '.join(missing)}")
        if body["processingType"] not in ("MANUAL", "DYNAMIC", "SNAPSHOT"):
            return self.error(400, "VALIDATION_ERROR",
                              f"processingType {body['processingType']!r} is not MANUAL, DYNAMIC or SNAPSHOT")
        if any(lst["name"].lower() == str(body["name"]).lower() for lst in self.lists.values()):
            return self.error(409, "CONFLICT", f"A list named {body['name']!r} already exists.")
        made = self.put_list(str(body["name"]), processing_type=body["processingType"],
                             object_type_id=str(body["objectTypeId"]))
        return self.json({"list": self._list_public(made["listId"])})

    def list_add_and_remove(self, list_id: str, body) -> Response:
        body = body if isinstance(body, dict) else {}
        add, remove = body.get("recordIdsToAdd"), body.get("recordIdsToRemove")
        if not isinstance(add, list) or not isinstance(remove, list):
            return self.error(400, "VALIDATION_ERROR", "recordIdsToAdd and recordIdsToRemove (lists) are required")
        if len(add) + len(remove) > self.LIST_IDS_MAX:
            return self.error(400, "VALIDATION_ERROR", f"at most {self.LIST_IDS_MAX} record ids per call")
        lst = self.lists[list_id]
        if lst["processingType"] == "DYNAMIC":
            return self.error(400, "VALIDATION_ERROR",
                              f"List {list_id} is a DYNAMIC list: its memberships follow its filters and cannot "
                              "be changed manually.")
        kind = {"0-1": "contacts", "0-2": "companies", "0-3": "deals"}.get(lst["objectTypeId"], "")
        members, stamp = self.list_members[list_id], self._stamp()
        added, removed, missing = [], [], []
        for record_id in (str(r) for r in remove):
            if members.pop(record_id, None) is not None:
                removed.append(record_id)
        for record_id in (str(r) for r in add):
            if record_id not in self.store.get(kind, {}):
                missing.append(record_id)
            elif record_id not in members:
                members[record_id] = stamp
                added.append(record_id)
        if added or removed:
            lst["updatedAt"] = stamp
        return self.json({"recordIdsRemoved": removed, "recordsIdsAdded": added, "recordIdsMissing": missing})

    def list_memberships(self, list_id: str, args) -> Response:
        try:
            limit = int(args.get("limit") or 100)
        except ValueError:
            return self.error(400, "VALIDATION_ERROR", "limit must be a number")
        if not 1 <= limit <= self.MEMBERSHIPS_PAGE_MAX:
            return self.error(400, "VALIDATION_ERROR", f"limit must be between 1 and {self.MEMBERSHIPS_PAGE_MAX}")
        ids = sorted(self.list_members[list_id], key=int)
        after = args.get("after")
        if after:
            ids = [i for i in ids if int(i) > int(after)]
        page = ids[:limit]
        out: dict = {"total": len(self.list_members[list_id]), "results": [
            {"recordId": i, "membershipTimestamp": self.list_members[list_id][i]} for i in page]}
        if len(ids) > limit:
            out["paging"] = {"next": {"after": page[-1]}}
        return self.json(out)

    def error(self, status: int, category: str, message: str, **context) -> Response:
        return self.json({"status": "error", "message": message, "category": category, "correlationId": "emu",
                          "context": {k: [str(x) for x in v] for k, v in context.items()}, "errors": [],
                          "links": {}}, status=status)

    @staticmethod
    def _public(record: dict, wanted: list[str] | None = None) -> dict:
        out = {k: record[k] for k in ("id", "properties", "createdAt", "updatedAt", "archived", "archivedAt")
               if k in record}
        if wanted:
            out["properties"] = {k: v for k, v in record["properties"].items()
                                 if k in wanted or k in ("hs_object_id", "createdate")}
        return out

    def _refusal(self, kind: str, key: str, properties: dict) -> str:
        """HubSpot's per-record validation, as far as the tests need it."""
        if kind == "contacts" and not EMAIL.match(key):
            return f"Property values were not valid: INVALID_EMAIL {key!r}"
        if kind == "companies" and not DOMAIN.match(key):
            return f"Property values were not valid: INVALID_DOMAIN {key!r}"
        if kind == "deals":
            amount = properties.get("amount")
            if amount not in (None, "") and not NUMBER.match(str(amount)):
                return f"Property values were not valid: amount {amount!r} is not a number"
            stage = properties.get("dealstage")
            if stage not in (None, "") and stage not in DEAL_STAGES:
                return f"Property values were not valid: dealstage {stage!r} is not a stage of the pipeline"
        if kind == "tasks" and not properties.get("hs_timestamp") and self.index[kind].get(key) is None:
            return "Property values were not valid: hs_timestamp is required"
        return self._property_refusal(kind, properties)

    def _property_refusal(self, kind: str, properties: dict) -> str:
        """HubSpot's property validation: the property must exist, be
        writable, and an enumeration's value one of its options. The message
        is HubSpot's: ``Property values were not valid: [{...}]`` with the
        error code and the property's name."""
        problems = []
        for name, value in properties.items():
            definition = self.properties[kind].get(name)
            if definition is None:
                problems.append(("PROPERTY_DOESNT_EXIST", name, f'Property "{name}" does not exist'))
            elif definition["modificationMetadata"]["readOnlyValue"] or definition["calculated"]:
                problems.append(("READ_ONLY_VALUE", name,
                                 f'"{name}" is a read only property; its value cannot be set.'))
            elif definition["type"] == "enumeration" and not definition["externalOptions"] and value not in (None, ""):
                allowed = [o["value"] for o in definition["options"]]
                values = str(value).split(";") if definition["fieldType"] == "checkbox" else [str(value)]
                bad = [v for v in values if v not in allowed]
                if bad:
                    problems.append(("INVALID_OPTION", name, f'{bad[0]} was not one of the allowed options: '
                                                             f'[{", ".join(allowed)}]'))
        if not problems:
            return ""
        return "Property values were not valid: " + json.dumps(
            [{"isValid": False, "message": message, "error": code, "name": name, "localizedErrorMessage": message}
             for code, name, message in problems])

    def _unique_key(self, kind: str, name: str) -> bool:
        definition = self.properties[kind].get(name)
        return bool(definition and definition["hasUniqueValue"]) or (kind == "contacts" and name == "email")

    def property_create(self, kind: str, body: dict) -> Response:
        body = body or {}
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return self.error(400, "VALIDATION_ERROR", f"Missing required fields: {', '.join(missing)}")
        if body["name"] in self.properties[kind]:
            return self.error(409, "OBJECT_ALREADY_EXISTS",
                              f"A property named '{body['name']}' already exists.")
        return self.json(self.add_property(kind, body), status=201)

    def batch_upsert(self, kind: str, body: dict) -> Response:
        spec = KINDS[kind]
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        if len(inputs) > self.BATCH_MAX:
            return self.error(400, "VALIDATION_ERROR", f"at most {self.BATCH_MAX} inputs")
        started = now_iso()
        results, errors = [], []
        for item in inputs:
            id_property = item.get("idProperty") or ""
            if not self._unique_key(kind, id_property):
                return self.error(400, "VALIDATION_ERROR", f"Unable to perform update/upsert by non-unique "
                                                           f"{OBJECT_TYPE_IDS[kind]} property {id_property} in "
                                                           "portal ID 1234567")
            if id_property != spec.id_property:
                return self.error(400, "VALIDATION_ERROR", f"the emulator upserts {kind} by {spec.id_property}")
            key = str(item.get("id", "")).strip()
            properties = item.get("properties", {}) or {}
            refusal = self._refusal(kind, key.lower(), properties)
            if refusal:
                errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": refusal,
                               "context": {"ids": [key]}, "errors": [], "links": {}})
                continue
            new = key.lower() not in self.index[kind]
            record = self.put(kind, {**properties, spec.id_property: key})
            results.append({**self._public(record), "new": new})
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return self.json(out, status=207)
        return self.json(out)

    def _inputs(self, body: dict) -> tuple[list | None, Response | None]:
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return None, self.error(400, "VALIDATION_ERROR", "inputs is required")
        if len(inputs) > self.BATCH_MAX:
            return None, self.error(400, "VALIDATION_ERROR", f"at most {self.BATCH_MAX} inputs")
        return inputs, None

    def _batch_answer(self, started: str, results: list, errors: list) -> Response:
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return self.json(out, status=207)
        return self.json(out, status=201)

    def _validated(self, kind: str, properties: dict) -> str:
        """The per-record checks of batch create and update (upsert's, without its key)."""
        if kind in ("contacts", "companies"):
            key = str(properties.get(KINDS[kind].id_property) or "").strip().lower()
            if kind == "companies" and key and not DOMAIN.match(key):
                return f"Property values were not valid: INVALID_DOMAIN {key!r}"
            if kind == "contacts" and key and not EMAIL.match(key):
                return f"Property values were not valid: INVALID_EMAIL {key!r}"
            return self._property_refusal(kind, properties)
        if kind == "tasks":  # hs_timestamp: required on create only (batch_create)
            return self._property_refusal(kind, properties)
        return self._refusal(kind, "", properties)

    def batch_create(self, kind: str, body: dict) -> Response:
        """Every input is a new record, whatever its properties hold: HubSpot
        does not deduplicate companies created through the API (by domain or
        otherwise), so creating the same company twice makes two."""
        inputs, refused = self._inputs(body)
        if refused:
            return refused
        started = now_iso()
        results, errors = [], []
        for item in inputs:
            properties = {k: ("" if v is None else str(v)) for k, v in ((item or {}).get("properties") or {}).items()}
            refusal = self._validated(kind, properties)
            if kind == "tasks" and not properties.get("hs_timestamp"):
                refusal = refusal or "Property values were not valid: hs_timestamp is required"
            trace = (item or {}).get("objectWriteTraceId")
            if refusal:
                # The input's objectWriteTraceId names it in the error (HubSpot's documented way).
                errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": refusal,
                               "context": {"objectWriteTraceId": [str(trace)]} if trace else {},
                               "errors": [], "links": {}})
                continue
            record = self.put(kind, properties, object_id=str(next(self._ids)))
            results.append({**self._public(record), **({"objectWriteTraceId": str(trace)} if trace else {})})
        return self._batch_answer(started, results, errors)

    def batch_update(self, kind: str, body: dict) -> Response:
        """Records by HubSpot id (no idProperty); ids not found are named in
        one OBJECT_NOT_FOUND error, like batch read."""
        inputs, refused = self._inputs(body)
        if refused:
            return refused
        started = now_iso()
        results, errors, missing = [], [], []
        for item in inputs:
            item = item or {}
            if item.get("idProperty"):
                return self.error(400, "VALIDATION_ERROR", "the emulator updates by record id only")
            object_id = str(item.get("id", ""))
            properties = {k: ("" if v is None else str(v)) for k, v in (item.get("properties") or {}).items()}
            if object_id not in self.store[kind]:
                missing.append(object_id)
                continue
            refusal = self._validated(kind, properties)
            if refusal:
                errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": refusal,
                               "context": {"ids": [object_id]}, "errors": [], "links": {}})
                continue
            results.append(self._public(self.put(kind, properties, object_id=object_id)))
        if missing:
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                           "message": f"Could not get some {kind} objects, they may be deleted or not exist. "
                                      "Check that ids are valid.", "context": {"ids": missing}, "errors": [],
                           "links": {}})
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return self.json(out, status=207)
        return self.json(out)

    def batch_read(self, kind: str, body: dict) -> Response:
        """Records by id (no idProperty: HubSpot's own ids), with the
        properties asked for; the ones not found are named in one error."""
        body = body or {}
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        if len(inputs) > self.BATCH_MAX:
            return self.error(400, "VALIDATION_ERROR", f"at most {self.BATCH_MAX} inputs")
        if body.get("idProperty"):
            return self.error(400, "VALIDATION_ERROR", "the emulator reads by record id only")
        started = now_iso()
        wanted = body.get("properties") or []
        results, missing = [], []
        for item in inputs:
            object_id = str((item or {}).get("id", ""))
            record = self.store[kind].get(object_id)
            if record is None:
                missing.append(object_id)
            else:
                results.append(self._public(record, [*wanted, KINDS[kind].modified] if wanted else None))
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if missing:
            out.update(numErrors=1, errors=[{
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": f"Could not get some {kind} objects, they may be deleted or not exist. "
                           "Check that ids are valid.",
                "context": {"ids": missing}, "errors": [], "links": {}}])
            return self.json(out, status=207)
        return self.json(out)

    def _value(self, kind: str, record: dict, prop: str):
        """A property as search compares it: the modified property is the
        record's updatedAt, numbers (hs_object_id ...) as numbers."""
        if prop == KINDS[kind].modified:
            return record["updatedAt"]
        raw = record["properties"].get(prop)
        if raw is not None and NUMBER.match(str(raw)):
            return float(raw)
        return raw

    @staticmethod
    def _filter_value(kind: str, f: dict):
        """A filter's value as search compares it (dates as ISO, numbers as numbers)."""
        prop, value = f.get("propertyName", ""), f.get("value")
        if prop == KINDS[kind].modified or prop in ("createdate", "hs_lastmodifieddate", "lastmodifieddate"):
            return _as_iso(value)
        if value is not None and NUMBER.match(str(value)):
            return float(value)
        return value

    def _filter_ok(self, kind: str, record: dict, f: dict, value=_UNSET) -> bool:
        """``value``: the filter's ``_filter_value``, when the caller read it once for every record."""
        prop, op = f.get("propertyName", ""), f.get("operator", "EQ")
        have = self._value(kind, record, prop)
        if value is _UNSET:
            value = self._filter_value(kind, f)
        if op == "IN":  # strings compared without case, as HubSpot compares them; numbers as numbers
            raw = record["properties"].get(prop)
            values = f.get("values") or []
            if isinstance(have, float):
                return any(NUMBER.match(str(v)) and float(v) == have for v in values)
            return raw is not None and str(raw).lower() in {str(v).lower() for v in values}
        if op == "HAS_PROPERTY":
            return have not in (None, "")
        if op == "NOT_HAS_PROPERTY":
            return have in (None, "")
        if have is None or value is None:
            return op == "NEQ"
        if op in ("EQ", "NEQ") and isinstance(have, str) and isinstance(value, str):
            have, value = have.lower(), value.lower()
        try:
            return {"EQ": have == value, "NEQ": have != value, "GT": have > value, "GTE": have >= value,
                    "LT": have < value, "LTE": have <= value}[op]
        except KeyError:
            raise ValueError(f"operator {op!r} is not supported by the emulator") from None
        except TypeError:
            return False

    def _matches(self, kind: str, filter_groups: list, sorts: list) -> list[dict]:
        """The records a search's filter groups match, in its sort's order."""
        groups = [[(f, self._filter_value(kind, f)) for f in g.get("filters") or []] for g in filter_groups]
        rows = [r for r in self.store[kind].values()
                if not groups or any(all(self._filter_ok(kind, r, f, v) for f, v in g) for g in groups)]
        first = sorts[0] if sorts else None
        prop = (first.get("propertyName") if isinstance(first, dict) else first) or "hs_object_id"
        descending = prop.startswith("-") or (isinstance(first, dict) and first.get("direction") == "DESCENDING")
        prop = prop.lstrip("-")
        # One sort only; ties come in HubSpot's own order, not by id (a fixed scramble).
        rows.sort(key=lambda r: self._sort_key(kind, r, prop), reverse=descending)
        return rows

    def _sort_key(self, kind: str, record: dict, prop: str) -> tuple:
        value = self._value(kind, record, prop)
        scramble = self._scrambled.get(record["id"])
        if scramble is None:
            scramble = self._scrambled[record["id"]] = hashlib.md5(record["id"].encode()).hexdigest()
        return value is None, value or "", scramble

    def search(self, kind: str, body: dict) -> Response:
        spec = KINDS[kind]
        body = body or {}
        limit = int(body.get("limit") or 10)
        after = int(body.get("after") or 0)
        if limit > self.SEARCH_PAGE_MAX:
            return self.error(400, "VALIDATION_ERROR", f"limit must be at most {self.SEARCH_PAGE_MAX}")
        if after + limit > self.search_cap:
            # HubSpot: "The search endpoints are limited to 10,000 total results
            # for any given query. Attempting to page beyond 10,000 will result in a 400 error."
            return self.error(400, "VALIDATION_ERROR",
                              f"Search results are limited to {self.search_cap:,} total results for any given "
                              f"query: after {after} + limit {limit} passes it.")
        sorts = body.get("sorts") or []
        memo_key = (kind, self._version, json.dumps([body.get("filterGroups"), sorts], sort_keys=True))
        if self.search_memo and self._memo and self._memo[0] == memo_key:
            rows = self._memo[1]
        else:
            rows = self._matches(kind, body.get("filterGroups") or [], sorts)
            self._memo = (memo_key, rows) if self.search_memo else ()
        page = rows[after:after + limit]
        wanted = body.get("properties") or []
        results = [self._public(r, [*wanted, spec.modified, spec.id_property] if wanted else None) for r in page]
        out = {"total": len(rows), "results": results}
        if after + limit < len(rows):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return self.json(out)

    def batch_archive(self, kind: str, body: dict) -> Response:
        """POST /crm/v3/objects/{type}/batch/archive: ``{"inputs": [{"id"}]}``,
        at most 100; 204 with no body, ids HubSpot does not have included."""
        inputs, refused = self._inputs(body)
        if refused is not None:
            return refused
        for item in inputs:
            self.archive(kind, str((item or {}).get("id", "")))
        return Response(status=204)

    def list_page(self, kind: str, args) -> Response:
        """GET /crm/v3/objects/{type}: every record in id order, ``after``
        being the last id read; no 10,000 cap (HubSpot's way to read a whole portal).
        ``archived=true``: only the archived records (with ``archivedAt``)."""
        spec = KINDS[kind]
        limit = int(args.get("limit") or 10)
        if limit > self.LIST_PAGE_MAX:
            return self.error(400, "VALIDATION_ERROR", f"limit must be at most {self.LIST_PAGE_MAX}")
        after = int(args.get("after") or 0)
        wanted = [p for value in args.getlist("properties") for p in value.split(",") if p]
        archived = str(args.get("archived") or "false").lower() == "true"
        store = self.archived[kind] if archived else self.store[kind]
        ids = self._sorted_ids(kind, archived, store)
        start = bisect.bisect_right(ids, after)
        page = ids[start:start + limit]
        out = {"results": [self._public(store[str(i)],
                                        [*wanted, spec.modified, spec.id_property] if wanted else None)
                           for i in page]}
        if len(ids) - start > limit:
            out["paging"] = {"next": {"after": str(page[-1]), "link": f"?after={page[-1]}"}}
        return self.json(out)

    def _sorted_ids(self, kind: str, archived: bool, store: dict) -> list[int]:
        """The store's ids in id order, sorted once while nothing is written
        (the list reads a page by bisecting them): sorting a 100,000-record
        portal for each page of 100 was most of a full import's emulator CPU."""
        key = (kind, archived, self._version, len(store))
        hit = self._list_memo.get((kind, archived))
        if hit is None or hit[0] != key:
            hit = (key, sorted(int(i) for i in store))
            self._list_memo[(kind, archived)] = hit
        return hit[1]

    def owners_page(self, args) -> Response:
        limit = int(args.get("limit") or 100)
        if limit > self.OWNERS_PAGE_MAX:
            return self.error(400, "VALIDATION_ERROR", f"limit must be at most {self.OWNERS_PAGE_MAX}")
        archived = str(args.get("archived") or "false").lower() == "true"
        after = int(args.get("after") or 0)
        rows = sorted((o for o in self.owners if o["archived"] == archived and int(o["id"]) > after),
                      key=lambda o: int(o["id"]))
        if args.get("email"):
            rows = [o for o in rows if o["email"].lower() == args["email"].lower()]
        out = {"results": rows[:limit]}
        if len(rows) > limit:
            out["paging"] = {"next": {"after": rows[limit - 1]["id"], "link": ""}}
        return self.json(out)

    def associate_default(self, from_kind: str, to_kind: str, body: dict) -> Response:
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        started = now_iso()
        results, errors = [], []
        type_id = ASSOCIATION_TYPES.get((from_kind, to_kind))
        if type_id is None:
            return self.error(400, "VALIDATION_ERROR", f"no default association {from_kind} -> {to_kind}")
        for item in inputs:
            a, b = str(item["from"]["id"]), str(item["to"]["id"])
            if a not in self.store[from_kind] or b not in self.store[to_kind]:
                errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": f"No {from_kind} {a} or {to_kind} {b}", "context": {"ids": [a]},
                               "errors": [], "links": {}})
                continue
            self.associate(from_kind, a, to_kind, b)
            results.append({"from": {"id": a}, "to": {"id": b}, "associationSpec": {
                "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}})
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return self.json(out, status=207)
        return self.json(out)

    def associations_archive(self, from_kind: str, to_kind: str, body: dict) -> Response:
        """v4 batch archive: {"inputs": [{"from": {"id"}, "to": [{"id"}, ...]}]}.
        HubSpot answers 204 with no body, also for a pair not associated."""
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        for n, item in enumerate(inputs):
            if not isinstance(item, dict) or not isinstance(item.get("from"), dict) \
                    or not isinstance(item.get("to"), list):
                return self.error(400, "VALIDATION_ERROR", f"inputs[{n}]: from (an object id) and to (a list of "
                                                           "object ids) are required")
        for item in inputs:
            for target in item["to"]:
                self.dissociate(from_kind, item["from"]["id"], to_kind, target["id"])
        return Response(status=204)

    def associations_read(self, from_kind: str, to_kind: str, body: dict) -> Response:
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        type_id = ASSOCIATION_TYPES.get((from_kind, to_kind), 0)
        results = []
        for item in inputs:
            a = str(item["id"])
            linked = sorted(self.associated(from_kind, a, to_kind), key=int)
            if linked:
                results.append({"from": {"id": a}, "to": [
                    {"toObjectId": int(b), "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": None}]} for b in linked]})
        return self.json({"status": "COMPLETE", "results": results, "startedAt": now_iso(),
                          "completedAt": now_iso()})


def _is_write(request: Request) -> bool:
    """A call that changes the portal (a search or a batch read is a POST too, and is not one)."""
    path = request.path.rstrip("/")
    return request.method in ("POST", "PUT", "PATCH", "DELETE") and not path.endswith(("/search", "/batch/read"))


def _as_iso(value: str) -> str:
    """HubSpot accepts epoch milliseconds or ISO 8601 in date filters."""
    if str(value).isdigit():
        return now_iso(dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.timezone.utc))
    return str(value)


def dumps(data) -> str:  # small helper for the manage.py emulator command's banner
    return json.dumps(data)
