"""Salesforce REST emulator: the endpoints the connector uses, with
Salesforce's request and response shapes, keeping state in memory. Served
over TLS on loopback (``tls.ensure_certificate``), because simple-salesforce
only speaks ``https://``.

Under ``/services/data/vNN.N/``:

- ``PATCH composite/sobjects/{SObject}/{ExternalIdField}``: sObject
  Collections upsert (at most 200 records, ``allOrNone`` false gives
  per-record ``errors``); ``POST``/``PATCH composite/sobjects`` create/update.
  A relationship given by external id (``"Lead": {"Martech_Id__c": "12"}``)
  is resolved like Salesforce does.
- ``GET query?q=`` and ``GET query/{locator}``: the SOQL subset the connector
  sends (``SELECT f, ... FROM O [WHERE c AND ...] [ORDER BY f, ...] [LIMIT n]``,
  conditions ``=, !=, <, <=, >, >=, IN`` on strings, booleans, numbers, null
  and date-time literals); anything else is a 400 ``MALFORMED_QUERY``, an
  unknown field ``INVALID_FIELD``. Pages of ``query_page_size`` with
  ``nextRecordsUrl``.
- ``DELETE composite/sobjects?ids=...&allOrNone=false``: Collections delete
  (per-id results; an unknown id is ``ENTITY_IS_DELETED``);
  ``DELETE sobjects/{SObject}/{Id}``: one record (204).
- ``GET sobjects/{SObject}/{Id}``: one record.
- ``GET sobjects/{SObject}/deleted/?start=..&end=..``: Get Deleted, from a
  delete log kept with each deletion's date (``delete(id, at=...)``):
  ``{"deletedRecords": [{"id", "deletedDate"}], "earliestDateAvailable",
  "latestDateCovered"}``. Like Salesforce, seconds are ignored (both ends
  are taken to the minute; ``latestDateCovered`` is the end's minute and the
  next call starts there), ``start`` must precede ``end`` by more than a
  minute, and not before the log's ``deleted_log_days`` (15): otherwise 400
  ``INVALID_REPLICATION_DATE``.
- ``GET queryAll?q=``: the SOQL subset over live and deleted records
  (``IsDeleted`` true), as a Recycle Bin keeps them.
- Bulk API 2.0 ingest: ``POST jobs/ingest``, ``PUT jobs/ingest/{id}/batches``
  (CSV), ``PATCH jobs/ingest/{id}`` (``UploadComplete``/``Aborted``),
  ``GET jobs/ingest/{id}`` (state ``InProgress`` once, then ``JobComplete``),
  ``GET jobs/ingest/{id}/successfulResults|failedResults|unprocessedrecords``.
- Bulk API 2.0 query: ``POST jobs/query`` (``query``/``queryAll``),
  ``GET jobs/query/{id}`` (``UploadComplete``, ``InProgress`` at the first
  poll, then ``JobComplete`` or ``Failed``), ``GET jobs/query/{id}/results``
  (CSV sets of ``maxRecords``, ``Sforce-Locator``/``Sforce-NumberOfRecords``,
  rows in id order, date-times with ``Z``), ``PATCH`` (abort), ``DELETE``
  (see ``bulk_query``).
- ``GET limits``: ``DailyApiRequests`` Max/Remaining; every REST answer
  (errors too) carries ``Sforce-Limit-Info: api-usage=used/max`` with the
  same figures. Once ``api_used`` reaches ``daily_max`` (the org's rolling
  24 h allowance) every REST call, ``/limits`` included, answers 403
  ``[{"message": "TotalRequests Limit exceeded.", "errorCode":
  "REQUEST_LIMIT_EXCEEDED"}]`` and is not counted; lower ``api_used`` (calls
  aging out of the window) to let calls through again.

``POST /services/oauth2/token`` (grant_type=refresh_token) issues a new
session. A data request without a live session gets 401
``INVALID_SESSION_ID``. Knobs beyond the shared ones (latency, 429 bursts,
5xx rate): ``expire_session()``, ``lose_answers`` (the next N writes are
done but answered 503), ``renewal_refused`` (the token endpoint
answers ``invalid_grant``), ``renewed_sessions_dead`` (a renewed session is
refused again at once).

``GET sobjects/{SObject}/describe``: the org's fields with ``type``,
``createable``/``updateable``, ``calculated``, ``picklistValues``,
``restrictedPicklist``, ``externalId``/``unique`` (standard fields as
``FIELDS`` and ``PICKLISTS`` say; custom ones only once added with
``add_field``, as an admin does in Setup; ``add_project_fields`` adds the
``Martech_Id__c`` external ids this project upserts by).

Rules enforced per record, as Salesforce does: required fields on create
(Lead: LastName, Company; Contact: LastName; Account: Name; Opportunity:
Name, StageName, CloseDate; Campaign: Name; CampaignMember: CampaignId and a
LeadId or ContactId; OpportunityContactRole: OpportunityId and ContactId, a
Contact's id), a valid Email, fields the org has (an unknown one, custom
``__c`` included, fails the whole call: ``INVALID_FIELD`` "No such column";
an upsert by a field that is not an External ID: 404 ``NOT_FOUND``), a field
that is not createable/updateable (``INVALID_FIELD_FOR_INSERT_UPDATE``), a
value not in a restricted picklist (``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``:
Lead Status, Opportunity Stage, Task Status and Priority), and a converted
Lead refuses every update (``CANNOT_UPDATE_CONVERTED_LEAD``; ``convert_lead``
converts one as Salesforce's Convert does). A CampaignMember is one per person and campaign (a
second is ``DUPLICATE_VALUE`` "Already a campaign member."), its
``HasResponded`` (read-only) follows ``Status``; an Opportunity has at most
one primary OpportunityContactRole (setting one clears the other). Deleting
a record deletes the members and roles that point at it.
"""
from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import itertools
import json
import re
from urllib.parse import parse_qs

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from martech.crm.emulators.defaults import CREDENTIALS

from .base import EmulatorBase

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
COMMON = {"Id", "OwnerId", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted", "Name"}
FIELDS = {
    "Lead": {"FirstName", "LastName", "Email", "Title", "Company", "Country", "State", "PostalCode", "Phone",
             "Status", "LeadSource", "Industry", "Rating", "NumberOfEmployees", "AnnualRevenue", "Website",
             "IsConverted", "ConvertedContactId", "ConvertedAccountId"},
    "Contact": {"FirstName", "LastName", "Email", "Title", "MailingCountry", "MailingState", "MailingPostalCode",
                "Phone", "LeadSource", "AccountId", "Department"},
    "Account": {"Website", "Industry", "NumberOfEmployees", "AnnualRevenue", "BillingCountry", "Type"},
    "Opportunity": {"StageName", "CloseDate", "Amount", "AccountId", "CampaignId", "Probability", "IsClosed",
                    "IsWon", "CurrencyIsoCode"},
    "Campaign": {"Type", "Status", "StartDate", "EndDate", "BudgetedCost", "ActualCost", "IsActive"},
    "CampaignMember": {"CampaignId", "LeadId", "ContactId", "Status", "HasResponded", "FirstRespondedDate"},
    "OpportunityContactRole": {"OpportunityId", "ContactId", "Role", "IsPrimary"},
    "User": {"Email", "FirstName", "LastName", "IsActive", "Username"},
    # Task: IsClosed is read-only, derived from Status (CLOSED_TASK_STATUSES).
    "Task": {"WhoId", "WhatId", "Subject", "ActivityDate", "Status", "Priority", "Description", "IsClosed",
             "CompletedDateTime"},
}
# Picklists of the standard fields used here (this org's values: Salesforce's
# defaults, and a "Qualified" Lead Status the demo maps SQL to).
PICKLISTS = {
    ("Lead", "Status"): ["Open - Not Contacted", "Working - Contacted", "Qualified", "Closed - Converted",
                         "Closed - Not Converted"],
    ("Lead", "LeadSource"): ["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"],
    ("Lead", "Rating"): ["Hot", "Warm", "Cold"],
    ("Opportunity", "StageName"): ["Prospecting", "Qualification", "Needs Analysis", "Value Proposition",
                                   "Id. Decision Makers", "Perception Analysis", "Proposal/Price Quote",
                                   "Negotiation/Review", "Closed Won", "Closed Lost"],
    ("Task", "Status"): ["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"],
    ("Task", "Priority"): ["High", "Normal", "Low"],
    ("Campaign", "Status"): ["Planned", "In Progress", "Completed", "Aborted"],
    ("CampaignMember", "Status"): ["Sent", "Responded"],
}
# Salesforce enforces these (restricted picklists); the others take any value.
RESTRICTED = {("Lead", "Status"), ("Opportunity", "StageName"), ("Task", "Status"), ("Task", "Priority")}
# Set by Salesforce, never by a write (besides the READ_ONLY ones below).
SYSTEM_FIELDS = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"}
NOT_UPDATEABLE = {"Lead": {"IsConverted", "ConvertedContactId", "ConvertedAccountId", "Name"},
                  "Contact": {"Name"}, "User": {"Name"}, "CampaignMember": {"Name"},
                  "Opportunity": {"IsClosed", "IsWon"}}
NOT_CREATEABLE = {"Lead": {"ConvertedContactId", "ConvertedAccountId", "Name"}, "Contact": {"Name"},
                  "User": {"Name"}, "CampaignMember": {"Name"}, "Opportunity": {"IsClosed", "IsWon"}}
FIELD_TYPES = {"Email": "email", "Phone": "phone", "Website": "url", "Description": "textarea",
               "NumberOfEmployees": "int", "AnnualRevenue": "currency", "Amount": "currency",
               "BudgetedCost": "currency", "ActualCost": "currency", "Probability": "percent",
               "CloseDate": "date", "StartDate": "date", "EndDate": "date", "ActivityDate": "date",
               "FirstRespondedDate": "date", "CreatedDate": "datetime", "LastModifiedDate": "datetime",
               "SystemModstamp": "datetime", "CompletedDateTime": "datetime"}
CLOSED_TASK_STATUSES = {"Completed"}
# A member's HasResponded comes from its Status (the org's CampaignMemberStatus
# marked "Responded"); Salesforce computes it, a write is refused.
RESPONDED_MEMBER_STATUSES = {"Responded"}
READ_ONLY = {"Task": {"IsClosed", "CompletedDateTime"}, "CampaignMember": {"HasResponded", "FirstRespondedDate"}}
REQUIRED = {"Lead": ("LastName", "Company"), "Contact": ("LastName",), "Account": ("Name",),
            "Opportunity": ("Name", "StageName", "CloseDate"), "Campaign": ("Name",),
            "CampaignMember": ("CampaignId",), "OpportunityContactRole": ("OpportunityId", "ContactId")}
# Salesforce's key prefixes: the first three characters of an Id name its object.
PREFIX = {"Lead": "00Q", "Contact": "003", "Account": "001", "Opportunity": "006", "Campaign": "701",
          "CampaignMember": "00v", "User": "005", "Task": "00T", "OpportunityContactRole": "00K"}
REFERENCES = {"Lead": "LeadId", "Contact": "ContactId", "Campaign": "CampaignId", "Account": "AccountId",
              "Owner": "OwnerId", "Opportunity": "OpportunityId"}
COLLECTION_MAX = 200


def sf_time(at: dt.datetime) -> str:
    """Salesforce's JSON date-time form: 2026-11-30T03:00:00.000+0000."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


def parse_sf_time(value: str) -> dt.datetime:
    value = value.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", value):
        value = value[:-2] + ":" + value[-2:]
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"date-time without a zone: {value!r}")
    return parsed


class SoqlError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


SELECT = re.compile(
    r"^\s*SELECT\s+(?P<fields>\w+(?:\s*,\s*\w+)*)\s+FROM\s+(?P<obj>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+(?:\s+(?:ASC|DESC))?(?:\s*,\s*\w+(?:\s+(?:ASC|DESC))?)*))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
CONDITION = re.compile(r"^\s*(?P<field>\w+)\s*(?P<op>!=|>=|<=|=|>|<)\s*(?P<value>.+?)\s*$", re.DOTALL)
IN_CONDITION = re.compile(r"^\s*(?P<field>\w+)\s+IN\s*\((?P<values>.*)\)\s*$", re.IGNORECASE | re.DOTALL)
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})$")
STRING = re.compile(r"^'((?:[^'\\]|\\.)*)'$", re.DOTALL)


def _literal(raw: str):
    raw = raw.strip()
    if m := STRING.match(raw):
        return re.sub(r"\\(.)", r"\1", m.group(1))
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower() == "null":
        return None
    if DATETIME.match(raw):
        return parse_sf_time(raw)
    if re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return float(raw)
    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{raw}'")


def parse_soql(soql: str, custom: dict[str, set[str]] | None = None) -> dict:
    """``custom``: the org's custom fields per sObject (None: any ``__c`` field passes)."""
    m = SELECT.match(soql or "")
    if not m:
        raise SoqlError("MALFORMED_QUERY", f"\n{soql}\n^\nERROR at Row:1:Column:1\nunexpected token: query")
    obj = m.group("obj")
    if obj not in FIELDS:
        raise SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
    known = FIELDS[obj] | COMMON | ({"Martech_Id__c"} if custom is None else set(custom.get(obj, ())))

    def check(field: str) -> str:
        if field not in known and (custom is not None or not field.endswith("__c")):
            raise SoqlError("INVALID_FIELD", f"No such column '{field}' on entity '{obj}'.")
        return field

    fields = [check(f.strip()) for f in m.group("fields").split(",")]
    conditions = []
    if m.group("where"):
        for part in re.split(r"\s+AND\s+", m.group("where"), flags=re.IGNORECASE):
            if cm := IN_CONDITION.match(part):
                values = [_literal(v) for v in re.split(r"\s*,\s*", cm.group("values").strip()) if v]
                conditions.append((check(cm.group("field")), "IN", values))
            elif cm := CONDITION.match(part):
                conditions.append((check(cm.group("field")), cm.group("op"), _literal(cm.group("value"))))
            else:
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{part.strip()}'")
    order = []
    if m.group("order"):
        for part in m.group("order").split(","):
            bits = part.split()
            order.append((check(bits[0]), len(bits) > 1 and bits[1].upper() == "DESC"))
    return {"fields": fields, "object": obj, "where": conditions, "order": order,
            "limit": int(m.group("limit")) if m.group("limit") else None}


def _matches(record: dict, conditions: list) -> bool:
    for field, op, value in conditions:
        have = record.get(field)
        if isinstance(value, dt.datetime):
            if not have:
                return False
            have = parse_sf_time(have)
        elif isinstance(value, float) and have is not None:
            have = float(have)
        if op == "IN":
            if have not in value:
                return False
        elif op == "=" and have != value or op == "!=" and have == value:
            return False
        elif op in ("<", "<=", ">", ">="):
            if have is None or value is None:
                return False
            if not {"<": have < value, "<=": have <= value, ">": have > value, ">=": have >= value}[op]:
                return False
    return True


class SalesforceEmulator(EmulatorBase):
    def __init__(self, *, client_id: str = CREDENTIALS["SALESFORCE_CLIENT_ID"],
                 client_secret: str = CREDENTIALS["SALESFORCE_CLIENT_SECRET"],
                 refresh_token: str = CREDENTIALS["SALESFORCE_REFRESH_TOKEN"],
                 session_id: str = CREDENTIALS["SALESFORCE_ACCESS_TOKEN"],
                 daily_max: int = 100_000, **kwargs):
        super().__init__(**kwargs)
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.sessions: set[str] = {session_id}
        self.renewal_refused = False
        self.renewed_sessions_dead = False
        self.renewals = 0
        self.lose_answers = 0
        self.collection_sizes: list[int] = []  # records per Collections call, in order
        self.daily_max, self.api_used = daily_max, 0
        self.limit_refused = 0  # calls answered 403 REQUEST_LIMIT_EXCEEDED
        self.query_page_size = 2000
        self.closed_task_statuses = set(CLOSED_TASK_STATUSES)  # an org may add its own closed statuses
        self.records: dict[str, dict[str, dict]] = {name: {} for name in FIELDS}
        self.by_external: dict[tuple[str, str], str] = {}  # (sobject, Martech_Id__c) -> Id
        self.jobs: dict[str, dict] = {}
        self.query_jobs: dict[str, dict] = {}  # Bulk API 2.0 query jobs
        self.bulk_query_page_size = 50_000  # a result set's size when the client gives no maxRecords
        self.fail_next_query_job = False  # the next query job ends Failed (with errorMessage)
        self.cursors: dict[str, list[dict]] = {}
        # The delete log: sObject -> [(Id, deleted at)], and the deleted records (queryAll).
        self.deleted_log: dict[str, list[tuple[str, dt.datetime]]] = {name: [] for name in FIELDS}
        self.recycled: dict[str, dict[str, dict]] = {name: {} for name in FIELDS}
        self.deleted_log_days = 15
        self._ids = itertools.count(1)
        self._clock = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
        # The org's custom fields: sObject -> name -> describe entry (add_field).
        self.custom_fields: dict[str, dict[str, dict]] = {name: {} for name in FIELDS}
        self.picklists = {key: list(values) for key, values in PICKLISTS.items()}

    def add_field(self, sobject: str, name: str, *, type_: str = "string", length: int = 64,
                  external_id: bool = False, unique: bool = False, label: str = "") -> dict:
        """A custom field, as Setup > Object Manager > Fields & Relationships > New makes it."""
        if not name.endswith("__c"):
            raise ValueError("a custom field's API name ends with __c")
        entry = self._field(sobject, name, type_=type_, custom=True, length=length, external_id=external_id,
                            unique=unique, label=label)
        self.custom_fields[sobject][name] = entry
        return entry

    def add_project_fields(self) -> None:
        """Martech_Id__c (Text(64), External ID, Unique) on every sObject this
        project upserts by it, as the connection check asks an admin to."""
        for sobject in ("Lead", "Contact", "Account", "Opportunity", "Campaign", "Task", "CampaignMember"):
            self.add_field(sobject, "Martech_Id__c", external_id=True, unique=True, label="Martech Id")

    def known_fields(self, sobject: str) -> set[str]:
        return FIELDS[sobject] | COMMON | set(self.custom_fields[sobject])

    def _field(self, sobject: str, name: str, *, type_: str | None = None, custom: bool = False, length: int = 255,
               external_id: bool = False, unique: bool = False, label: str = "") -> dict:
        picklist = self.picklists.get((sobject, name))
        if type_ is None:
            type_ = ("picklist" if picklist is not None else "id" if name == "Id"
                     else "reference" if name.endswith("Id") and name != "Id"
                     else "boolean" if name.startswith(("Is", "Has")) else FIELD_TYPES.get(name, "string"))
        system = name in SYSTEM_FIELDS or name in READ_ONLY.get(sobject, ())
        return {"name": name, "label": label or name, "type": type_, "length": length if type_ == "string" else 0,
                "custom": custom, "calculated": False, "nillable": True, "externalId": external_id,
                "unique": unique, "idLookup": name == "Id" or external_id,
                "createable": not system and name not in NOT_CREATEABLE.get(sobject, ()),
                "updateable": not system and name not in NOT_UPDATEABLE.get(sobject, ()),
                "picklistValues": [{"value": v, "label": v, "active": True, "defaultValue": n == 0, "validFor": None}
                                   for n, v in enumerate(picklist or [])],
                "restrictedPicklist": (sobject, name) in RESTRICTED, "referenceTo": []}

    def describe(self, sobject: str) -> dict:
        fields = [self._field(sobject, name) for name in sorted(FIELDS[sobject] | COMMON)]
        fields += list(self.custom_fields[sobject].values())
        return {"name": sobject, "label": sobject, "custom": False, "keyPrefix": PREFIX.get(sobject),
                "createable": True, "updateable": True, "queryable": True, "fields": fields}

    def convert_lead(self, lead_id: str) -> dict:
        """Convert a Lead as Salesforce's Convert does: a Contact (and an
        Account from its Company) made from it, the Lead marked converted,
        pointing at them, and no longer updateable."""
        lead = self.records["Lead"][lead_id]
        account = self.put("Account", {"Name": lead.get("Company") or lead.get("LastName")})
        contact = self.put("Contact", {"FirstName": lead.get("FirstName"), "LastName": lead.get("LastName"),
                                       "Email": lead.get("Email"), "Title": lead.get("Title"),
                                       "MailingCountry": lead.get("Country"), "AccountId": account["Id"]})
        self.put("Lead", {"Id": lead_id, "IsConverted": True, "ConvertedContactId": contact["Id"],
                          "ConvertedAccountId": account["Id"], "Status": "Closed - Converted"})
        return contact

    # --- knobs and state helpers (tests play "a salesperson edited it") ---
    def expire_session(self) -> None:
        self.sessions.clear()

    def write_calls(self) -> int:
        return sum(n for (method, path), n in self.calls.items()
                   if method != "GET" and path != "/services/oauth2/token")

    def _stamp(self, at: dt.datetime | None = None) -> str:
        """SystemModstamp / LastModifiedDate as Salesforce keeps them: whole
        seconds (the milliseconds are always 000), so every record of a mass
        update within one second shares its stamp. The emulator's clock never
        goes back (``_clock``); ``at`` sets a stamp directly (tests)."""
        now = at or dt.datetime.now(dt.timezone.utc)
        if at is None:
            now = max(now, self._clock)
            self._clock = now
        return sf_time(now.replace(microsecond=0))

    def new_id(self, sobject: str) -> str:
        return f"{PREFIX[sobject]}{next(self._ids):015d}"

    def put(self, sobject: str, fields: dict, *, at: dt.datetime | None = None) -> dict:
        """Create or update a record as if edited in Salesforce (by Id, else by Martech_Id__c)."""
        record_id = fields.get("Id") or self.by_external.get((sobject, str(fields.get("Martech_Id__c") or "")))
        stamp = self._stamp(at)
        if not record_id or record_id not in self.records[sobject]:
            record_id = record_id or self.new_id(sobject)
            base = {"Id": record_id, "CreatedDate": stamp, "IsDeleted": False}
            if sobject == "Lead":
                base.update(IsConverted=False, Status="Open - Not Contacted")
            if sobject == "Task":
                base.update(Status="Not Started", Priority="Normal")
            self.records[sobject][record_id] = base
        record = self.records[sobject][record_id]
        record.update({k: v for k, v in fields.items() if k != "Id"})
        record["LastModifiedDate"] = record["SystemModstamp"] = stamp
        if sobject == "Task":
            closed = record.get("Status") in self.closed_task_statuses
            if closed and not record.get("IsClosed"):
                record["CompletedDateTime"] = stamp
            record["IsClosed"] = closed
        if sobject == "CampaignMember":
            record.setdefault("Status", "Sent")
            responded = record["Status"] in RESPONDED_MEMBER_STATUSES
            if responded and not record.get("FirstRespondedDate"):
                record["FirstRespondedDate"] = stamp[:10]
            record["HasResponded"] = responded
        if sobject == "OpportunityContactRole":
            record["IsPrimary"] = bool(record.get("IsPrimary"))
            if record["IsPrimary"]:
                # One primary per Opportunity: Salesforce clears the previous one (and stamps it).
                for other in self.records[sobject].values():
                    if other is not record and other.get("OpportunityId") == record.get("OpportunityId") \
                            and other.get("IsPrimary"):
                        other["IsPrimary"] = False
                        other["LastModifiedDate"] = other["SystemModstamp"] = self._stamp()
        if record.get("Martech_Id__c"):
            self.by_external[(sobject, str(record["Martech_Id__c"]))] = record_id
        return record

    def add_user(self, *, user_id: str, email: str, first_name: str = "", last_name: str = "",
                 active: bool = True) -> dict:
        return self.put("User", {"Id": user_id, "Email": email, "FirstName": first_name, "LastName": last_name,
                                 "IsActive": active, "Username": email})

    def find(self, sobject: str, **where) -> list[dict]:
        return [r for r in self.records[sobject].values() if all(r.get(k) == v for k, v in where.items())]

    def delete(self, record_id: str, *, at: dt.datetime | None = None) -> bool:
        """Delete a record (its Id names its sObject); False when there is none.
        The deletion is logged at ``at`` (now) for Get Deleted, the record kept for queryAll."""
        sobject = next((name for name, prefix in PREFIX.items() if record_id.startswith(prefix)), None)
        record = self.records[sobject].pop(record_id, None) if sobject else None
        if record is None:
            return False
        when = at or dt.datetime.now(dt.timezone.utc)
        self.deleted_log[sobject].append((record_id, when))
        self.recycled[sobject][record_id] = {**record, "IsDeleted": True, "SystemModstamp": sf_time(when.replace(microsecond=0))}
        if record.get("Martech_Id__c"):
            self.by_external.pop((sobject, str(record["Martech_Id__c"])), None)
        # Like Salesforce: a person's campaign memberships and contact roles, and an
        # Opportunity's or a Campaign's, go with it.
        for child, lookups in (("CampaignMember", ("LeadId", "ContactId", "CampaignId")),
                               ("OpportunityContactRole", ("ContactId", "OpportunityId"))):
            for child_id in [r["Id"] for r in self.records[child].values()
                             if any(r.get(f) == record_id for f in lookups)]:
                self.delete(child_id, at=when)
        return True

    # --- HTTP ---
    def rate_limited(self) -> Response:
        return self.json([{"message": "Rate limit exceeded, retry later (emulated).",
                           "errorCode": "REQUEST_LIMIT_EXCEEDED"}], status=429)

    def unavailable(self) -> Response:
        return self.json([{"message": "Service unavailable (emulated).", "errorCode": "SERVER_UNAVAILABLE"}],
                         status=503)

    @staticmethod
    def fault(status: int, code: str, message: str) -> Response:
        return EmulatorBase.json([{"message": message, "errorCode": code}], status=status)

    def dispatch(self, request: Request) -> Response:
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self.token(request)
        m = re.match(r"^/services/data/v(\d+\.\d)/(.*)$", request.path)
        if not m:
            return self.fault(404, "NOT_FOUND", "The requested resource does not exist")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.sessions:
            return self.fault(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if self.api_used >= self.daily_max:
            # The org's allowance (a rolling 24 h one) is spent: every REST call
            # is refused, /limits included, until calls age out of the window.
            self.limit_refused += 1
            return self.fault(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.api_used += 1
        response = self.route(request, m.group(1), m.group(2).rstrip("/"))
        if self.lose_answers > 0 and request.method != "GET":
            # The write happened; the caller never hears about it (a lost answer).
            self.lose_answers -= 1
            return self.unavailable()
        return response

    def decorate(self, request: Request, response: Response) -> None:
        """Every REST answer (errors too) carries the org's use of its allowance."""
        if request.path.startswith("/services/data/"):
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.daily_max}"

    def route(self, request: Request, version: str, path: str) -> Response:
        method = request.method
        parts = path.split("/")
        if method == "GET" and path == "limits":
            return self.json({"DailyApiRequests": {"Max": self.daily_max,
                                                   "Remaining": max(self.daily_max - self.api_used, 0)}})
        if method == "GET" and path == "query":
            return self.query(request.args.get("q", ""), version)
        if method == "GET" and path == "queryAll":
            return self.query(request.args.get("q", ""), version, include_deleted=True)
        if method == "GET" and len(parts) == 3 and parts[0] == "sobjects" and parts[2] == "deleted":
            return self.get_deleted(parts[1], request.args.get("start", ""), request.args.get("end", ""))
        if method == "GET" and len(parts) == 2 and parts[0] == "query":
            return self.query_more(parts[1], version)
        if method == "GET" and len(parts) == 3 and parts[0] == "sobjects" and parts[2] == "describe":
            if parts[1] not in FIELDS:
                return self.fault(404, "NOT_FOUND", f"The requested resource does not exist: {parts[1]}")
            return self.json(self.describe(parts[1]))
        if method == "GET" and len(parts) == 3 and parts[0] == "sobjects":
            return self.get_one(parts[1], parts[2], request.args.get("fields"), version)
        if method == "DELETE" and len(parts) == 3 and parts[0] == "sobjects":
            if parts[1] not in FIELDS or parts[2] not in self.records[parts[1]]:
                return self.fault(404, "ENTITY_IS_DELETED", "entity is deleted")
            self.delete(parts[2])
            return Response(status=204)
        if path == "composite/sobjects" and method in ("POST", "PATCH"):
            return self.collection(request, version, None)
        if path == "composite/sobjects" and method == "DELETE":
            return self.collection_delete(request)
        if len(parts) == 4 and parts[:2] == ["composite", "sobjects"] and method == "PATCH":
            return self.collection(request, version, (parts[2], parts[3]))
        if method == "POST" and path == "composite":
            return self.composite(request, version)
        if parts[:2] == ["jobs", "ingest"]:
            return self.bulk(request, version, parts[2:])
        if parts[:2] == ["jobs", "query"]:
            return self.bulk_query(request, version, parts[2:])
        return self.fault(404, "NOT_FOUND", f"The requested resource does not exist: {method} {path}")

    def composite(self, request: Request, version: str) -> Response:
        """POST composite: up to 25 subrequests in one call, which counts
        as one API request (Salesforce: "The entire series of requests
        counts as a single call toward your API limits"). The emulator takes
        GET subrequests (queries, records); each answers in
        ``compositeResponse`` with its own status and body."""
        body = request.get_json(silent=True) or {}
        subs = body.get("compositeRequest")
        if not isinstance(subs, list) or not subs:
            return self.fault(400, "JSON_PARSER_ERROR", "compositeRequest is required")
        if len(subs) > 25:
            return self.fault(400, "INVALID_BATCH_REQUEST", "A composite request can have at most 25 subrequests")
        out = []
        for sub in subs:
            url = str(sub.get("url") or "")
            m = re.match(r"^/services/data/v(\d+\.\d)/([^?]*)(?:\?(.*))?$", url)
            if sub.get("method") != "GET" or not m:
                answer = self.fault(400, "INVALID_BATCH_REQUEST", f"the emulator runs GET subrequests only: {url}")
            else:
                inner = EnvironBuilder(path=f"/services/data/v{m.group(1)}/{m.group(2)}", method="GET",
                                       query_string=m.group(3) or "").get_request()
                answer = self.route(inner, m.group(1), m.group(2).rstrip("/"))
            data = answer.get_data(as_text=True)
            out.append({"body": json.loads(data) if data else None, "httpHeaders": {},
                        "httpStatusCode": answer.status_code, "referenceId": sub.get("referenceId")})
        return self.json({"compositeResponse": out})

    def token(self, request: Request) -> Response:
        form = parse_qs(request.get_data(as_text=True)) if not request.form else request.form.to_dict(flat=False)
        get = lambda key: (form.get(key) or [""])[0]  # noqa: E731
        if get("grant_type") != "refresh_token":
            return self.json({"error": "unsupported_grant_type", "error_description": "grant type not supported"},
                             status=400)
        if (self.renewal_refused or get("refresh_token") != self.refresh_token or get("client_id") != self.client_id
                or get("client_secret") != self.client_secret):
            return self.json({"error": "invalid_grant", "error_description": "expired access/refresh token"},
                             status=400)
        self.renewals += 1
        session = f"emulator-session-{self.renewals}"
        if not self.renewed_sessions_dead:
            self.sessions.add(session)
        host = request.host_url.rstrip("/")
        return self.json({"access_token": session, "instance_url": host, "id": f"{host}/id/00D/005",
                          "token_type": "Bearer", "issued_at": str(int(dt.datetime.now().timestamp() * 1000)),
                          "signature": "emulated", "scope": "api refresh_token"})

    # --- records ---
    def _public(self, sobject: str, record: dict, version: str, fields: list[str] | None = None) -> dict:
        out = {"attributes": {"type": sobject, "url": f"/services/data/v{version}/sobjects/{sobject}/{record['Id']}"}}
        for key in fields or sorted(record):
            out[key] = record.get(key)
        return out

    def get_one(self, sobject: str, record_id: str, fields: str | None, version: str) -> Response:
        if sobject not in FIELDS:
            return self.fault(404, "NOT_FOUND", f"The requested resource does not exist: {sobject}")
        record = self.records[sobject].get(record_id)
        if record is None:
            return self.fault(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = [f.strip() for f in fields.split(",")] if fields else None
        return self.json(self._public(sobject, record, version, wanted))

    def get_deleted(self, sobject: str, start: str, end: str) -> Response:
        """sObject Get Deleted: the delete log between start and end, to the minute."""
        if sobject not in FIELDS:
            return self.fault(404, "NOT_FOUND", f"The requested resource does not exist: {sobject}")
        try:
            start_at, end_at = (parse_sf_time(v).replace(second=0, microsecond=0) for v in (start, end))
        except ValueError:
            return self.fault(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times with a zone")
        now = dt.datetime.now(dt.timezone.utc)
        earliest = (now - dt.timedelta(days=self.deleted_log_days)).replace(second=0, microsecond=0)
        if end_at - start_at <= dt.timedelta(minutes=1):
            return self.fault(400, "INVALID_REPLICATION_DATE", "startDate must chronologically precede endDate "
                                                               "by more than one minute")
        if start_at < earliest:
            return self.fault(400, "INVALID_REPLICATION_DATE", "startDate before the earliest date available "
                                                               f"({sf_time(earliest)})")
        covered = min(end_at, now.replace(second=0, microsecond=0))
        rows = [{"id": record_id, "deletedDate": sf_time(at)} for record_id, at in self.deleted_log[sobject]
                if start_at <= at < covered]
        return self.json({"deletedRecords": rows, "earliestDateAvailable": sf_time(earliest),
                          "latestDateCovered": sf_time(covered)})

    def query(self, soql: str, version: str, *, include_deleted: bool = False) -> Response:
        try:
            q = parse_soql(soql, {name: set(fields) for name, fields in self.custom_fields.items()})
        except SoqlError as exc:
            return self.fault(400, exc.code, str(exc))
        source = list(self.records[q["object"]].values())
        if include_deleted:
            source += list(self.recycled[q["object"]].values())
        rows = [r for r in source if _matches(r, q["where"])]
        for field, desc in reversed(q["order"]):
            rows.sort(key=lambda r: (r.get(field) is None, r.get(field) or ""), reverse=desc)
        if q["limit"] is not None:
            rows = rows[:q["limit"]]
        records = [self._public(q["object"], r, version, q["fields"]) for r in rows]
        return self._page(records, 0, version)

    def _page(self, records: list[dict], start: int, version: str, locator: str | None = None) -> Response:
        end = start + self.query_page_size
        out = {"totalSize": len(records), "done": end >= len(records), "records": records[start:end]}
        if end < len(records):
            locator = locator or f"01g{next(self._ids):015d}"
            self.cursors[locator] = records
            out["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        return self.json(out)

    def query_more(self, token: str, version: str) -> Response:
        locator, _, start = token.rpartition("-")
        if locator not in self.cursors or not start.isdigit():
            return self.fault(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(self.cursors[locator], int(start), version, locator)

    def _check_fields(self, sobject: str, record: dict) -> str | None:
        """A field the org does not have fails the whole request, as
        Salesforce's JSON reader does."""
        known = self.known_fields(sobject)
        for key in record:
            if key in ("attributes", "id") or key in REFERENCES and isinstance(record[key], dict):
                continue
            if key not in known:
                return f"No such column '{key}' on sobject of type {sobject}"
        return None

    def _field_errors(self, sobject: str, fields: dict, existing: dict | None) -> list[dict]:
        """Per record: fields this write may not set, restricted picklist
        values the org lacks, and a converted Lead."""
        errors = []
        if sobject == "Lead" and existing is not None and existing.get("IsConverted"):
            return [{"statusCode": "CANNOT_UPDATE_CONVERTED_LEAD", "fields": [],
                     "message": "cannot reference converted lead"}]
        flag = "createable" if existing is None else "updateable"
        locked = [k for k in fields if k != "Id" and not self._definition(sobject, k).get(flag, True)]
        if locked:
            errors.append({"statusCode": "INVALID_FIELD_FOR_INSERT_UPDATE", "fields": locked,
                           "message": f"Unable to create/update fields: {', '.join(locked)}. Please check the "
                                      "security settings of this field and verify that it is read/write for your "
                                      "profile or permission set."})
        for key, value in fields.items():
            if (sobject, key) in RESTRICTED and value not in (None, "") \
                    and value not in self.picklists.get((sobject, key), []):
                errors.append({"statusCode": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "fields": [key],
                               "message": f"{key}: bad value for restricted picklist field: {value}"})
        return errors

    def _definition(self, sobject: str, name: str) -> dict:
        return self.custom_fields[sobject].get(name) or self._field(sobject, name)

    def _resolve(self, sobject: str, record: dict) -> tuple[dict, list[dict]]:
        """Relationship references by external id -> Id fields; returns (fields, errors)."""
        out, errors = {}, []
        for key, value in record.items():
            if key == "attributes":
                continue
            if key == "id":  # field names are case-insensitive; Collections examples use "id"
                key = "Id"
            if key in REFERENCES and isinstance(value, dict):
                target = value.get("attributes", {}).get("type") or key
                ((ext_field, ext_value),) = [(k, v) for k, v in value.items() if k != "attributes"][:1] or [("", "")]
                found = self.by_external.get((target, str(ext_value))) if ext_field == "Martech_Id__c" else None
                if found is None:
                    errors.append({"statusCode": "INVALID_FIELD", "fields": [key],
                                   "message": f"Foreign key external ID: {ext_value} not found for field "
                                              f"{ext_field} in entity {target}"})
                out[REFERENCES[key]] = found
            else:
                out[key] = value
        return out, errors

    def _validate(self, sobject: str, fields: dict, existing: dict | None) -> list[dict]:
        errors = []
        email = fields.get("Email")
        if email not in (None, "") and not EMAIL.match(str(email)):
            errors.append({"statusCode": "INVALID_EMAIL_ADDRESS", "fields": ["Email"],
                           "message": f"Email: invalid email address: {email}"})
        for lookup, target in (("LeadId", "Lead"), ("ContactId", "Contact"), ("CampaignId", "Campaign"),
                               ("AccountId", "Account"), ("OpportunityId", "Opportunity")):
            value = fields.get(lookup)
            if value and value not in self.records[target]:
                errors.append({"statusCode": "INVALID_CROSS_REFERENCE_KEY", "fields": [lookup],
                               "message": "invalid cross reference id"})
        who = fields.get("WhoId")
        if who and who not in self.records["Lead"] and who not in self.records["Contact"]:
            # A Task's WhoId names a Lead or a Contact.
            errors.append({"statusCode": "INVALID_CROSS_REFERENCE_KEY", "fields": ["WhoId"],
                           "message": "Name ID: id value of incorrect type: " + str(who)})
        merged = {**(existing or {}), **fields}
        missing = [f for f in REQUIRED.get(sobject, ()) if merged.get(f) in (None, "")]
        if sobject == "CampaignMember" and not (merged.get("LeadId") or merged.get("ContactId")):
            missing.append("LeadId")
        if sobject == "CampaignMember" and existing is None and not errors:
            # One member per person per campaign: Salesforce refuses a second one.
            person = ("LeadId", merged["LeadId"]) if merged.get("LeadId") else ("ContactId", merged.get("ContactId"))
            if person[1] and any(m.get("CampaignId") == merged.get("CampaignId") and m.get(person[0]) == person[1]
                                 for m in self.records["CampaignMember"].values()):
                errors.append({"statusCode": "DUPLICATE_VALUE", "fields": [],
                               "message": "Already a campaign member."})
        if missing:
            errors.append({"statusCode": "REQUIRED_FIELD_MISSING", "fields": missing,
                           "message": f"Required fields are missing: [{', '.join(missing)}]"})
        return errors

    def _write_one(self, sobject: str, record: dict, mode: str, ext_field: str | None) -> dict:
        fields, errors = self._resolve(sobject, record)
        existing = None
        if mode == "update":
            existing = self.records[sobject].get(fields.get("Id") or "")
            if existing is None:
                errors.append({"statusCode": "ENTITY_IS_DELETED", "fields": [],
                               "message": "entity is deleted"})
        elif mode == "upsert":
            key = str(fields.get(ext_field) or "")
            if not key:
                errors.append({"statusCode": "MISSING_ARGUMENT", "fields": [ext_field],
                               "message": f"{ext_field} not specified"})
            existing = self.records[sobject].get(self.by_external.get((sobject, key), ""))
        errors += self._validate(sobject, fields, existing)
        if not errors:
            errors = self._field_errors(sobject, fields, existing)
        if errors:
            return {"id": None, "success": False, "errors": errors}
        if existing is not None:
            fields["Id"] = existing["Id"]
        written = self.put(sobject, fields)
        result = {"id": written["Id"], "success": True, "errors": []}
        if mode == "upsert":
            result["created"] = existing is None
        return result

    def collection(self, request: Request, version: str, upsert: tuple[str, str] | None) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return self.fault(400, "JSON_PARSER_ERROR", "The request body must be {allOrNone, records: [...]}")
        records = body["records"]
        self.collection_sizes.append(len(records))
        if len(records) > COLLECTION_MAX:
            return self.fault(400, "EXCEEDED_ID_LIMIT",
                              f"record limit reached. cannot submit more than {COLLECTION_MAX} records into this call")
        if body.get("allOrNone"):
            return self.fault(400, "INVALID_FIELD", "allOrNone true is not emulated")
        mode = "upsert" if upsert else ("create" if request.method == "POST" else "update")
        if upsert and not (upsert[0] in FIELDS and self._definition(upsert[0], upsert[1]).get("externalId")):
            return self.fault(404, "NOT_FOUND", "Provided external ID field does not exist or is not accessible: "
                                                f"{upsert[1]}")
        results = []
        for record in records:
            sobject = (record.get("attributes") or {}).get("type")
            if upsert and sobject != upsert[0]:
                return self.fault(400, "INVALID_TYPE", f"record type {sobject!r} does not match {upsert[0]}")
            if sobject not in FIELDS:
                return self.fault(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
            if problem := self._check_fields(sobject, record):
                return self.fault(400, "INVALID_FIELD", problem)
            results.append(self._write_one(sobject, record, mode, upsert[1] if upsert else None))
        return self.json(results)

    def collection_delete(self, request: Request) -> Response:
        """``DELETE composite/sobjects?ids=a,b&allOrNone=false``: per-id results, in order."""
        ids = [i for i in (request.args.get("ids") or "").split(",") if i]
        if not ids:
            return self.fault(400, "MISSING_ARGUMENT", "ids parameter not specified")
        if len(ids) > COLLECTION_MAX:
            return self.fault(400, "EXCEEDED_ID_LIMIT",
                              f"record limit reached. cannot submit more than {COLLECTION_MAX} records into this call")
        if (request.args.get("allOrNone") or "false").lower() == "true":
            return self.fault(400, "INVALID_FIELD", "allOrNone true is not emulated")
        self.collection_sizes.append(len(ids))
        results = []
        for record_id in ids:
            if self.delete(record_id):
                results.append({"id": record_id, "success": True, "errors": []})
            else:
                results.append({"id": record_id, "success": False, "errors": [
                    {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]})
        return self.json(results)

    # --- Bulk API 2.0 ingest ---
    def _job_info(self, job: dict) -> dict:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def bulk(self, request: Request, version: str, rest: list[str]) -> Response:
        method = request.method
        if not rest and method == "POST":
            body = request.get_json(silent=True) or {}
            sobject, operation = body.get("object"), body.get("operation")
            if sobject not in FIELDS or operation not in ("insert", "upsert", "update"):
                return self.fault(400, "INVALIDJOB", f"InvalidJob : object {sobject!r} / operation {operation!r}")
            if operation == "upsert" and not body.get("externalIdFieldName"):
                return self.fault(400, "INVALIDJOB", "InvalidJob : External ID was blank for upsert")
            if operation == "upsert" and not self._definition(sobject, body["externalIdFieldName"]).get("externalId"):
                return self.fault(400, "INVALIDJOB", f"InvalidJob : Field name provided, "
                                                     f"{body['externalIdFieldName']} does not match an External ID, "
                                                     f"Salesforce Id, or indexed field for {sobject}")
            job_id = f"750{next(self._ids):015d}"
            stamp = self._stamp()
            self.jobs[job_id] = {
                "id": job_id, "operation": operation, "object": sobject, "createdById": "005000000000000001",
                "createdDate": stamp, "systemModstamp": stamp, "state": "Open",
                "externalIdFieldName": body.get("externalIdFieldName"), "concurrencyMode": "Parallel",
                "contentType": "CSV", "apiVersion": float(version), "jobType": "V2Ingest",
                "contentUrl": f"services/data/v{version}/jobs/ingest/{job_id}/batches",
                "lineEnding": body.get("lineEnding", "LF"), "columnDelimiter": body.get("columnDelimiter", "COMMA"),
                "_csv": "", "_ok": [], "_failed": [], "_polled": 0,
            }
            return self.json(self._job_info(self.jobs[job_id]))
        job = self.jobs.get(rest[0]) if rest else None
        if job is None:
            return self.fault(404, "NOT_FOUND", "The requested resource does not exist")
        if len(rest) == 2 and rest[1] == "batches" and method == "PUT":
            if job["state"] != "Open":
                return self.fault(400, "INVALIDJOB", f"Job state {job['state']} does not accept data")
            job["_csv"] += request.get_data(as_text=True)
            return Response(status=201)
        if len(rest) == 1 and method == "PATCH":
            state = (request.get_json(silent=True) or {}).get("state")
            if state == "UploadComplete" and job["state"] == "Open":
                job["state"] = "UploadComplete"
                self._process(job)
            elif state == "Aborted" and job["state"] in ("Open", "UploadComplete", "InProgress"):
                job["state"] = "Aborted"
            else:
                return self.fault(400, "INVALIDJOB", f"cannot move job from {job['state']} to {state}")
            return self.json(self._job_info(job))
        if len(rest) == 1 and method == "GET":
            # One poll sees InProgress, the next JobComplete: the client's wait loop is exercised.
            if job["state"] in ("UploadComplete", "InProgress"):
                job["_polled"] += 1
                job["state"] = "InProgress" if job["_polled"] == 1 else "JobComplete"
            info = self._job_info(job)
            if job["state"] == "JobComplete":
                info.update(numberRecordsProcessed=len(job["_ok"]) + len(job["_failed"]),
                            numberRecordsFailed=len(job["_failed"]), retries=0, totalProcessingTime=1)
            return self.json(info)
        if len(rest) == 2 and method == "GET" and rest[1] in ("successfulResults", "failedResults",
                                                               "unprocessedrecords"):
            return Response(self._results_csv(job, rest[1]), content_type="text/csv")
        return self.fault(404, "NOT_FOUND", "The requested resource does not exist")

    def _process(self, job: dict) -> None:
        reader = csv.DictReader(io.StringIO(job["_csv"]))
        job["_header"] = reader.fieldnames or []
        mode = job["operation"] if job["operation"] != "insert" else "create"
        for row in reader:
            # Bulk 2.0: an empty cell leaves the field as it is (#N/A would clear it).
            record = {k: v for k, v in row.items() if v != ""}
            record["attributes"] = {"type": job["object"]}
            problem = self._check_fields(job["object"], record)
            result = ({"id": None, "success": False,
                       "errors": [{"statusCode": "INVALID_FIELD", "message": problem, "fields": []}]}
                      if problem else self._write_one(job["object"], record, mode, job["externalIdFieldName"]))
            if result["success"]:
                job["_ok"].append((result["id"], "true" if result.get("created") else "false", row))
            else:
                error = "; ".join(f"{e['statusCode']}:{e['message']}:{','.join(e['fields'])} --"
                                  for e in result["errors"])
                job["_failed"].append(("", error, row))

    # --- Bulk API 2.0 query ---
    def bulk_query(self, request: Request, version: str, rest: list[str]) -> Response:
        """Bulk API 2.0 query jobs, with the documented parts a client must
        get right: the job starts ``UploadComplete``, is ``InProgress`` at the
        first poll and ``JobComplete`` (or ``Failed`` with ``errorMessage``:
        ``fail_next_query_job``) at the next; results only of a complete job
        (else 400), with the API version that made it (else 409); CSV sets of
        at most ``maxRecords`` (default ``bulk_query_page_size``), the next
        one named by the ``Sforce-Locator`` header ("null" after the last)
        and each set's size in ``Sforce-NumberOfRecords``; a locator can be
        read again as long as the job exists (a killed reader resumes). The
        rows come in record-id (chunk) order, not by any field: ORDER BY,
        LIMIT, OFFSET, GROUP BY and COUNT() are refused (the guide lists
        them as unsupported: they defeat PK chunking). Date-times are
        ``2026-11-30T03:00:00.000Z`` (REST query says ``+0000``), whole
        seconds as stored; null is an empty cell. The job's rows are the
        records matching when it was made."""
        method = request.method
        if not rest and method == "POST":
            body = request.get_json(silent=True) or {}
            operation, soql = body.get("operation"), str(body.get("query") or "")
            if operation not in ("query", "queryAll"):
                return self.fault(400, "INVALIDJOB", f"InvalidJob : operation {operation!r} is not a query operation")
            if re.search(r"\b(ORDER\s+BY|LIMIT|OFFSET|GROUP\s+BY|TYPEOF)\b|COUNT\(", soql, re.IGNORECASE):
                return self.fault(400, "INVALIDJOB", "InvalidJob : Bulk API 2.0 query does not support ORDER BY, "
                                                     "LIMIT, OFFSET, GROUP BY, TYPEOF or aggregate functions")
            try:
                q = parse_soql(soql, {name: set(fields) for name, fields in self.custom_fields.items()})
            except SoqlError as exc:
                return self.fault(400, exc.code, str(exc))
            source = list(self.records[q["object"]].values())
            if operation == "queryAll":
                source += list(self.recycled[q["object"]].values())
            rows = sorted((r for r in source if _matches(r, q["where"])), key=lambda r: r["Id"])
            job_id = f"750{next(self._ids):015d}"
            stamp = self._stamp()
            self.query_jobs[job_id] = {
                "id": job_id, "operation": operation, "object": q["object"], "createdById": "005000000000000001",
                "createdDate": stamp, "systemModstamp": stamp, "state": "UploadComplete",
                "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(version),
                "lineEnding": body.get("lineEnding", "LF"), "columnDelimiter": body.get("columnDelimiter", "COMMA"),
                "_fields": q["fields"], "_rows": [{f: r.get(f) for f in q["fields"]} for r in rows], "_polled": 0,
                "_fail": self.fail_next_query_job,
            }
            self.fail_next_query_job = False
            return self.json(self._job_info(self.query_jobs[job_id]))
        job = self.query_jobs.get(rest[0]) if rest else None
        if job is None:
            return self.fault(404, "NOT_FOUND", "The requested resource does not exist")
        if len(rest) == 1 and method == "GET":
            if job["state"] in ("UploadComplete", "InProgress"):
                job["_polled"] += 1
                job["state"] = "InProgress" if job["_polled"] == 1 else "Failed" if job["_fail"] else "JobComplete"
            info = self._job_info(job)
            if job["state"] == "JobComplete":
                info.update(numberRecordsProcessed=len(job["_rows"]), retries=0, totalProcessingTime=1)
            if job["state"] == "Failed":
                info["errorMessage"] = "Query job failed: the emulator was told to fail it (fail_next_query_job)"
            return self.json(info)
        if len(rest) == 1 and method == "PATCH":
            if (request.get_json(silent=True) or {}).get("state") != "Aborted" \
                    or job["state"] not in ("UploadComplete", "InProgress"):
                return self.fault(400, "INVALIDJOB", f"cannot abort a job in state {job['state']}")
            job["state"] = "Aborted"
            return self.json(self._job_info(job))
        if len(rest) == 1 and method == "DELETE":
            del self.query_jobs[job["id"]]
            return Response(status=204)
        if len(rest) == 2 and rest[1] == "results" and method == "GET":
            if float(version) != job["apiVersion"]:
                return self.fault(409, "INVALIDJOB", "Use the API version the job was created with")
            if job["state"] != "JobComplete":
                return self.fault(400, "INVALIDJOB", f"The job is {job['state']}: results exist only for JobComplete")
            locator = request.args.get("locator", "")
            try:
                start = int(base64.b32decode(locator.encode())) if locator else 0
            except (ValueError, binascii.Error):
                return self.fault(400, "INVALIDJOB", f"invalid locator {locator!r}")
            size = int(request.args.get("maxRecords") or self.bulk_query_page_size)
            chunk = job["_rows"][start:start + size]
            end = start + len(chunk)
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow(job["_fields"])
            for row in chunk:
                writer.writerow([_bulk_cell(row.get(f)) for f in job["_fields"]])
            response = Response(out.getvalue(), content_type="text/csv")
            response.headers["Sforce-NumberOfRecords"] = str(len(chunk))
            response.headers["Sforce-Locator"] = (base64.b32encode(str(end).encode()).decode()
                                                  if end < len(job["_rows"]) else "null")
            return response
        return self.fault(404, "NOT_FOUND", "The requested resource does not exist")

    @staticmethod
    def _results_csv(job: dict, kind: str) -> str:
        out = io.StringIO()
        header = job.get("_header", [])
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if kind == "successfulResults":
            writer.writerow(["sf__Id", "sf__Created", *header])
            for record_id, created, row in job["_ok"]:
                writer.writerow([record_id, created, *(row.get(h, "") for h in header)])
        elif kind == "failedResults":
            writer.writerow(["sf__Id", "sf__Error", *header])
            for record_id, error, row in job["_failed"]:
                writer.writerow([record_id, error, *(row.get(h, "") for h in header)])
        else:
            writer.writerow(header)
        return out.getvalue()


def _bulk_cell(value) -> str:
    """A Bulk API 2.0 CSV cell: null empty, booleans lower-case, date-times with Z."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$", value):
        return value[:-5] + "Z"
    return str(value)


def dumps(data) -> str:
    return json.dumps(data)
