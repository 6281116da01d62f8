"""HubSpot CRM v3 emulator: the endpoints the connector uses, with the
request and response shapes of HubSpot's published OpenAPI documents
(tests/fixtures/hubspot/ validates both sides).

- POST /crm/v3/objects/contacts/batch/upsert  (idProperty=email; 100 max)
- POST /crm/v3/objects/contacts/search        (filter on lastmodifieddate)
- GET  /crm/v3/objects/contacts/{id}
- GET  /crm/v3/owners/
An email that is not an address is refused per record (HTTP 207 with an
error naming the input), like HubSpot's INVALID_EMAIL.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import re

from werkzeug.wrappers import Request, Response

from .base import EmulatorBase

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def now_iso(at: dt.datetime | None = None) -> str:
    at = at or dt.datetime.now(dt.timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubSpotEmulator(EmulatorBase):
    BATCH_MAX = 100

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.contacts: dict[str, dict] = {}  # id -> SimplePublicObject
        self.by_email: dict[str, str] = {}
        self.owners: list[dict] = []
        self._ids = itertools.count(1001)
        self._clock_ms = 0  # makes updatedAt strictly increase even within one millisecond

    def _stamp(self) -> str:
        now = dt.datetime.now(dt.timezone.utc)
        ms = max(int(now.timestamp() * 1000), self._clock_ms + 1)
        self._clock_ms = ms
        return now_iso(dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc))

    # --- state helpers (tests use them to play "a salesperson edited it") ---
    def put_contact(self, properties: dict[str, str], *, at: dt.datetime | None = None) -> dict:
        email = (properties.get("email") or "").lower()
        object_id = self.by_email.get(email) if email else None
        stamp = now_iso(at) if at else self._stamp()
        if object_id is None:
            object_id = str(next(self._ids))
            self.contacts[object_id] = {"id": object_id, "properties": {}, "createdAt": stamp, "archived": False}
            if email:
                self.by_email[email] = object_id
        record = self.contacts[object_id]
        record["properties"].update({k: ("" if v is None else str(v)) for k, v in properties.items()})
        record["properties"]["hs_object_id"] = object_id
        record["properties"]["lastmodifieddate"] = stamp
        record["updatedAt"] = stamp
        return record

    def add_owner(self, *, owner_id: str, email: str, first_name: str = "", last_name: str = "") -> None:
        self.owners.append({"id": owner_id, "email": email, "firstName": first_name, "lastName": last_name,
                            "userId": int(owner_id), "userIdIncludingInactive": int(owner_id),
                            "createdAt": now_iso(), "updatedAt": now_iso(), "archived": False, "type": "PERSON"})

    # --- HTTP ---
    def dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if request.method == "POST" and path == "/crm/v3/objects/contacts/batch/upsert":
            return self.batch_upsert(request.get_json())
        if request.method == "POST" and path == "/crm/v3/objects/contacts/search":
            return self.search(request.get_json())
        if request.method == "GET" and path.startswith("/crm/v3/objects/contacts/"):
            record = self.contacts.get(path.rsplit("/", 1)[1])
            return self.json(self._public(record)) if record else self.error(404, "OBJECT_NOT_FOUND", "Not found")
        if request.method == "GET" and path == "/crm/v3/owners":
            return self.json({"results": self.owners})
        return self.error(404, "NOT_FOUND", f"No route {request.method} {path}")

    def error(self, status: int, category: str, message: str, **context) -> Response:
        return self.json({"status": "error", "message": message, "category": category, "correlationId": "emu",
                          "context": {k: [str(x) for x in v] for k, v in context.items()}, "errors": [],
                          "links": {}}, status=status)

    @staticmethod
    def _public(record: dict) -> dict:
        return {k: record[k] for k in ("id", "properties", "createdAt", "updatedAt", "archived")}

    def batch_upsert(self, body: dict) -> Response:
        inputs = (body or {}).get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "VALIDATION_ERROR", "inputs is required")
        if len(inputs) > self.BATCH_MAX:
            return self.error(400, "VALIDATION_ERROR", f"at most {self.BATCH_MAX} inputs")
        started = now_iso()
        results, errors = [], []
        for item in inputs:
            if item.get("idProperty") != "email":
                return self.error(400, "VALIDATION_ERROR", "idProperty must be email")
            email = str(item.get("id", "")).lower()
            if not EMAIL.match(email):
                errors.append({"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"Property values were not valid: INVALID_EMAIL {email!r}",
                               "context": {"ids": [email]}, "errors": [], "links": {}})
                continue
            new = email not in self.by_email
            record = self.put_contact({**item.get("properties", {}), "email": email})
            results.append({**self._public(record), "new": new})
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": now_iso()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return self.json(out, status=207)
        return self.json(out)

    def search(self, body: dict) -> Response:
        body = body or {}
        since = None
        for group in body.get("filterGroups", []):
            for f in group.get("filters", []):
                if f.get("propertyName") == "lastmodifieddate" and f.get("operator") in ("GT", "GTE"):
                    since = (f["operator"], f.get("value", ""))
        limit = min(int(body.get("limit") or 10), 200)
        after = int(body.get("after") or 0)
        rows = sorted(self.contacts.values(), key=lambda r: (r["updatedAt"], int(r["id"])))
        if since:
            op, value = since
            value = _as_iso(value)
            rows = [r for r in rows if (r["updatedAt"] > value if op == "GT" else r["updatedAt"] >= value)]
        page = rows[after:after + limit]
        wanted = body.get("properties") or []
        results = []
        for r in page:
            pub = self._public(r)
            if wanted:
                pub["properties"] = {k: v for k, v in r["properties"].items()
                                     if k in wanted or k in ("hs_object_id", "lastmodifieddate", "email")}
            results.append(pub)
        out = {"total": len(rows), "results": results}
        if after + limit < len(rows):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return self.json(out)


def _as_iso(value: str) -> str:
    """HubSpot accepts epoch milliseconds or ISO 8601 in date filters."""
    if str(value).isdigit():
        return now_iso(dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.timezone.utc))
    return str(value)


def dumps(data) -> str:  # small helper for the manage.py emulator command's banner
    return json.dumps(data)
