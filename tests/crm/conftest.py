"""CRM fixtures: the HubSpot emulator on a free loopback port, a connection
with mappings pointed at it, and OpenAPI validation of both sides."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from martech.crm.emulators.base import Served
from martech.crm.emulators.hubspot import HubSpotEmulator
from martech.crm.models import Connection, FieldMapping, LifecycleMapping
from martech.crm.types import COMPANY_MAPPINGS, SALESFORCE_CONTACT_MAPPINGS, TASK_MAPPINGS
from martech.models import LifecycleStage

SPECS = Path(__file__).resolve().parent.parent / "fixtures" / "hubspot"


def _spec(name: str) -> dict:
    return json.loads((SPECS / name).read_text())


_OBJECT_ID = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}
# CRM v4 associations: HubSpot's document for them is not in ../shared/specs, so
# these schemas follow the shapes of hubspot-api-client's v4 models (the
# generated BatchInputPublicDefaultAssociationMultiPost, BatchResponsePublicDefaultAssociation,
# BatchInputPublicFetchAssociationsBatchRequest, BatchResponsePublicAssociationMultiWithLabel,
# BatchInputPublicAssociationMultiArchive). A response schema of None: HubSpot answers
# 204 with no body (the client's archive returns None).
_V4_ERROR = {"type": "object", "required": ["status", "category", "message", "context"]}
ASSOCIATIONS_V4 = {
    "batch/associate/default": (
        {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["from", "to"], "additionalProperties": False,
                "properties": {"from": _OBJECT_ID, "to": _OBJECT_ID}}}}},
        {"type": "object", "required": ["status", "results", "startedAt", "completedAt"], "properties": {
            "status": {"enum": ["PENDING", "PROCESSING", "CANCELED", "COMPLETE"]},
            "errors": {"type": "array", "items": _V4_ERROR},
            "results": {"type": "array", "items": {
                "type": "object", "required": ["from", "to", "associationSpec"], "properties": {
                    "from": _OBJECT_ID, "to": _OBJECT_ID, "associationSpec": {
                        "type": "object", "required": ["associationCategory", "associationTypeId"], "properties": {
                            "associationCategory": {"enum": ["HUBSPOT_DEFINED", "USER_DEFINED",
                                                             "INTEGRATOR_DEFINED"]},
                            "associationTypeId": {"type": "integer"}}}}}}}},
    ),
    "batch/archive": (
        {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["from", "to"], "additionalProperties": False,
                "properties": {"from": _OBJECT_ID, "to": {"type": "array", "minItems": 1, "items": _OBJECT_ID}}}}}},
        None,
    ),
    "batch/read": (
        {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["id"], "additionalProperties": False,
                "properties": {"id": {"type": "string"}, "after": {"type": "string"}}}}}},
        {"type": "object", "required": ["status", "results", "startedAt", "completedAt"], "properties": {
            "results": {"type": "array", "items": {
                "type": "object", "required": ["from", "to"], "properties": {
                    "from": _OBJECT_ID, "to": {"type": "array", "items": {
                        "type": "object", "required": ["toObjectId", "associationTypes"], "properties": {
                            "toObjectId": {"type": "integer"},
                            "associationTypes": {"type": "array", "items": {
                                "type": "object", "required": ["category", "typeId"]}}}}}}}}}},
    ),
}

# Lists v3: not in the shared specs either; these follow hubspot-api-client's
# hubspot.crm.lists models (ListCreateRequest, ListCreateResponse /
# ListFetchResponse with PublicObjectList, MembershipChangeRequest,
# MembershipsUpdateResponse (HubSpot spells it recordsIdsAdded),
# ApiCollectionResponseJoinTimeAndRecordId), required fields as the models require them.
_LIST = {"type": "object", "required": ["listId", "name", "objectTypeId", "processingType", "processingStatus",
                                        "listVersion"],
         "properties": {"listId": {"type": "string"}, "name": {"type": "string"},
                        "objectTypeId": {"type": "string"}, "size": {"type": "integer"},
                        "processingType": {"enum": ["MANUAL", "DYNAMIC", "SNAPSHOT"]},
                        "listVersion": {"type": "integer"}}}
_LIST_ONE = {"type": "object", "required": ["list"], "properties": {"list": _LIST}}
_IDS = {"type": "array", "items": {"type": "string"}}
LISTS_V3 = {
    ("POST", "create"): ({"type": "object", "required": ["name", "objectTypeId", "processingType"],
                          "properties": {"name": {"type": "string"}, "objectTypeId": {"type": "string"},
                                         "processingType": {"enum": ["MANUAL", "DYNAMIC", "SNAPSHOT"]}}},
                         _LIST_ONE),
    ("GET", "by_id"): (None, _LIST_ONE),
    ("GET", "by_name"): (None, _LIST_ONE),
    ("PUT", "add-and-remove"): (
        {"type": "object", "required": ["recordIdsToAdd", "recordIdsToRemove"], "additionalProperties": False,
         "properties": {"recordIdsToAdd": _IDS, "recordIdsToRemove": _IDS}},
        {"type": "object", "required": ["recordIdsRemoved", "recordsIdsAdded", "recordIdsMissing"],
         "properties": {"recordIdsRemoved": _IDS, "recordsIdsAdded": _IDS, "recordIdsMissing": _IDS}}),
    ("GET", "memberships"): (None, {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["recordId", "membershipTimestamp"],
                                               "properties": {"recordId": {"type": "string"}}}},
        "paging": {"type": "object", "properties": {"next": {"type": "object", "required": ["after"]}}}}}),
}
_LIST_ERROR = {"type": "object", "required": ["message", "category", "correlationId"]}


def _list_action(method: str, path: str) -> tuple[str, str]:
    rest = path.rstrip("/").split("/")[4:]
    if rest == []:
        return method, "create"
    if len(rest) == 4 and rest[0] == "object-type-id" and rest[2] == "name":
        return method, "by_name"
    if len(rest) == 1:
        return method, "by_id"
    return method, rest[-1]


# The properties API (/crm/v3/properties/{objectType}): its document is not in
# tests/fixtures/hubspot, so these follow hubspot-api-client's properties models
# (PropertyCreate, Property, CollectionResponsePropertyNoPaging: their required fields).
_PROPERTY = {"type": "object", "required": ["name", "label", "type", "fieldType", "description", "groupName",
                                            "options"], "properties": {
    "name": {"type": "string"}, "hasUniqueValue": {"type": "boolean"}, "calculated": {"type": "boolean"},
    "options": {"type": "array", "items": {"type": "object", "required": ["label", "value", "hidden"]}},
    "modificationMetadata": {"type": "object", "required": ["readOnlyValue", "readOnlyDefinition", "archivable"]}}}
PROPERTIES_API = {
    "GET": (None, {"type": "object", "required": ["results"],
                   "properties": {"results": {"type": "array", "items": _PROPERTY}}}),
    "POST": ({"type": "object", "required": ["name", "label", "type", "fieldType", "groupName"], "properties": {
        "type": {"enum": ["string", "number", "date", "datetime", "enumeration", "bool"]},
        "fieldType": {"enum": ["textarea", "text", "date", "file", "number", "select", "radio", "checkbox",
                               "booleancheckbox", "calculation_equation"]},
        "hasUniqueValue": {"type": "boolean"}}}, _PROPERTY),
}


class SpecCheck:
    """Validates request bodies and JSON responses against HubSpot's documents.

    Deals are documented under their object type id (``/crm/v3/objects/0-3``).
    Tasks have no document in ../shared/specs: they follow the generic CRM
    objects v3 shapes the client library uses, so they are checked against
    the companies document's operations, which use the same schemas.
    v4 associations are checked against ASSOCIATIONS_V4 above."""

    def __init__(self):
        self.docs = {"contacts": _spec("contacts.json"), "owners": _spec("crmOwners.json"),
                     "companies": _spec("companies.json"), "deals": _spec("deals.json")}

    def _schema(self, doc: dict, ref_or_schema: dict) -> dict:
        return {**ref_or_schema, "components": doc["components"]}

    @staticmethod
    def documented_path(path: str) -> str:
        if path.startswith("/crm/v3/objects/deals"):
            return path.replace("/crm/v3/objects/deals", "/crm/v3/objects/0-3", 1)
        if path.startswith("/crm/v3/objects/tasks"):
            return path.replace("/crm/v3/objects/tasks", "/crm/v3/objects/companies", 1)
        return path

    def operation(self, method: str, path: str) -> tuple[dict, dict]:
        path = self.documented_path(path)
        for doc in self.docs.values():
            for template, ops in doc["paths"].items():
                if _matches(template, path) and method.lower() in ops:
                    return doc, ops[method.lower()]
        raise AssertionError(f"{method} {path} is not in HubSpot's documents")

    def check(self, method: str, path: str, body: bytes, status: int, response: bytes) -> None:
        if path.startswith("/crm/v3/lists"):
            action = _list_action(method, path)
            if action not in LISTS_V3:
                raise AssertionError(f"{method} {path} is not a lists v3 call the connector makes")
            request_schema, response_schema = LISTS_V3[action]
            if request_schema is not None:
                jsonschema.validate(json.loads(body), request_schema)
            elif body:
                raise AssertionError(f"{method} {path} takes no body")
            jsonschema.validate(json.loads(response), response_schema if status == 200 else _LIST_ERROR)
            return
        if path.startswith("/crm/v3/properties/"):
            request_schema, response_schema = PROPERTIES_API[method]
            if request_schema is not None:
                jsonschema.validate(json.loads(body), request_schema)
            if status < 300:
                jsonschema.validate(json.loads(response), response_schema)
            return
        if path.startswith("/crm/v4/associations/"):
            action = "/".join(path.rstrip("/").split("/")[6:])
            if method != "POST" or action not in ASSOCIATIONS_V4:
                raise AssertionError(f"{method} {path} is not a v4 association call the connector makes")
            request_schema, response_schema = ASSOCIATIONS_V4[action]
            jsonschema.validate(json.loads(body), request_schema)
            if response_schema is None:
                if status < 400 and (status != 204 or response):
                    raise AssertionError(f"{action} answers 204 with no body, not {status} {response[:200]!r}")
            elif status in (200, 207):
                jsonschema.validate(json.loads(response), response_schema)
            return
        doc, op = self.operation(method, path)
        if body and "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            jsonschema.validate(json.loads(body), self._schema(doc, schema))
        spec = op["responses"].get(str(status)) or op["responses"].get("default")
        if "$ref" in spec:
            spec = doc["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
        content = spec.get("content", {})
        media = content.get("application/json") or next(iter(content.values()), None)
        if media and response:
            jsonschema.validate(json.loads(response), self._schema(doc, media["schema"]))


def _matches(template: str, path: str) -> bool:
    t_parts, p_parts = template.rstrip("/").split("/"), path.rstrip("/").split("/")
    return len(t_parts) == len(p_parts) and all(t == p or t.startswith("{") for t, p in zip(t_parts, p_parts))


class CheckedHubSpot(HubSpotEmulator):
    """The emulator, validating every exchange against the documents."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spec = SpecCheck()
        self.checked = 0
        self.spec_errors: list[str] = []
        self.requests: list[tuple[str, str, dict]] = []

    def dispatch(self, request):
        body = request.get_data()
        response = super().dispatch(request)
        self.requests.append((request.method, request.path, json.loads(body) if body else {}))
        try:
            self.spec.check(request.method, request.path, body, response.status_code, response.get_data())
            self.checked += 1
        except Exception as exc:  # noqa: BLE001 - collected and asserted by the test
            self.spec_errors.append(f"{request.method} {request.path}: {exc}")
        return response


@pytest.fixture
def hubspot_bare(settings):
    """The emulator as a portal nobody set up: HubSpot's standard properties only."""
    app = CheckedHubSpot()
    served = Served(app).start()
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": served.url, "BACKOFF_BASE": 0.01,
                            "BACKOFF_MAX": 2.0}
    yield app
    served.stop()
    assert not app.spec_errors, app.spec_errors


@pytest.fixture
def hubspot(settings):
    """The emulator as a portal an operator set up: the custom properties the
    connection check asks for exist (martech_deal_id and martech_task_id with
    unique values, martech_score)."""
    app = CheckedHubSpot()
    app.add_project_properties()
    served = Served(app).start()
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_URL": served.url, "BACKOFF_BASE": 0.01,
                            "BACKOFF_MAX": 2.0}
    yield app
    served.stop()
    assert not app.spec_errors, app.spec_errors


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("martech.crm.connectors.hubspot.time.sleep", slept.append)
    return slept


def _map(connection, obj, rows):
    for local, remote, kind, extra in rows:
        mapping = FieldMapping(connection=connection, object=obj, local_field=local, remote_field=remote,
                               kind=kind, **extra)
        mapping.full_clean()
        mapping.save()


@pytest.fixture
def company_mappings(connection):
    _map(connection, "company", COMPANY_MAPPINGS)
    return connection


def _read_schema(connection, *remote_objects):
    """What an operator's connection check leaves behind: the portal's
    definitions stored (so a push does not read them first)."""
    from martech.crm.schema import schema_refresh

    schema_refresh(connection=connection, remote_objects=list(remote_objects))


@pytest.fixture
def deal_mappings(company_mappings, hubspot):
    from attribution.crm_sync import HUBSPOT_MAPPINGS

    _read_schema(company_mappings, "deals")
    _map(company_mappings, "deal", HUBSPOT_MAPPINGS)
    return company_mappings


@pytest.fixture
def task_mappings(connection, hubspot):
    _read_schema(connection, "tasks")
    _map(connection, "task", TASK_MAPPINGS)
    return connection


@pytest.fixture
def connection(db):
    conn = Connection.objects.create(provider="hubspot", name="HubSpot")
    for local, remote, kind, extra in [
        ("email", "email", "text", {}),
        ("first_name", "firstname", "text", {}),
        ("last_name", "lastname", "text", {}),
        ("job_title", "jobtitle", "text", {"system_of_record": "remote"}),
        ("country", "country", "text", {}),
        ("lifecycle_stage", "lifecyclestage", "text", {}),
        ("owner", "hubspot_owner_id", "text", {"direction": "push"}),
    ]:
        FieldMapping.objects.create(connection=conn, local_field=local, remote_field=remote, kind=kind, **extra)
    for value, key in [("lead", "lead"), ("marketingqualifiedlead", "mql"), ("salesqualifiedlead", "sql"),
                       ("customer", "customer")]:
        stage = LifecycleStage.objects.filter(key=key).first()
        if stage:
            LifecycleMapping.objects.create(connection=conn, remote_value=value, stage=stage)
    return conn


# --- Salesforce -------------------------------------------------------------

@pytest.fixture(scope="session")
def salesforce_cert(tmp_path_factory):
    from martech.crm.emulators.tls import ensure_certificate

    return ensure_certificate(tmp_path_factory.mktemp("sf-tls"))


@pytest.fixture
def salesforce(settings, salesforce_cert):
    """The Salesforce emulator over real TLS on a free loopback port; the
    connector trusts its generated certificate (never verify=False)."""
    from martech.crm.connectors import salesforce as sf_connector
    from martech.crm.emulators.salesforce import SalesforceEmulator

    cert, key = salesforce_cert
    app = SalesforceEmulator()
    # An org an admin set up: Martech_Id__c (External ID, Unique) where the connector upserts by it.
    app.add_project_fields()
    served = Served(app, ssl_context=(str(cert), str(key))).start()
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "SALESFORCE_URL": served.url, "SALESFORCE_CA_CERT": str(cert),
                            "SALESFORCE_ACCESS_TOKEN": "emulator-session", "SALESFORCE_REFRESH_TOKEN": "emulator-refresh",
                            "SALESFORCE_CLIENT_ID": "emulator-client", "SALESFORCE_CLIENT_SECRET": "emulator-secret",
                            "SALESFORCE_NEW_LEADS_AS": "Lead", "SALESFORCE_BULK_ABOVE": 2000,
                            "BACKOFF_BASE": 0.01, "BACKOFF_MAX": 2.0}
    sf_connector._renewed_sessions.clear()
    yield app
    served.stop()
    sf_connector._renewed_sessions.clear()


@pytest.fixture
def sf_no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("martech.crm.connectors.salesforce.time.sleep", slept.append)
    return slept


SF_STATUSES = [("Open - Not Contacted", "lead"), ("Working - Contacted", "mql"), ("Qualified", "sql"),
               ("Closed - Converted", "customer")]


@pytest.fixture
def sf_connection(db):
    conn = Connection.objects.create(provider="salesforce", name="Salesforce")
    # The registry's default Salesforce mappings, as an ops user starts from them.
    _map(conn, "contact", SALESFORCE_CONTACT_MAPPINGS)
    for value, key in SF_STATUSES:
        stage = LifecycleStage.objects.filter(key=key).first()
        if stage:
            LifecycleMapping.objects.create(connection=conn, remote_value=value, stage=stage)
    return conn


# --- Either provider --------------------------------------------------------


class CrmUnderTest:
    """One provider's connection on its emulator, behind the few verbs the
    tests of behaviour both connectors share use (``crm`` fixture)."""

    def __init__(self, provider: str, connection: Connection, emulator, sleeps: list[float]):
        self.provider = provider
        self.connection = connection
        self.emulator = emulator
        # What the connector slept (time.sleep patched out).
        self.sleeps = sleeps

    @property
    def batch_size(self) -> int:
        """Records per write call: HubSpot's batch, Salesforce's sObject Collection."""
        return 100 if self.provider == "hubspot" else 200

    @property
    def unavailable_code(self) -> str:
        """The error code of the emulator's 503, as the CRM words it."""
        return "SERVER_ERROR" if self.provider == "hubspot" else "SERVER_UNAVAILABLE"

    def remote_field(self, local_field: str) -> str:
        return self.connection.mappings.get(object="contact", local_field=local_field).remote_field

    def people(self) -> dict[str, dict]:
        """The people the CRM holds, by remote id: HubSpot's contacts, Salesforce's Leads."""
        if self.provider == "hubspot":
            return self.emulator.contacts
        return self.emulator.records["Lead"]

    def person(self, email: str) -> dict:
        """The CRM's fields of the person with this email, by remote field name."""
        if self.provider == "hubspot":
            return self.emulator.find("contacts", email)["properties"]
        (record,) = [r for r in self.emulator.records["Lead"].values() if r.get("Email") == email]
        return record

    def put_person(self, values: dict[str, str], *, at=None) -> None:
        """A person created or edited in the CRM, ``values`` by local field
        name (found by email; a Salesforce Lead gets its required fields)."""
        remote = {self.remote_field(k): v for k, v in values.items()}
        if self.provider == "hubspot":
            self.emulator.put_contact(remote, at=at)
            return
        found = [r for r in self.emulator.records["Lead"].values() if r.get("Email") == values["email"]]
        if found:
            remote = {"Id": found[0]["Id"], **{k: v for k, v in remote.items() if k != "Email"}}
        else:
            remote = {"LastName": "L", "Company": "C", **remote}
        self.emulator.put("Lead", remote, at=at)

    def upsert_calls(self) -> int:
        if self.provider == "hubspot":
            return self.emulator.calls[("POST", "/crm/v3/objects/contacts/batch/upsert")]
        return self.emulator.calls[("PATCH", "/services/data/v59.0/composite/sobjects/Lead/Martech_Id__c")]


@pytest.fixture(params=["hubspot", "salesforce"])
def crm(request) -> CrmUnderTest:
    """The HubSpot or the Salesforce connection, each on its emulator."""
    if request.param == "hubspot":
        return CrmUnderTest("hubspot", request.getfixturevalue("connection"), request.getfixturevalue("hubspot"),
                            request.getfixturevalue("no_sleep"))
    return CrmUnderTest("salesforce", request.getfixturevalue("sf_connection"),
                        request.getfixturevalue("salesforce"), request.getfixturevalue("sf_no_sleep"))
