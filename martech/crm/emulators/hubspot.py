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
- GET  /crm/v3/objects/{type}?limit=&after=&properties=  (the list endpoint:
  id order, at most 100 a page, ``after`` paging with no cap)
- POST /crm/v3/objects/{type}/batch/read     (by record id, 100 max; ids not found answer
  207 with an OBJECT_NOT_FOUND error naming them, like HubSpot)
- GET  /crm/v3/objects/{type}/{id}
- GET  /crm/v3/owners/?limit=&after=&archived=  (at most 500 a page; archived
  owners, deactivated users, are listed only with ``archived=true``, and only they)
CRM v4 associations (shapes of the client library's v4 models; the
document is not in the shared specs):
- POST /crm/v4/associations/{from}/{to}/batch/associate/default
- POST /crm/v4/associations/{from}/{to}/batch/read
- POST /crm/v4/associations/{from}/{to}/batch/archive  (204, no body, like HubSpot;
  removes every association between each pair, both directions)

Per-record refusals answer HTTP 207 with an error naming the input, like
HubSpot: an email that is not an address (INVALID_EMAIL), a domain that is
not a host name, a deal amount that is not a number, a deal stage the
pipeline does not have, a task without hs_timestamp.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from .base import EmulatorBase

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


class HubSpotEmulator(EmulatorBase):
    BATCH_MAX = 100
    SEARCH_PAGE_MAX = 200
    LIST_PAGE_MAX = 100
    OWNERS_PAGE_MAX = 500

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.store: dict[str, dict[str, dict]] = {name: {} for name in KINDS}  # type -> id -> SimplePublicObject
        self.index: dict[str, dict[str, str]] = {name: {} for name in KINDS}   # type -> unique key -> id
        # (from type, from id, to type) -> set of to ids; kept both ways.
        self.associations: dict[tuple[str, str, str], set[str]] = {}
        self.owners: list[dict] = []
        self._ids = itertools.count(1001)
        self._clock_ms = 0  # makes updatedAt strictly increase even within one millisecond
        # HubSpot's search stops at 10,000 results; tests lower it to exercise the
        # windowing on fewer records (the connector's ``search_cap`` follows).
        self.search_cap = 10_000

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

    # --- HTTP ---
    def dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        parts = path.split("/")
        if path == "/crm/v3/owners" and request.method == "GET":
            return self.owners_page(request.args)
        if len(parts) >= 5 and parts[1:4] == ["crm", "v3", "objects"] and parts[4] in KINDS:
            kind, rest = parts[4], parts[5:]
            if request.method == "POST" and rest == ["batch", "upsert"]:
                return self.batch_upsert(kind, request.get_json())
            if request.method == "POST" and rest == ["batch", "read"]:
                return self.batch_read(kind, request.get_json())
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

    def error(self, status: int, category: str, message: str, **context) -> Response:
        return self.json({"status": "error", "message": message, "category": category, "correlationId": "emu",
                          "context": {k: [str(x) for x in v] for k, v in context.items()}, "errors": [],
                          "links": {}}, status=status)

    @staticmethod
    def _public(record: dict, wanted: list[str] | None = None) -> dict:
        out = {k: record[k] for k in ("id", "properties", "createdAt", "updatedAt", "archived")}
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
        return ""

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
            if item.get("idProperty") != spec.id_property:
                return self.error(400, "VALIDATION_ERROR", f"idProperty must be {spec.id_property}")
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

    def _filter_ok(self, kind: str, record: dict, f: dict) -> bool:
        prop, op = f.get("propertyName", ""), f.get("operator", "EQ")
        have = self._value(kind, record, prop)
        value = f.get("value")
        if prop == KINDS[kind].modified or prop in ("createdate", "hs_lastmodifieddate", "lastmodifieddate"):
            value = _as_iso(value)
        elif value is not None and NUMBER.match(str(value)):
            value = float(value)
        if op == "HAS_PROPERTY":
            return have not in (None, "")
        if op == "NOT_HAS_PROPERTY":
            return have in (None, "")
        if have is None or value is None:
            return op == "NEQ"
        try:
            return {"EQ": have == value, "NEQ": have != value, "GT": have > value, "GTE": have >= value,
                    "LT": have < value, "LTE": have <= value}[op]
        except KeyError:
            raise ValueError(f"operator {op!r} is not supported by the emulator") from None
        except TypeError:
            return False

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
        groups = body.get("filterGroups") or []
        rows = [r for r in self.store[kind].values()
                if not groups or any(all(self._filter_ok(kind, r, f) for f in g.get("filters") or [])
                                     for g in groups)]
        sorts = body.get("sorts") or []
        first = sorts[0] if sorts else None
        prop = (first.get("propertyName") if isinstance(first, dict) else first) or "hs_object_id"
        descending = prop.startswith("-") or (isinstance(first, dict) and first.get("direction") == "DESCENDING")
        prop = prop.lstrip("-")
        # One sort only; ties come in HubSpot's own order, not by id (a fixed scramble).
        rows.sort(key=lambda r: (self._value(kind, r, prop) is None, self._value(kind, r, prop) or "",
                                 hashlib.md5(r["id"].encode()).hexdigest()), reverse=descending)
        page = rows[after:after + limit]
        wanted = body.get("properties") or []
        results = [self._public(r, [*wanted, spec.modified, spec.id_property] if wanted else None) for r in page]
        out = {"total": len(rows), "results": results}
        if after + limit < len(rows):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return self.json(out)

    def list_page(self, kind: str, args) -> Response:
        """GET /crm/v3/objects/{type}: every record in id order, ``after``
        being the last id read; no 10,000 cap (HubSpot's way to read a whole portal)."""
        spec = KINDS[kind]
        limit = int(args.get("limit") or 10)
        if limit > self.LIST_PAGE_MAX:
            return self.error(400, "VALIDATION_ERROR", f"limit must be at most {self.LIST_PAGE_MAX}")
        after = int(args.get("after") or 0)
        wanted = [p for value in args.getlist("properties") for p in value.split(",") if p]
        ids = sorted(int(i) for i in self.store[kind] if int(i) > after)
        page = ids[:limit]
        out = {"results": [self._public(self.store[kind][str(i)],
                                        [*wanted, spec.modified, spec.id_property] if wanted else None)
                           for i in page]}
        if len(ids) > limit:
            out["paging"] = {"next": {"after": str(page[-1]), "link": f"?after={page[-1]}"}}
        return self.json(out)

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


def _as_iso(value: str) -> str:
    """HubSpot accepts epoch milliseconds or ISO 8601 in date filters."""
    if str(value).isdigit():
        return now_iso(dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.timezone.utc))
    return str(value)


def dumps(data) -> str:  # small helper for the manage.py emulator command's banner
    return json.dumps(data)
