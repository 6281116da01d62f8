"""HubSpot through hubspot-api-client: contacts <-> leads, companies <->
accounts, deals <-> opportunities, tasks <-> sales tasks, owners.

Every object goes through the same three CRM v3 calls of its client package
(batch upsert, search, get by id) and, for associations, the v4 batch calls:
archive for the links the last push made that are no longer here (a deal
moved to another company, a contact taken off a deal, a task given another
lead), then default-association create for the new ones; one call per
association type per batch of 100 records, none for a type that did not
change. Upsert keys: contacts by ``email``, companies by
``domain``, deals and tasks by a unique custom property holding our id
(``martech_deal_id``, ``martech_task_id``: create them once in the portal with
"unique value"), so a retried batch updates, never adds.

The base URL and the private-app token come from settings (environment);
``HubSpot(access_token=..., host=...)`` is the only way the host sticks
(STACK.md).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from hubspot import HubSpot
from hubspot.crm.associations.v4 import (
    BatchInputPublicAssociationMultiArchive,
    BatchInputPublicDefaultAssociationMultiPost,
    BatchInputPublicFetchAssociationsBatchRequest,
    PublicAssociationMultiArchive,
    PublicDefaultAssociationMultiPost,
    PublicFetchAssociationsBatchRequest,
    PublicObjectId,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from .base import AuthError, CallStats, PermanentError, Pulled, PushRecord, PushResult, TransientError, with_retries


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
OWNERS_PAGE = 500  # the owners API's most per page


def _translate(exc: Exception) -> Exception:
    status = getattr(exc, "status", None)
    # Each hubspot.crm.* package has its own ApiException (and subclasses such
    # as ServiceException), so they are recognised by name along the MRO.
    if status is not None and any(c.__name__ == "ApiException" for c in type(exc).__mro__):
        if status == 401:
            return AuthError(f"HubSpot refused the token (401): {exc.body}")
        if status == 429:
            headers = getattr(exc, "headers", None) or {}
            raw = headers.get("Retry-After")
            try:
                retry_after = float(raw) if raw is not None else None
            except ValueError:
                retry_after = None
            return TransientError(f"HubSpot 429: {exc.body}", retry_after=retry_after)
        if status >= 500:
            return TransientError(f"HubSpot {status}: {exc.body}")
        return PermanentError(f"HubSpot {status}: {exc.body}")
    if isinstance(exc, (Urllib3Error, TimeoutError, ConnectionError)):
        return TransientError(f"HubSpot unreachable: {exc}")
    return exc


class HubSpotConnector:
    provider = "hubspot"
    # HubSpot's search answers at most 10,000 results of one query (paging
    # further is a 400); pull_since windows under it. Tests lower it with the emulator's.
    search_cap = 10_000
    # The object types this connector syncs (martech.crm.objects): our key -> HubSpot's object type.
    objects = {key: spec.name for key, spec in OBJECTS.items()}

    def __init__(self, connection, *, sleep=None):
        conf = settings.MARTECH_CRM
        self.connection = connection
        self.client = HubSpot(access_token=conf["HUBSPOT_TOKEN"], host=conf["HUBSPOT_URL"])
        self.timeout = conf["TIMEOUT"]
        self.stats = CallStats()
        # Looked up at call time so tests can stub time.sleep.
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))

    def _call(self, fn, *args, **kwargs):
        def once():
            try:
                return fn(*args, _request_timeout=self.timeout, **kwargs)
            except Exception as exc:
                translated = _translate(exc)
                if translated is exc:
                    raise
                raise translated from exc

        return with_retries(once, self.stats, sleep=self.sleep)

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

    def _upsert_body(self, spec: HubSpotObject, records: list[PushRecord]):
        m = self._models(spec)
        return m.BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
            m.SimplePublicObjectBatchInputUpsert(
                id=r.key, id_property=spec.id_property,
                # The key travels as a property too: HubSpot stores it and answers with it.
                properties={**r.properties, spec.id_property: r.key})
            for r in records
        ])

    def request_body(self, obj: str, records: list[PushRecord]) -> dict:
        """The JSON the push sends for ``records`` (the admin's payload preview)."""
        spec = self._spec(obj)
        body = self._api(spec).batch_api.api_client.sanitize_for_serialization(self._upsert_body(spec, records))
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
        results: list[PushResult] = []
        for start in range(0, len(records), PAGE):
            chunk = records[start:start + PAGE]
            response = self._call(self._api(spec).batch_api.upsert,
                                  batch_input_simple_public_object_batch_input_upsert=self._upsert_body(spec, chunk))
            by_key = {r.key.lower(): r for r in chunk}
            done: dict[str, str] = {}
            for item in response.results or []:
                done[str((item.properties or {}).get(spec.id_property) or "").lower()] = item.id
            failed: dict[str, str] = {}
            for err in getattr(response, "errors", None) or []:
                for key in (err.context or {}).get("ids", []):
                    failed[key.lower()] = err.message
            chunk_results = []
            for key, record in by_key.items():
                if key in done:
                    chunk_results.append(PushResult(record.local_id, remote_id=done[key]))
                else:
                    # Nothing silently dropped: a record neither done nor named gets an error too.
                    chunk_results.append(PushResult(record.local_id,
                                                    error=failed.get(key, "not in HubSpot's answer")))
            refused = self._associate(obj, chunk, {r.local_id: r.remote_id for r in chunk_results if r.remote_id})
            for result in chunk_results:
                if result.local_id in refused:
                    result.error = refused[result.local_id]
            results += chunk_results
        return results

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
                properties: list[str], after: int):
        m = self._models(spec)
        request = m.PublicObjectSearchRequest(
            filter_groups=[m.FilterGroup(filters=[m.Filter(property_name=p, operator=op, value=v) for p, op, v in g])
                           for g in filter_groups],
            sorts=[sort], properties=properties, limit=PAGE, after=str(after))
        return self._call(self._api(spec).search_api.do_search, public_object_search_request=request)

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
                if after + PAGE > self.search_cap:
                    break  # the next page would pass the cap: a new window
                page = self._search(spec, filters, spec.modified, fields, after)
                pulled = [p for p in (self._pulled(spec, item) for item in page.results)
                          if not (p.modified_at == lower and p.remote_id in done)]
                for p in pulled:
                    if p.modified_at != last_time:
                        last_time, at_last = p.modified_at, set()
                    at_last.add(p.remote_id)
                pulled = [p for p in pulled if skip is None or not skip(p)]
                self._read_associations(obj, pulled)
                yield from pulled
                nxt = page.paging.next.after if page.paging and page.paging.next else None
                if not nxt:
                    return
                after = int(nxt)
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
            while after + PAGE <= self.search_cap:
                page = self._search(spec, filters, "hs_object_id", fields, after)
                pulled = [self._pulled(spec, item) for item in page.results]
                for p in pulled:
                    last_id, moved = max(last_id, int(p.remote_id)), True
                pulled = [p for p in pulled if p.remote_id not in done and (skip is None or not skip(p))]
                self._read_associations(obj, pulled)
                yield from pulled
                nxt = page.paging.next.after if page.paging and page.paging.next else None
                if not nxt:
                    return
                after = int(nxt)
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
            page = self._call(self._api(spec).basic_api.get_page, **kwargs)
            pulled = [self._pulled(spec, item) for item in page.results or []]
            self._read_associations(obj, pulled)
            after = page.paging.next.after if page.paging and page.paging.next else ""
            yield pulled, after
            if not after:
                return

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
            response = self._call(self._api(spec).batch_api.read, batch_read_input_simple_public_object_id=body)
            pulled = [self._pulled(spec, item) for item in response.results or []]
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
