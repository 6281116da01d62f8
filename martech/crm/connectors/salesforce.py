"""Salesforce through simple-salesforce: Lead and Contact <-> leads,
Account <-> accounts, Opportunity <-> opportunities, Campaign <-> campaigns
with CampaignMember, Task <-> sales tasks (the object registry's contact,
company, deal, campaign and task), User -> CRM owners.

Sales tasks go as Task with the lead's Lead or Contact id as ``WhoId``,
upserted by ``Martech_Id__c`` like every other object; a Task pulled with
``IsClosed`` true is read as Status "Completed" (orgs name their closed
statuses their own way), which completes the local task.

What a campaign member is
-------------------------
Here, a campaign's members are the leads with a touch (an ``Event``)
attributed to the campaign (``types._campaign_members``). Pushing a campaign
upserts its Campaign, then reads the pushed campaigns' CampaignMembers (one
SOQL per 200 campaigns) and matches them by (CampaignId, LeadId/ContactId):
only members Salesforce lacks are written, upserted by ``Martech_Id__c`` =
"<campaign id>:<Salesforce lead id>" with Status "Responded" (a touch is a
response; "Sent" for a member pulled unresponded), and a member Salesforce
holds unresponded while it responded here is moved to "Responded" (never
back). So a member added in Salesforce, or created by a try whose answer was
lost, is never sent twice (Salesforce refuses a second member of the same
person: DUPLICATE_VALUE "Already a campaign member."). Members whose lead is
not in Salesforce yet make the campaign wait and queue those leads first (the
engine's association rule).

CampaignMembers are pulled (link ``campaign_member``, by SystemModstamp): a
member added in Salesforce becomes a ``campaign_member_added`` touch on the
local campaign (``campaign_member_record``, one event per CampaignMember Id),
carrying its Status and HasResponded.

Opportunity contact roles
-------------------------
A deal's contact roles (link ``contact_role``) go as OpportunityContactRole
after the Opportunity upsert: the pushed deals' roles are read (one SOQL per
200 deals), missing ones created, Role/IsPrimary updated where they differ,
and roles removed here (ones both sides had at the last sync,
``PushRecord.link_synced``) deleted, each in Collections calls of 200. A role
needs a Salesforce Contact: a person who is only a Lead there fails the
deal's push with that reason (the other roles are synced). Roles added or
changed in Salesforce are pulled onto the local deal's contacts.

How a lead maps to Salesforce
-----------------------------
- A lead with a Salesforce Contact id (``salesforce_contact_id``: pulled as a
  Contact, or a Lead Salesforce converted) is pushed to **Contact**; every
  other lead goes to ``MARTECH_CRM_SALESFORCE_NEW_LEADS_AS`` (``Lead`` by
  default). Pulls read Contacts and unconverted Leads; a converted Lead is
  not pulled again (its Contact carries the person on).
- The field mappings of object ``contact`` name Lead fields. For a Contact the
  address fields are renamed (``Country`` -> ``MailingCountry`` ...) and the
  Lead-only ones (``Company``, ``Status`` ...) are not sent.

Accounts and Opportunities follow the same rules; an Opportunity's account
(the registry's association to the company) is sent as ``AccountId``.

Idempotency: a record Salesforce has not confirmed yet (we hold no id for
it) is upserted by the external id field ``Martech_Id__c`` carrying our id,
not created: a batch whose answer was lost (timeout, 5xx after the write)
never gave us the Salesforce ids, so a retried create would make the records
a second time, while a retried upsert by our own id finds them. A record we
hold an id for (pushed before, pulled, or a Lead converted to a Contact in
Salesforce) is updated by that Id, which also stamps ``Martech_Id__c`` on a
record created in Salesforce. (In Salesforce, ``Martech_Id__c`` is a custom
text field marked External ID and Unique on Lead, Contact, Account and
Opportunity.)

Converted Leads: Salesforce refuses any update of a Lead it converted
(``CANNOT_UPDATE_CONVERTED_LEAD``). The person lives on as the Lead's
``ConvertedContactId``: the connector reads it (one SOQL per batch) and
sends the record to that Contact by Id instead, so the lead's Contact id is
stored and later pushes go to the Contact; the record is not dead-lettered.

Schema: ``describe`` reads an sObject's fields (one call each) for
martech.crm.schema; ``schema_requirements`` names the ``Martech_Id__c``
external ids the check asks an admin to create.

Session: the access token comes from the environment; on 401
``INVALID_SESSION_ID`` it is renewed once with the refresh token at
``/services/oauth2/token`` (simple-salesforce cannot renew a session it was
given, so the connector posts that one form through the client's own
``requests`` session); if Salesforce refuses again the connector raises
``AuthError`` and the drain stops the connection with that message.

TLS: the session trusts ``MARTECH_CRM_SALESFORCE_CA_CERT`` (the emulator's
generated certificate by default) and ignores the environment
(``trust_env = False``), because ``REQUESTS_CA_BUNDLE`` would otherwise win
over ``verify``. Verification is never switched off.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import heapq
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import requests
import requests.adapters
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceOperationError,
    SalesforceResourceNotFound,
)

from .base import (
    AuthError,
    CallStats,
    DeletedPage,
    ListChange,
    PartialPush,
    PermanentError,
    Pulled,
    PulledLink,
    PushRecord,
    PushResult,
    RateLimited,
    TransientError,
    with_retries,
)

EXTERNAL_ID = "Martech_Id__c"
COLLECTION = 200  # sObject Collections: at most 200 records per call
COMPOSITE_MAX = 25  # subrequests in one Composite call
DELETED_LOG_DAYS = 15  # Get Deleted answers for no more than 15 days back
# Lead field -> Contact field; Lead-only fields are not sent to a Contact.
CONTACT_RENAMES = {"Country": "MailingCountry", "State": "MailingState", "PostalCode": "MailingPostalCode",
                   "City": "MailingCity", "Street": "MailingStreet"}
LEAD_ONLY = {"Company", "Status", "Rating", "Industry", "NumberOfEmployees", "AnnualRevenue", "Website"}
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# One HTTP connection pool per thread, shared by the thread's connectors: a
# connector (one per drain or pull) with a pool of its own opened a new TCP
# connection and TLS handshake to the instance for every drain. Each
# connector keeps its own session (its response hook, its renewed token);
# only the kept-alive connections are shared.
_adapters = threading.local()


def _thread_adapter() -> requests.adapters.HTTPAdapter:
    adapter = getattr(_adapters, "adapter", None)
    if adapter is None:
        adapter = _adapters.adapter = requests.adapters.HTTPAdapter()
    return adapter


# Renewed sessions outlive one connector (one drain), per connection.
_renewed_sessions: dict[int, str] = {}


class _SessionExpired(Exception):
    pass


def _rest_time(value: str) -> str:
    """A Bulk API CSV date-time (2026-11-30T03:00:00.000Z) in the REST query's form (...000+0000)."""
    return value[:-1] + "+0000" if value.endswith("Z") else value


def soql_datetime(cursor: str) -> str:
    """A stored SystemModstamp (2026-11-30T03:00:00.000+0000) as a SOQL literal."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})", cursor):
        raise PermanentError(f"Salesforce cursor is not a date-time: {cursor!r}")
    if cursor.endswith("Z"):
        return cursor
    return cursor[:-5] + (cursor[-5:-2] + ":" + cursor[-2:] if cursor[-3] != ":" else cursor[-5:])


# Our object keys -> sObjects ("contact" is Lead or Contact, see above).
SOBJECTS = {"contact": "Lead", "company": "Account", "deal": "Opportunity", "campaign": "Campaign", "task": "Task"}
TASK_CLOSED_STATUS = "Completed"
MEMBER_STATUS = "Responded"  # a member here is a lead with a touch on the campaign: it responded
MEMBER_SENT = "Sent"  # a member pulled from Salesforce that has not responded
# Link keys (martech.crm.objects.Link) -> the sObject each is.
LINKS = {"campaign_member": "CampaignMember", "contact_role": "OpportunityContactRole"}
SF_ID = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
# Associations the engine resolves to Salesforce ids -> the lookup field set on the record.
# A Task's lead is its WhoId (a Lead or Contact id).
LOOKUPS = {("deal", "company"): "AccountId", ("task", "contact"): "WhoId"}


def sobject_of(remote_id: str) -> str:
    """Salesforce ids start with their object's key prefix."""
    return {"00Q": "Lead", "003": "Contact", "005": "User", "001": "Account",
            "006": "Opportunity", "701": "Campaign", "00v": "CampaignMember", "00T": "Task",
            "00K": "OpportunityContactRole"}.get(remote_id[:3], "")


def local_id_field(remote_id: str) -> str:
    """The Lead model field holding this Salesforce id."""
    return "salesforce_contact_id" if remote_id.startswith("003") else "salesforce_lead_id"


LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
# A REQUEST_LIMIT_EXCEEDED that is not the org's daily total (a concurrency
# limit such as ConcurrentPerOrgLongTxn) passes quickly: pause this long.
SHORT_LIMIT_PAUSE = 60.0


def _limit_refusal(status: int, content: Any, retry_after: float | None) -> RateLimited | None:
    """Salesforce's limit answers: 403 ``REQUEST_LIMIT_EXCEEDED`` ("TotalRequests
    Limit exceeded.": the org's rolling 24 h allowance is spent; another
    message: a concurrency limit) and a 429 (Retry-After honoured)."""
    errors = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    codes = {str(e.get("errorCode") or "") for e in errors if isinstance(e, dict)}
    message = "; ".join(str(e.get("message") or "") for e in errors if isinstance(e, dict)) or str(content)
    if status == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
        daily = "TotalRequests" in message
        return RateLimited(f"Salesforce 403 REQUEST_LIMIT_EXCEEDED: {message}", wait=None if daily else SHORT_LIMIT_PAUSE,
                           policy="REQUEST_LIMIT_EXCEEDED", daily=daily)
    if status == 429:
        return RateLimited(f"Salesforce 429: {message}", retry_after=retry_after,
                           wait=retry_after if retry_after is not None else SHORT_LIMIT_PAUSE,
                           policy=next(iter(sorted(codes)), "") or "429")
    return None


def _error_text(errors: list[dict]) -> str:
    return "; ".join(f"{e.get('statusCode')}: {e.get('message')}"
                     + (f" ({', '.join(e['fields'])})" if e.get("fields") else "") for e in errors) or "refused"


class SalesforceConnector:
    provider = "salesforce"
    # Our object keys (martech.crm.objects) -> Salesforce's names.
    # "list": segment mirrors (martech.crm.lists) as a Campaign's CampaignMembers.
    # "erasure": an erasure's delete of the Lead/Contact (martech.privacy.crm).
    # "deal_deletion": a deal deleted here, deleted in Salesforce (attribution.crm_sync).
    objects = {**SOBJECTS, "list": "Campaign", "erasure": "Lead", "deal_deletion": "Opportunity"}
    links = dict(LINKS)
    list_batch = COLLECTION
    # No natural key needed: records are upserted by Martech_Id__c (our id).
    upserts_by_local_id = True
    # Sforce-Limit-Info is the org's own allowance: it replaces our count (services._count_calls).
    allowance_from_crm = True

    def __init__(self, connection, *, sleep: Callable[[float], None] | None = None):
        conf = settings.MARTECH_CRM
        self.connection = connection
        self.conf = conf
        self.timeout = conf["TIMEOUT"]
        self.bulk_above = conf["SALESFORCE_BULK_ABOVE"]
        self.new_leads_as = conf["SALESFORCE_NEW_LEADS_AS"]
        if self.new_leads_as not in ("Lead", "Contact"):
            raise ImproperlyConfigured("MARTECH_CRM_SALESFORCE_NEW_LEADS_AS must be Lead or Contact, "
                                       f"not {self.new_leads_as!r}")
        self.stats = CallStats()
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))
        self.bulk_wait = 0.2  # first poll of a Bulk 2.0 job; the client backs off after
        self.bulk_threshold = conf["SF_BULK_THRESHOLD"]  # a pull's backlog above this goes through Bulk 2.0 query
        self.bulk_page = 50_000  # records per Bulk 2.0 query result set (maxRecords)
        self.http_requests = 0
        self._last_headers: dict[str, str] = {}
        self.usage: tuple[int, int] | None = None  # (used, max) from the last Sforce-Limit-Info
        self._renewed = False
        self._prefetched: dict[str, dict] = {}  # SOQL -> its first page, read ahead (prefetch)
        self.session = requests.Session()
        self.session.verify = conf["SALESFORCE_CA_CERT"] or True
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        self.session.hooks["response"].append(self._seen)
        # The thread's connection pool (kept-alive TLS connections) instead of a new one per connector (per drain).
        adapter = _thread_adapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.instance_url = conf["SALESFORCE_URL"].rstrip("/")
        token = _renewed_sessions.get(connection.pk) or conf["SALESFORCE_ACCESS_TOKEN"]
        self._connect(token)

    def _connect(self, session_id: str) -> None:
        self.sf = Salesforce(instance_url=self.instance_url, session_id=session_id, session=self.session,
                             version=self.conf["SALESFORCE_API_VERSION"])

    def _seen(self, response, *args, **kwargs):
        self.http_requests += 1
        self._last_headers = dict(response.headers)
        # Every REST answer says the org's use of its rolling 24 h allowance
        # (simple-salesforce keeps the same figure in Salesforce.api_usage).
        match = LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info") or "")
        if match:
            self.usage = (int(match.group(1)), int(match.group(2)))
        return response

    def allowance_seen(self) -> tuple[int, int] | None:
        """Salesforce's own count, (used, max), from the last Sforce-Limit-Info."""
        return self.usage

    # --- calls, retries, renewal ---
    def _once(self, op: Callable[[], Any]) -> Callable[[], Any]:
        def run():
            try:
                return op()
            except SalesforceExpiredSession as exc:
                raise _SessionExpired(str(exc)) from exc
            except SalesforceError as exc:
                status = getattr(exc, "status", 0) or 0
                text = f"Salesforce {status}: {exc.content}"
                raw = self._last_headers.get("Retry-After")
                try:
                    retry_after = float(raw) if raw is not None else None
                except ValueError:
                    retry_after = None
                limited = _limit_refusal(status, exc.content, retry_after)
                if limited is not None:
                    raise limited from exc
                if status >= 500:
                    raise TransientError(text) from exc
                if isinstance(exc, SalesforceResourceNotFound):
                    raise
                raise PermanentError(text) from exc
            except SalesforceOperationError as exc:
                raise PermanentError(f"Salesforce Bulk API: {exc}") from exc
            except requests.exceptions.SSLError as exc:
                # Not worth retrying: the certificate will not change by itself.
                raise PermanentError(f"Salesforce TLS verification failed ({exc}); check "
                                     "MARTECH_CRM_SALESFORCE_CA_CERT") from exc
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise TransientError(f"Salesforce unreachable: {exc}") from exc

        return run

    def _call(self, op: Callable[[], Any]) -> Any:
        """One logical operation through the shared retry policy. Every HTTP
        request is counted (a Bulk job is several); an expired session is
        renewed once per connector, then AuthError."""
        before_http, before_counted = self.http_requests, self.stats.api_calls
        try:
            try:
                return with_retries(self._once(op), self.stats, sleep=self.sleep)
            except _SessionExpired as first:
                if self._renewed:
                    raise AuthError(f"Salesforce refused the renewed session: {first}") from None
                self._renew()
                try:
                    return with_retries(self._once(op), self.stats, sleep=self.sleep)
                except _SessionExpired as second:
                    raise AuthError("Salesforce session expired; renewed it once and Salesforce refused the "
                                    f"new session too: {second}") from None
        finally:
            counted = self.stats.api_calls - before_counted
            self.stats.api_calls += (self.http_requests - before_http) - counted

    def _renew(self) -> None:
        self._renewed = True
        token_url = f"{self.instance_url}/services/oauth2/token"
        data = {"grant_type": "refresh_token", "refresh_token": self.conf["SALESFORCE_REFRESH_TOKEN"],
                "client_id": self.conf["SALESFORCE_CLIENT_ID"], "client_secret": self.conf["SALESFORCE_CLIENT_SECRET"]}
        try:
            response = self.session.post(token_url, data=data, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AuthError(f"Salesforce session expired and the token endpoint is unreachable: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token"):
            # The refresh token itself is never in the message.
            raise AuthError("Salesforce session expired and renewing it failed: "
                            f"{response.status_code} {body.get('error', '')} {body.get('error_description', '')}"
                            .strip())
        _renewed_sessions[self.connection.pk] = body["access_token"]
        if body.get("instance_url"):
            self.instance_url = body["instance_url"].rstrip("/")
        self._connect(body["access_token"])

    # --- push ---
    def target(self, obj: str, record: PushRecord) -> str:
        """The sObject a record goes to. A lead: the one its Salesforce id
        names (a Contact id after a pull or a conversion), else NEW_LEADS_AS."""
        if obj != "contact":
            return SOBJECTS[obj]
        return sobject_of(record.remote_id) if record.remote_id[:3] in ("00Q", "003") else self.new_leads_as

    def _spec(self, obj: str) -> str:
        if obj not in SOBJECTS:
            raise NotImplementedError(f"Salesforce does not sync {obj!r} here (it syncs {', '.join(SOBJECTS)})")
        return SOBJECTS[obj]

    @staticmethod
    def shape(target: str, properties: dict[str, str]) -> dict[str, str]:
        if target != "Contact":
            return dict(properties)
        return {CONTACT_RENAMES.get(k, k): v for k, v in properties.items() if k not in LEAD_ONLY}

    def _row(self, obj: str, r: PushRecord, target: str) -> dict[str, str]:
        row = {**self.shape(target, r.properties), EXTERNAL_ID: str(r.local_id)}
        for other, ids in r.associations.items():
            lookup = LOOKUPS.get((obj, other))
            if lookup and ids:
                row[lookup] = ids[0]  # a lookup holds one record (an Opportunity has one Account)
        if r.remote_id:
            row["Id"] = r.remote_id
        return row

    def _groups(self, obj: str, records: list[PushRecord]) -> dict[tuple[str, bool], list[PushRecord]]:
        groups: dict[tuple[str, bool], list[PushRecord]] = {}
        for record in records:
            groups.setdefault((self.target(obj, record), bool(record.remote_id)), []).append(record)
        return groups

    def request_body(self, obj: str, records: list[PushRecord]) -> dict:
        """The Collections request(s) that would carry ``records`` (admin preview)."""
        self._spec(obj)
        version = self.conf["SALESFORCE_API_VERSION"]
        requests_ = []
        for (target, known), group in self._groups(obj, records).items():
            path = "composite/sobjects" if known else f"composite/sobjects/{target}/{EXTERNAL_ID}"
            requests_.append({"method": "PATCH", "path": f"/services/data/v{version}/{path}",
                              "body": {"allOrNone": False, "records": [
                                  {"attributes": {"type": target}, **self._row(obj, r, target)} for r in group]}})
            if obj == "campaign":
                members = [self._member_row(r.remote_id or "(Campaign id from the upsert)", r.local_id, person,
                                            self._responded(r, person))
                           for r in group for person in r.associations.get("contact", [])]
                if members:
                    requests_.append({"method": "PATCH", "path": f"/services/data/v{version}/composite/sobjects/"
                                                                 f"CampaignMember/{EXTERNAL_ID}",
                                      "body": {"allOrNone": False, "records": members}})
        return requests_[0] if len(requests_) == 1 else {"requests": requests_}

    def push_batch(self, obj: str, records: list[PushRecord]) -> list[PushResult]:
        """Records Salesforce already confirmed (we hold their id) are updated
        by Id, which also stamps Martech_Id__c on a record created there (a
        Lead converted to a Contact); the others are upserted by
        Martech_Id__c, so a retry after a lost answer finds what the first
        try created."""
        self._spec(obj)
        results: list[PushResult] = []
        try:
            for (target, known), group in self._groups(obj, records).items():
                if len(group) > self.bulk_above:
                    results += self._push_bulk(obj, target, known, group)
                else:
                    for start in range(0, len(group), COLLECTION):
                        results += self._push_collection(obj, target, known, group[start:start + COLLECTION])
        except (TransientError, PermanentError) as exc:
            # The calls before were written: their results are kept. Not for
            # campaigns and deals, whose members and roles follow the upserts:
            # those are all sent again (idempotent).
            if not results or obj in ("campaign", "deal"):
                raise
            raise PartialPush(results, exc) from exc
        if obj == "campaign":
            results = self._push_members(records, results)
        if obj == "deal":
            results = self._push_roles(records, results)
        return results

    @staticmethod
    def _responded(record: PushRecord, person: str) -> bool:
        return bool(record.link_details.get("campaign_member", {}).get(person, {}).get("responded", True))

    @staticmethod
    def _member_row(campaign_id: str, local_id: int, person: str, responded: bool) -> dict:
        # Martech_Id__c "<our campaign id>:<Salesforce Lead/Contact id>": a retry finds the member again.
        return {"attributes": {"type": "CampaignMember"}, EXTERNAL_ID: f"{local_id}:{person}",
                "CampaignId": campaign_id, ("ContactId" if person.startswith("003") else "LeadId"): person,
                "Status": MEMBER_STATUS if responded else MEMBER_SENT}

    def _where_in(self, sobject: str, fields: list[str], field: str, ids: list[str]) -> Iterator[dict]:
        """Rows whose ``field`` is one of ``ids``: one SOQL per 200 ids."""
        for start in range(0, len(ids), COLLECTION):
            chunk = ids[start:start + COLLECTION]
            bad = [i for i in chunk if not SF_ID.match(i)]
            if bad:
                raise PermanentError(f"not a Salesforce id: {bad[0]!r}")
            yield from self._query(f"SELECT {', '.join(fields)} FROM {sobject} WHERE {field} IN "
                                   f"({', '.join(repr(i) for i in chunk)})")

    def _write(self, path: str, method: str, rows: list[tuple[int, dict]], errors: dict[int, list[str]]) -> None:
        """Collections writes of ``rows`` ((parent local id, record)), 200 per
        call; a refused record adds its reason to its parent's errors."""
        for start in range(0, len(rows), COLLECTION):
            chunk = rows[start:start + COLLECTION]
            body = {"allOrNone": False, "records": [row for _, row in chunk]}
            answer = self._call(lambda: self.sf.restful(path, method=method, json=body, timeout=self.timeout))
            for (parent, row), a in zip(chunk, answer or []):
                if not a.get("success"):
                    sobject = row["attributes"]["type"]
                    who = row.get("LeadId") or row.get("ContactId") or row.get("Id")
                    errors.setdefault(parent, []).append(f"{sobject} {who}: {_error_text(a.get('errors') or [])}")

    def _delete(self, rows: list[tuple[int, str]], errors: dict[int, list[str]]) -> None:
        """Collections delete, 200 ids per call. An id already deleted (a
        retry after a lost answer) is what we wanted."""
        for start in range(0, len(rows), COLLECTION):
            chunk = rows[start:start + COLLECTION]
            params = {"ids": ",".join(i for _, i in chunk), "allOrNone": "false"}
            answer = self._call(lambda: self.sf.restful("composite/sobjects", method="DELETE", params=params,
                                                        timeout=self.timeout))
            for (parent, record_id), a in zip(chunk, answer or []):
                codes = {e.get("statusCode") for e in a.get("errors") or []}
                if not a.get("success") and codes != {"ENTITY_IS_DELETED"}:
                    errors.setdefault(parent, []).append(
                        f"{sobject_of(record_id) or 'record'} {record_id}: {_error_text(a.get('errors') or [])}")

    @staticmethod
    def _with_errors(results: list[PushResult], errors: dict[int, list[str]]) -> list[PushResult]:
        return [PushResult(r.local_id, error="; ".join(errors[r.local_id])) if r.local_id in errors else r
                for r in results]

    def _push_members(self, records: list[PushRecord], results: list[PushResult]) -> list[PushResult]:
        """Each pushed campaign's members (its ``contact`` association: the
        Salesforce ids of the leads with a touch on it), matched against the
        CampaignMembers Salesforce has by (CampaignId, LeadId/ContactId), so
        a member made there or by a lost try is not sent again. A refused
        member fails its campaign's result, so the campaign is tried again
        (idempotent) and the error shows on it."""
        by_local = {r.local_id: r for r in records}
        wanted = [(result.local_id, result.remote_id, person, self._responded(by_local[result.local_id], person))
                  for result in results if result.remote_id and not result.error
                  for person in by_local[result.local_id].associations.get("contact", [])]
        if not wanted:
            return results
        have: dict[tuple[str, str], dict] = {}
        for row in self._where_in("CampaignMember", ["Id", "CampaignId", "LeadId", "ContactId", "HasResponded"],
                                  "CampaignId", sorted({w[1] for w in wanted})):
            for person in (row.get("LeadId"), row.get("ContactId")):
                if person:
                    have[(row["CampaignId"], person)] = row
        creates, upgrades = [], []
        for campaign_local, campaign_id, person, responded in wanted:
            row = have.get((campaign_id, person))
            if row is None:
                creates.append((campaign_local, self._member_row(campaign_id, campaign_local, person, responded)))
            elif responded and not row.get("HasResponded"):
                upgrades.append((campaign_local, {"attributes": {"type": "CampaignMember"}, "Id": row["Id"],
                                                  "Status": MEMBER_STATUS}))
        errors: dict[int, list[str]] = {}
        self._write(f"composite/sobjects/CampaignMember/{EXTERNAL_ID}", "PATCH", creates, errors)
        self._write("composite/sobjects", "PATCH", upgrades, errors)
        return self._with_errors(results, errors)

    def _push_roles(self, records: list[PushRecord], results: list[PushResult]) -> list[PushResult]:
        """Make each pushed Opportunity's OpportunityContactRoles follow the
        deal's contact roles here: create the missing, update Role/IsPrimary
        of the ones changed here since the last sync (one changed only in
        Salesforce stays; the role pull brings it), delete the ones removed
        here (both sides had them, ``PushRecord.link_synced``; a role added
        there and not pulled yet stays). One SOQL per 200 deals, then
        Collections calls of 200."""
        by_local = {r.local_id: r for r in records}
        errors: dict[int, list[str]] = {}
        # Opportunity id -> (deal's local id, {Contact id: (fields to send, changed here)}, synced roles).
        wanted: dict[str, tuple[int, dict[str, tuple[dict, bool]], dict[str, dict]]] = {}
        for result in results:
            if not result.remote_id or result.error:
                continue
            record = by_local[result.local_id]
            synced = record.link_synced.get("contact_role", {})
            roles = {}
            for person, details in record.link_details.get("contact_role", {}).items():
                if sobject_of(person) != "Contact":
                    errors.setdefault(result.local_id, []).append(
                        f"OpportunityContactRole for {person}: a contact role needs a Salesforce Contact and this "
                        "person is a Lead there (convert the Lead, or push the person as a Contact); the deal's "
                        "other roles were synced")
                    continue
                fields = {"Role": details.get("role") or None, "IsPrimary": bool(details.get("is_primary"))}
                roles[person] = (fields, details != synced.get(person))
            wanted[result.remote_id] = (result.local_id, roles, synced)
        if not wanted:
            return self._with_errors(results, errors)
        have: dict[str, dict[str, dict]] = {}
        for row in self._where_in("OpportunityContactRole", ["Id", "OpportunityId", "ContactId", "Role", "IsPrimary"],
                                  "OpportunityId", sorted(wanted)):
            have.setdefault(row["OpportunityId"], {})[row["ContactId"]] = row
        creates, updates, deletes = [], [], []
        for opportunity_id, (local_id, roles, synced) in wanted.items():
            current = have.get(opportunity_id, {})
            # Demotions before the new primary: Salesforce keeps one primary per Opportunity.
            for person, (fields, changed) in sorted(roles.items(), key=lambda kv: kv[1][0]["IsPrimary"]):
                row = current.get(person)
                if row is None:
                    creates.append((local_id, {"attributes": {"type": "OpportunityContactRole"},
                                               "OpportunityId": opportunity_id, "ContactId": person, **fields}))
                elif changed and (row.get("Role") or None, bool(row.get("IsPrimary"))) != (fields["Role"],
                                                                                           fields["IsPrimary"]):
                    updates.append((local_id, {"attributes": {"type": "OpportunityContactRole"}, "Id": row["Id"],
                                               **fields}))
            deletes += [(local_id, row["Id"]) for person, row in sorted(current.items())
                        if person not in roles and person in synced]
        self._delete(deletes, errors)
        self._write("composite/sobjects", "PATCH", updates, errors)
        self._write("composite/sobjects", "POST", creates, errors)
        return self._with_errors(results, errors)

    def _push_collection(self, obj: str, target: str, known: bool, chunk: list[PushRecord]) -> list[PushResult]:
        body = {"allOrNone": False, "records": [{"attributes": {"type": target}, **self._row(obj, r, target)}
                                                for r in chunk]}
        path = "composite/sobjects" if known else f"composite/sobjects/{target}/{EXTERNAL_ID}"
        answer = self._call(lambda: self.sf.restful(path, method="PATCH", json=body, timeout=self.timeout))
        if not isinstance(answer, list) or len(answer) != len(chunk):
            raise PermanentError(f"Salesforce answered {len(answer or [])} results for {len(chunk)} records")
        # Results come back in the order of the records sent.
        results = [PushResult(r.local_id, remote_id=a["id"]) if a.get("success")
                   else PushResult(r.local_id, error=_error_text(a.get("errors") or []))
                   for r, a in zip(chunk, answer)]
        return self._converted_to_contacts(obj, chunk, results) if target == "Lead" else results

    def _converted_to_contacts(self, obj: str, chunk: list[PushRecord], results: list[PushResult]
                               ) -> list[PushResult]:
        """Records refused as converted Leads go to the Lead's
        ConvertedContactId (found by Id, or by Martech_Id__c for a record
        whose Lead id we never got), updated by Id there."""
        refused = {r.local_id: r for r, res in zip(chunk, results) if "CANNOT_UPDATE_CONVERTED_LEAD" in res.error}
        if not refused:
            return results
        by_id = {r.remote_id: r.local_id for r in refused.values() if r.remote_id.startswith("00Q")}
        contact_of: dict[int, str] = {}
        for row in self._where_in("Lead", ["Id", "ConvertedContactId"], "Id", sorted(by_id)) if by_id else ():
            if row.get("ConvertedContactId"):
                contact_of[by_id[row["Id"]]] = row["ConvertedContactId"]
        rest = [str(local) for local in refused if local not in contact_of]
        if rest:
            for row in self._query(f"SELECT Id, {EXTERNAL_ID}, ConvertedContactId FROM Lead WHERE {EXTERNAL_ID} IN "
                                   f"({', '.join(repr(v) for v in rest)}) AND IsConverted = true"):
                if row.get("ConvertedContactId") and str(row.get(EXTERNAL_ID)).isdigit():
                    contact_of.setdefault(int(row[EXTERNAL_ID]), row["ConvertedContactId"])
        moved = [dataclasses.replace(refused[local], remote_id=contact) for local, contact in contact_of.items()]
        answers = {r.local_id: r for r in self._push_collection(obj, "Contact", True, moved)} if moved else {}
        return [answers.get(r.local_id, r) for r in results]

    def _push_bulk(self, obj: str, target: str, known: bool, group: list[PushRecord]) -> list[PushResult]:
        rows = [self._row(obj, r, target) for r in group]
        columns = sorted({k for row in rows for k in row})
        bulk_type = getattr(self.sf.bulk2, target)

        def run():
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            client = bulk_type._client
            if known:
                job = client.create_job("update")
            else:
                job = client.create_job("upsert", external_id_field=EXTERNAL_ID)
            client.upload_job_data(job["id"], out.getvalue())
            client.close_job(job["id"])
            client.wait_for_job(job["id"], False, self.bulk_wait)
            return (client.get_ingest_results(job["id"], "successfulResults"),
                    client.get_ingest_results(job["id"], "failedResults"))

        ok_csv, failed_csv = self._call(run)
        done = {row[EXTERNAL_ID]: row["sf__Id"] for row in csv.DictReader(io.StringIO(ok_csv))}
        failed = {row[EXTERNAL_ID]: row["sf__Error"] for row in csv.DictReader(io.StringIO(failed_csv))}
        return [PushResult(r.local_id, remote_id=done[str(r.local_id)]) if str(r.local_id) in done
                else PushResult(r.local_id, error=failed.get(str(r.local_id), "not in the Bulk job's results"))
                for r in group]

    # --- pull ---
    def _query(self, soql: str) -> Iterator[dict]:
        # A first page read ahead in one composite call (``prefetch``) is used once.
        page = self._prefetched.pop(soql, None) or self._call(lambda: self.sf.query(soql, timeout=self.timeout))
        while True:
            yield from page["records"]
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            url = page["nextRecordsUrl"]
            page = self._call(lambda: self.sf.query_more(url, identifier_is_url=True, timeout=self.timeout))

    def _soql(self, target: str, cursor: str, properties: list[str], ids: list[str] | None = None
              ) -> tuple[str, dict[str, str]]:
        """The pull's SOQL for ``target`` and the lookups it reads back."""
        wanted = {"Id", "Email", "SystemModstamp"} if target in ("Lead", "Contact") else {"Id", "SystemModstamp"}
        for name in properties:
            if not FIELD_NAME.match(name):
                raise PermanentError(f"not a Salesforce field name: {name!r}")
            if target == "Contact":
                if name in LEAD_ONLY:
                    continue
                name = CONTACT_RENAMES.get(name, name)
            wanted.add(name)
        # Lookups read back as associations (the engine links an Opportunity's Account).
        lookups = {field: other for (obj, other), field in LOOKUPS.items() if SOBJECTS[obj] == target}
        wanted.update(lookups)
        if target == "Task":
            wanted.add("IsClosed")
        where = ["IsConverted = false"] if target == "Lead" else []
        if target == "Task" and ids is None:
            # Task scope: only Tasks about a person (a Lead or Contact, WhoId)
            # are ours to pull; other integrations' Tasks on accounts,
            # opportunities or nothing are left in Salesforce, not failed here.
            where.append("WhoId != null")
        if ids is not None:
            bad = [i for i in ids if not SF_ID.match(i)]
            if bad:
                raise PermanentError(f"not a Salesforce id: {bad[0]!r}")
            where.append(f"Id IN ({', '.join(repr(i) for i in ids)})")
        if cursor:
            # Inclusive: SystemModstamp has whole seconds, a mass update shares
            # one; the caller skips what it applied at that second (PullPosition).
            where.append(f"SystemModstamp >= {soql_datetime(cursor)}")
        soql = f"SELECT {', '.join(sorted(wanted))} FROM {target}"
        if where:
            soql += " WHERE " + " AND ".join(where)
        soql += " ORDER BY SystemModstamp, Id"
        return soql, lookups

    def _select(self, target: str, cursor: str, properties: list[str], ids: list[str] | None = None
                ) -> Iterator[Pulled]:
        soql, lookups = self._soql(target, cursor, properties, ids)
        for row in self._query(soql):
            yield self._pulled(target, lookups, row)

    @staticmethod
    def _pulled(target: str, lookups: dict[str, str], row: dict) -> Pulled:
        """A queried row (REST JSON, or a Bulk CSV row of strings) as a pulled record."""
        back = {v: k for k, v in CONTACT_RENAMES.items()} if target == "Contact" else {}
        props = {back.get(k, k): ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                 for k, v in row.items() if k != "attributes"}
        links = {other: [row[field]] for field, other in lookups.items() if row.get(field)}
        if target == "Task" and row.get("IsClosed") in (True, "true"):
            # An org may name its closed statuses its own way; closed is completed here.
            props["Status"] = TASK_CLOSED_STATUS
        return Pulled(row["Id"], props, row["SystemModstamp"], associations=links)

    # --- Bulk API 2.0 query: large backfills ---
    def backlog(self, obj: str, cursor: str, properties: list[str]) -> int:
        """How many records a pull of ``obj`` from ``cursor`` would read: the
        first REST query page's ``totalSize`` (for leads, Leads and Contacts).
        Costs no call of its own: the pages read here are kept, and the pull
        that follows (``pull_since``) starts from them."""
        total = 0
        for soql in self.pull_queries(obj, cursor, properties):
            page = self._prefetched.get(soql) or self._call(lambda q=soql: self.sf.query(q, timeout=self.timeout))
            self._prefetched[soql] = page
            total += int(page.get("totalSize") or 0)
        return total

    def bulk_pages(self, obj: str, cursor: str, properties: list[str], resume: str = "", chunk: int = 100
                   ) -> Iterator[tuple[list[Pulled], str]]:
        """Every record of ``obj`` changed at or after ``cursor`` through Bulk
        API 2.0 query jobs (one per sObject: for leads, Lead then Contact),
        in pages of ``chunk`` records, each with the token of where to go on
        after it ("" after the last). Given back as ``resume``, the token
        continues the same job at that result set (its locator stays valid
        while the job exists) past the rows already yielded, so a killed
        backfill resumes without a new job; a job that is gone (deleted,
        expired) is made again from ``cursor``.

        The rows come in no useful order (the job is chunked by record id):
        the caller cannot move its cursor page by page, only at the end.
        Dates come as ``...000Z``; they are given back in the REST query's
        ``+0000`` form the cursors hold."""
        targets = ["Lead", "Contact"] if obj == "contact" else [self._spec(obj)]
        state = json.loads(resume) if resume else {"target": targets[0], "job": "", "locator": "", "skip": 0}
        for n, target in enumerate(targets[targets.index(state["target"]):], start=targets.index(state["target"])):
            soql, lookups = self._soql(target, cursor, properties)
            # Bulk 2.0 query takes no ORDER BY (it would defeat PK chunking): rows come by chunk.
            soql = soql.removesuffix(" ORDER BY SystemModstamp, Id")
            client = getattr(self.sf.bulk2, target)._client
            job_id = state["job"] if state["target"] == target else ""
            locator, skip = (state["locator"], int(state.get("skip") or 0)) if job_id else ("", 0)
            if job_id and self._call(lambda j=job_id: self._job_state(client, j)) != "JobComplete":
                job_id = ""  # gone or not usable: a new job from the cursor
            if not job_id:
                job_id, locator, skip = self._call(lambda q=soql: self._bulk_job(client, q)), "", 0
            after_last = (json.dumps({"target": targets[n + 1], "job": "", "locator": "", "skip": 0})
                          if n + 1 < len(targets) else "")
            while True:
                result = self._call(lambda j=job_id, loc=locator: client.get_query_results(j, loc, self.bulk_page))
                rows = list(csv.DictReader(io.StringIO(result["records"])))
                following = result["locator"]
                for start in range(skip, len(rows), chunk):
                    page = [self._pulled(target, lookups, {k: (v if v != "" else None) for k, v in row.items()}
                                         | {"SystemModstamp": _rest_time(row["SystemModstamp"])})
                            for row in rows[start:start + chunk]]
                    done = start + len(page)
                    if done < len(rows):
                        token = json.dumps({"target": target, "job": job_id, "locator": locator, "skip": done})
                    elif following:
                        token = json.dumps({"target": target, "job": job_id, "locator": following, "skip": 0})
                    else:
                        token = after_last
                    yield page, token
                if not following:
                    break
                locator, skip = following, 0
            state = {"target": "", "job": "", "locator": "", "skip": 0}

    def _bulk_job(self, client, soql: str) -> str:
        job = client.create_job("query", soql)
        client.wait_for_job(job["id"], True, self.bulk_wait)
        return job["id"]

    @staticmethod
    def _job_state(client, job_id: str) -> str:
        try:
            return client.get_job(job_id, True).get("state", "")
        except SalesforceResourceNotFound:
            return ""

    def pull_since(self, obj: str, cursor: str, properties: list[str],
                   skip: Callable[[Pulled], bool] | None = None) -> Iterator[Pulled]:
        """Records changed at or after ``cursor`` in SystemModstamp order. For leads,
        Leads and Contacts merged in that order: everything yielded before a
        failure is older than anything not yet yielded, so the caller's
        cursor never skips a record."""
        target = self._spec(obj)
        if obj != "contact":
            yield from self._select(target, cursor, properties)
            return
        streams = [self._select(target, cursor, properties) for target in ("Lead", "Contact")]
        yield from heapq.merge(*streams, key=lambda p: (p.modified_at, p.remote_id))

    def pull_queries(self, obj: str, cursor: str, properties: list[str]) -> list[str]:
        """The SOQL ``pull_since`` sends first for ``obj`` from ``cursor``."""
        targets = ["Lead", "Contact"] if obj == "contact" else [self._spec(obj)]
        return [self._soql(target, cursor, properties)[0] for target in targets]

    def link_queries(self, link: str, cursor: str) -> list[str]:
        """The SOQL ``pull_links`` sends first for ``link`` from ``cursor``."""
        return [self._links_soql(link, f" WHERE SystemModstamp >= {soql_datetime(cursor)}" if cursor else "")]

    def prefetch(self, queries: list[str]) -> int:
        """Read the first page of each pull query in one Composite call per 25
        (Salesforce counts a composite request as one API call): an idle
        org's pull of every object and link then costs one call, the pulls
        finding their first page here. Returns the queries answered."""
        answered = 0
        version = self.conf["SALESFORCE_API_VERSION"]
        for start in range(0, len(queries), COMPOSITE_MAX):
            chunk = queries[start:start + COMPOSITE_MAX]
            body = {"allOrNone": False, "compositeRequest": [
                {"method": "GET", "url": f"/services/data/v{version}/query?{urlencode({'q': soql})}",
                 "referenceId": f"q{n}"} for n, soql in enumerate(chunk)]}
            answer = self._call(lambda: self.sf.restful("composite", method="POST", json=body,
                                                        timeout=self.timeout))
            for soql, sub in zip(chunk, (answer or {}).get("compositeResponse") or []):
                if sub.get("httpStatusCode") == 200 and isinstance(sub.get("body"), dict):
                    self._prefetched[soql] = sub["body"]
                    answered += 1
        return answered

    def fetch_many(self, obj: str, remote_ids: list[str], properties: list[str]) -> list[Pulled]:
        """The records with these ids, one SOQL per sObject and 200 ids (for
        leads, Leads and Contacts by their id prefix)."""
        self._spec(obj)
        by_target: dict[str, list[str]] = {}
        for remote_id in remote_ids:
            target = sobject_of(remote_id) if obj == "contact" else SOBJECTS[obj]
            by_target.setdefault(target, []).append(remote_id)
        out: list[Pulled] = []
        for target, ids in sorted(by_target.items()):
            if target not in (("Lead", "Contact") if obj == "contact" else (SOBJECTS[obj],)):
                raise PermanentError(f"{ids[0]!r} is not a Salesforce {SOBJECTS[obj]} id")
            for start in range(0, len(ids), COLLECTION):
                out += self._select(target, "", properties, ids=ids[start:start + COLLECTION])
        return out

    def pull_links(self, link: str, cursor: str) -> Iterator[PulledLink]:
        """CampaignMembers or OpportunityContactRoles changed at or after ``cursor``,
        in SystemModstamp order, with their fields under the link's local
        names (members: status, has_responded, joined_at; roles: role,
        is_primary)."""
        if link not in LINKS:
            raise NotImplementedError(f"Salesforce does not sync the link {link!r} (it syncs {', '.join(LINKS)})")
        yield from self._links(link, f" WHERE SystemModstamp >= {soql_datetime(cursor)}" if cursor else "")

    def fetch_links(self, link: str, remote_ids: list[str]) -> list[PulledLink]:
        """The link records with these ids (a failed link pulled again), one
        SOQL per 200 ids; ones deleted in Salesforce are not in the answer."""
        if link not in LINKS:
            raise NotImplementedError(f"Salesforce does not sync the link {link!r} (it syncs {', '.join(LINKS)})")
        bad = [i for i in remote_ids if not SF_ID.match(i)]
        if bad:
            raise PermanentError(f"not a Salesforce id: {bad[0]!r}")
        out: list[PulledLink] = []
        for start in range(0, len(remote_ids), COLLECTION):
            ids = ", ".join(repr(i) for i in remote_ids[start:start + COLLECTION])
            out += self._links(link, f" WHERE Id IN ({ids})")
        return out

    @staticmethod
    def _links_soql(link: str, where: str) -> str:
        if link == "campaign_member":
            return ("SELECT Id, CampaignId, LeadId, ContactId, Status, HasResponded, CreatedDate, SystemModstamp "
                    f"FROM CampaignMember{where} ORDER BY SystemModstamp, Id")
        return ("SELECT Id, OpportunityId, ContactId, Role, IsPrimary, SystemModstamp "
                f"FROM OpportunityContactRole{where} ORDER BY SystemModstamp, Id")

    def _links(self, link: str, where: str) -> Iterator[PulledLink]:
        soql = self._links_soql(link, where)
        if link == "campaign_member":
            for row in self._query(soql):
                # A converted Lead's member carries both ids: the Contact is the person now.
                yield PulledLink(row["Id"], row.get("CampaignId") or "", row.get("ContactId") or row.get("LeadId") or "",
                                 {"status": row.get("Status") or "", "has_responded": bool(row.get("HasResponded")),
                                  "joined_at": row.get("CreatedDate") or ""}, row["SystemModstamp"])
            return
        for row in self._query(soql):
            yield PulledLink(row["Id"], row.get("OpportunityId") or "", row.get("ContactId") or "",
                             {"role": row.get("Role") or "", "is_primary": bool(row.get("IsPrimary"))},
                             row["SystemModstamp"])

    def fetch_one(self, obj: str, remote_id: str, properties: list[str]) -> Pulled | None:
        target = sobject_of(remote_id)
        allowed = ("Lead", "Contact") if obj == "contact" else (self._spec(obj),)
        if target not in allowed:
            raise PermanentError(f"{remote_id!r} is not a Salesforce {' or '.join(allowed)} id")
        try:
            # getattr at call time: a renewed session means a new client.
            row = self._call(lambda: getattr(self.sf, target).get(remote_id, timeout=self.timeout))
        except SalesforceResourceNotFound:
            return None
        back = {v: k for k, v in CONTACT_RENAMES.items()} if target == "Contact" else {}
        props = {back.get(k, k): "" if v is None else str(v) for k, v in row.items() if k != "attributes"}
        return Pulled(row["Id"], props, row.get("SystemModstamp") or "")

    # --- deletions ---
    def deleted_since(self, key: str, cursor: str) -> DeletedPage | None:
        """Records of object type or link ``key`` deleted in Salesforce since
        ``cursor``: Get Deleted (``sf.<SObject>.deleted(start, end)``) once
        per sObject (leads: Lead and Contact), all with the same end, now.
        Returns the (Id, deletedDate) pairs and the next cursor, Salesforce's
        ``latestDateCovered`` (the earliest of the sObjects'), or None when there is nothing to ask: Salesforce takes both ends to
        the minute and wants more than a minute between them, so a rerun
        within the minute makes no call.

        No cursor yet (the first run): from the oldest date the delete log
        keeps (15 days back, a minute of margin). A cursor older than that
        is moved up to it: deletions in between cannot be read any more
        (``DeletedPage.gap`` says from when; the caller records it)."""
        if key in LINKS:
            sobjects = [LINKS[key]]
        else:
            sobjects = ["Lead", "Contact"] if key == "contact" else [self._spec(key)]
        end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        oldest = end - dt.timedelta(days=DELETED_LOG_DAYS) + dt.timedelta(minutes=1)
        start, gap = oldest, ""
        if cursor:
            start = dt.datetime.fromisoformat(soql_datetime(cursor).replace("Z", "+00:00"))
            if start < oldest:
                start, gap = oldest, cursor
        if end.replace(second=0) - start.replace(second=0) <= dt.timedelta(minutes=1):
            return None
        rows: list[tuple[str, str]] = []
        covered: list[str] = []
        for sobject in sobjects:
            answer = self._call(lambda: getattr(self.sf, sobject).deleted(start, end))
            rows += [(r["id"], r.get("deletedDate") or "") for r in answer.get("deletedRecords") or []]
            covered.append(answer.get("latestDateCovered") or "")
        if not all(covered):
            raise PermanentError("Salesforce's Get Deleted answer has no latestDateCovered")
        return DeletedPage(sorted(rows, key=lambda r: (r[1], r[0])), min(covered), gap)

    def records_delete(self, obj: str, remote_ids: list[str]) -> dict[str, str]:
        """Delete records of ``obj`` (sObject Collections delete, 200 ids a
        call, ``allOrNone`` false): {id: Salesforce's error} for those
        refused. One Salesforce no longer has (``ENTITY_IS_DELETED``: gone
        already, or a retry after a lost answer) is what we wanted."""
        sobject = self._spec(obj)
        out = {i: f"not a Salesforce {sobject} id" for i in remote_ids
               if not SF_ID.match(i) or sobject_of(i) != sobject}
        sent = [i for i in remote_ids if i not in out]
        errors: dict[int, list[str]] = {}
        self._delete(list(enumerate(sent)), errors)
        return {**out, **{sent[n]: "; ".join(messages) for n, messages in errors.items()}}

    def deleted_links(self, link: str, remote_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Deleted link records -> (parent id, person id), read from the
        Recycle Bin with queryAll (one SOQL per 200 ids): the Get Deleted
        answer names only the deleted Id. One purged from the bin is absent,
        and so is a role whose Opportunity has a live role for the same
        Contact again (deleted and made anew)."""
        if link not in LINKS:
            raise NotImplementedError(f"Salesforce does not sync the link {link!r} (it syncs {', '.join(LINKS)})")
        parent, people = (("CampaignId", ("ContactId", "LeadId")) if link == "campaign_member"
                          else ("OpportunityId", ("ContactId",)))
        out: dict[str, tuple[str, str]] = {}
        for start in range(0, len(remote_ids), COLLECTION):
            chunk = remote_ids[start:start + COLLECTION]
            bad = [i for i in chunk if not SF_ID.match(i)]
            if bad:
                raise PermanentError(f"not a Salesforce id: {bad[0]!r}")
            soql = (f"SELECT Id, {parent}, {', '.join(people)} FROM {LINKS[link]} WHERE IsDeleted = true AND Id IN "
                    f"({', '.join(repr(i) for i in chunk)})")
            page = self._call(lambda: self.sf.query(soql, include_deleted=True, timeout=self.timeout))
            while True:
                for row in page["records"]:
                    out[row["Id"]] = (row.get(parent) or "", next((row[p] for p in people if row.get(p)), ""))
                if page.get("done", True) or not page.get("nextRecordsUrl"):
                    break
                url = page["nextRecordsUrl"]
                page = self._call(lambda: self.sf.query_more(url, identifier_is_url=True, include_deleted=True,
                                                             timeout=self.timeout))
        if link == "contact_role" and out:
            # A role deleted and made again for the same Contact (the new one
            # already pulled) is not a removal: one SOQL per 200 deals.
            live = {(row["OpportunityId"], row["ContactId"]) for row in self._where_in(
                "OpportunityContactRole", ["Id", "OpportunityId", "ContactId"], "OpportunityId",
                sorted({p for p, _ in out.values() if p}))}
            out = {i: pair for i, pair in out.items() if pair not in live}
        return out

    # --- segment mirrors: a Campaign's members ---
    def person_delete(self, remote_id: str) -> bool:
        """Delete a person's Lead or Contact (``DELETE sobjects/{Lead|Contact}/{id}``,
        204), for an erasure. False when Salesforce has no such record
        (404 ENTITY_IS_DELETED: deleted already, or a retry after a lost answer)."""
        sobject = sobject_of(remote_id)
        if sobject not in ("Lead", "Contact"):
            raise PermanentError(f"{remote_id} is not a Salesforce Lead or Contact id")
        try:
            self._call(lambda: self.sf.restful(f"sobjects/{sobject}/{remote_id}", method="DELETE",
                                               timeout=self.timeout))
        except SalesforceResourceNotFound:
            return False
        except PermanentError as exc:
            if "ENTITY_IS_DELETED" in str(exc) or "404" in str(exc):
                return False
            raise
        return True

    def list_ensure(self, *, name: str, remote_id: str = "", key: str = "") -> tuple[str, bool]:
        """The mirror's Campaign: (Id, whether it existed before this call).
        A chosen Campaign (its Id) must exist; otherwise one is upserted by
        ``Martech_Id__c`` = ``key`` with the mirror's name, so a retry after a
        lost answer finds the one the first try made."""
        if remote_id:
            if sobject_of(remote_id) != "Campaign" or not SF_ID.match(remote_id):
                raise PermanentError(f"{remote_id!r} is not a Salesforce Campaign id (they start with 701)")
            try:
                self._call(lambda: self.sf.Campaign.get(remote_id, timeout=self.timeout))
            except SalesforceResourceNotFound:
                raise PermanentError(f"Salesforce has no Campaign {remote_id} (deleted there?); choose another or "
                                     "clear the mirror's remote id to make one") from None
            return remote_id, True
        body = {"allOrNone": False, "records": [{"attributes": {"type": "Campaign"}, EXTERNAL_ID: key, "Name": name,
                                                 "IsActive": True}]}
        answer = self._call(lambda: self.sf.restful(f"composite/sobjects/Campaign/{EXTERNAL_ID}", method="PATCH",
                                                    json=body, timeout=self.timeout))
        (result,) = answer
        if not result.get("success"):
            raise PermanentError(f"Campaign {name!r}: {_error_text(result.get('errors') or [])}")
        return result["id"], not result.get("created", True)

    def list_members(self, remote_id: str) -> dict[str, str]:
        """The Campaign's members: {Contact or Lead id: CampaignMember Id}
        (a converted Lead's member by its Contact)."""
        out: dict[str, str] = {}
        for row in self._where_in("CampaignMember", ["Id", "LeadId", "ContactId"], "CampaignId", [remote_id]):
            out[row.get("ContactId") or row.get("LeadId")] = row["Id"]
        return out

    def _members_of(self, campaign_id: str, people: list[str]) -> dict[str, str]:
        """{person: CampaignMember Id} for those of ``people`` already members:
        one SOQL per kind of person (Lead, Contact)."""
        out: dict[str, str] = {}
        for column, prefix in (("LeadId", "00Q"), ("ContactId", "003")):
            ids = [p for p in people if p.startswith(prefix)]
            if not ids:
                continue
            for row in self._query(f"SELECT Id, {column} FROM CampaignMember WHERE CampaignId = '{campaign_id}' "
                                   f"AND {column} IN ({', '.join(repr(i) for i in ids)})"):
                out[row[column]] = row["Id"]
        return out

    def list_change(self, remote_id: str, *, add: list[str], remove: dict[str, str]) -> ListChange:
        """At most ``list_batch`` people: the members among ``add`` are read
        first (a member made there, or by a try whose answer was lost, is
        not created again: Salesforce refuses a second one, DUPLICATE_VALUE),
        the rest created in one Collections call; ``remove`` deleted by their
        CampaignMember Id (read when not known), one Collections call; one
        already deleted (ENTITY_IS_DELETED) is what we wanted."""
        if len(add) + len(remove) > self.list_batch:
            raise ValueError(f"at most {self.list_batch} ids per list_change call")
        bad = [p for p in [remote_id, *add, *remove] if not SF_ID.match(p)]
        if bad:
            raise PermanentError(f"not a Salesforce id: {bad[0]!r}")
        out = ListChange()
        have = self._members_of(remote_id, list(add)) if add else {}
        creates = [p for p in add if p not in have]
        out.added.update({p: have[p] for p in add if p in have})
        if creates:
            body = {"allOrNone": False, "records": [
                {"attributes": {"type": "CampaignMember"}, "CampaignId": remote_id,
                 ("ContactId" if p.startswith("003") else "LeadId"): p} for p in creates]}
            answer = self._call(lambda: self.sf.restful("composite/sobjects", method="POST", json=body,
                                                        timeout=self.timeout))
            duplicates = []
            for person, a in zip(creates, answer or []):
                codes = {e.get("statusCode") for e in a.get("errors") or []}
                if a.get("success"):
                    out.added[person] = a["id"]
                elif codes == {"DUPLICATE_VALUE"}:
                    duplicates.append(person)  # made there since we read: a member all the same
                else:
                    out.errors[person] = _error_text(a.get("errors") or [])
            if duplicates:
                found = self._members_of(remote_id, duplicates)
                out.added.update({p: found.get(p, "") for p in duplicates})
        unknown = [p for p, member in remove.items() if not member]
        member_ids = {p: m for p, m in remove.items() if m}
        member_ids.update(self._members_of(remote_id, unknown) if unknown else {})
        if member_ids:
            errors: dict[int, list[str]] = {}
            rows = sorted((n, m) for n, m in enumerate(member_ids.values()))
            self._delete(rows, errors)
            people = list(member_ids)
            for n, messages in errors.items():
                raise PermanentError(f"removing {people[n]} from Campaign {remote_id}: {'; '.join(messages)}")
        out.removed = sorted(remove)
        return out

    # --- users, limits ---
    def owners(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT Id, Email, FirstName, LastName, IsActive FROM User ORDER BY Id")
        return [{"remote_id": r["Id"], "email": r.get("Email") or "", "first_name": r.get("FirstName") or "",
                 "last_name": r.get("LastName") or "", "is_active": bool(r.get("IsActive"))} for r in rows]

    def describe(self, remote_object: str) -> dict[str, dict]:
        """The org's fields of one sObject (describe, one call), in
        martech.crm.schema's shape. ``unique``: an External ID with unique
        values, what an upsert key needs."""
        if not FIELD_NAME.match(remote_object):
            raise PermanentError(f"not an sObject name: {remote_object!r}")
        answer = self._call(lambda: self.sf.restful(f"sobjects/{remote_object}/describe", method="GET",
                                                    timeout=self.timeout))
        out = {}
        for f in answer.get("fields") or []:
            picklist = f.get("type") in ("picklist", "multipicklist")
            out[f["name"]] = {
                "label": f.get("label") or f["name"], "type": f.get("type"),
                "options": [p["value"] for p in f.get("picklistValues") or [] if p.get("active")] if picklist
                else None,
                "read_only": not (f.get("createable") or f.get("updateable")), "calculated": bool(f.get("calculated")),
                "unique": bool(f.get("externalId") and f.get("unique")), "createable": bool(f.get("createable")),
                "updateable": bool(f.get("updateable")), "restricted": bool(f.get("restrictedPicklist")),
                "external_id": bool(f.get("externalId")),
            }
        return out

    def limits(self) -> dict[str, int]:
        """Salesforce's own count of the daily API allowance."""
        data = self._call(lambda: self.sf.limits(timeout=self.timeout))
        daily = data.get("DailyApiRequests") or {}
        return {"max": int(daily.get("Max", 0)), "remaining": int(daily.get("Remaining", 0))}

    def verify_webhook(self, *, method: str, uri: str, body: bytes, headers: dict[str, str]) -> bool:
        """Salesforce has no signed JSON webhook like HubSpot's (Outbound
        Messages are SOAP, Change Data Capture needs a streaming client);
        changes come in through the SystemModstamp pull, so nothing verifies."""
        return False


# --- schema (martech.crm.schema) ---

# The sObjects a synced object type writes Martech_Id__c on (its links' too).
ID_SOBJECTS = {"contact": ("Lead", "Contact"), "company": ("Account",), "deal": ("Opportunity",),
               "campaign": ("Campaign", "CampaignMember"), "task": ("Task",)}


def schema_objects(connector) -> list[str]:
    from martech.crm import objects

    names: list[str] = []
    for o in objects.synced_by(connector):
        names += [n for n in ID_SOBJECTS.get(o.key, ()) if n not in names]
    return names


def schema_targets(obj: str, remote_field: str) -> list[tuple[str, str]]:
    """A contact mapping names a Lead field; a Contact gets the renamed one,
    and none for the Lead-only fields (``shape``)."""
    if obj == "contact":
        targets = [("Lead", remote_field)]
        if remote_field not in LEAD_ONLY:
            targets.append(("Contact", CONTACT_RENAMES.get(remote_field, remote_field)))
        return targets
    return [(SOBJECTS[obj], remote_field)] if obj in SOBJECTS else []


SF_TYPES = {"text": "Text(255)", "number": "Number(18, 0)", "boolean": "Checkbox", "date": "Date",
            "datetime": "Date/Time", "picklist": "Picklist", "multi": "Picklist (Multi-Select)"}


def _object_manager(sobject: str) -> str:
    # Task fields are Activity fields in Setup.
    return "Activity" if sobject in ("Task", "Event") else sobject


def create_steps(remote_object: str, name: str, kind: str) -> str:
    return (f"Create it in Salesforce: Setup > Object Manager > {_object_manager(remote_object)} > Fields & "
            f"Relationships > New: {SF_TYPES.get(kind, 'Text(255)')}, Field Name "
            f"{name.removesuffix('__c')} (API name {name}).")


def schema_requirements(obj: str, connector=None) -> list:
    from martech.crm.schema import Requirement

    return [Requirement(sobject, EXTERNAL_ID, True,
                        f"Create it in Salesforce: Setup > Object Manager > {_object_manager(sobject)} > Fields & "
                        f"Relationships > New: Text(64), External ID, Unique, name {EXTERNAL_ID}.",
                        f"our id, the external id {sobject} is upserted by")
            for sobject in ID_SOBJECTS.get(obj, ())]


def not_unique(req, definition: dict) -> tuple[bool, str]:
    return True, (f"{req.remote_object}.{req.name} is not an External ID with unique values: Salesforce refuses an "
                  f"upsert by it. Edit the field in Setup > Object Manager > {_object_manager(req.remote_object)} > "
                  "Fields & Relationships: External ID and Unique on.")


def key_notes(obj: str, schemas: dict[str, dict]) -> list[str]:
    return []
