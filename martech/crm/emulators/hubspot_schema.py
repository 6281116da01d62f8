"""HubSpot's property definitions, as the properties API
(``GET /crm/v3/properties/{objectType}``) answers them, for the standard
properties this project reads or writes, with HubSpot's own flags: the
ones HubSpot sets (``hubspotscore``, ``createdate``, ``hs_object_id``,
``lastmodifieddate``, ``hs_lastmodifieddate``) are ``readOnlyValue``, the
enumerations carry their options (``lifecyclestage``, ``dealstage`` of the
default sales pipeline, ``hs_task_status``). ``hubspot_owner_id`` is an
enumeration whose options are the portal's owners (``externalOptions``), so
its values are not checked against a list.

Nothing custom is here: ``martech_deal_id``, ``martech_task_id`` or
``martech_score`` exist only once created (``POST
/crm/v3/properties/{objectType}``, as an operator does in *Settings >
Properties*); ``PROJECT_PROPERTIES`` lists them for the test, demo and bench
setups. A portal answers for properties of any object type; this
emulator knows these four.
"""
from __future__ import annotations

# HubSpot's object type ids, which its error messages use.
OBJECT_TYPE_IDS = {"contacts": "0-1", "companies": "0-2", "deals": "0-3", "tasks": "0-27"}

LIFECYCLE_STAGES = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                    "evangelist", "other")
DEAL_STAGES = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
               "contractsent", "closedwon", "closedlost")
TASK_STATUSES = ("NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED")
TASK_PRIORITIES = ("NONE", "LOW", "MEDIUM", "HIGH")
CURRENCIES = ("USD", "EUR", "GBP", "CAD", "AUD", "CHF", "JPY", "SEK", "NOK", "DKK", "INR", "BRL", "CNY", "NZD",
              "SGD", "HKD", "MXN", "ZAR", "PLN")
STAMP = "2020-01-01T00:00:00.000Z"


def prop(name: str, label: str, type_: str = "string", field_type: str = "text", *, options=(),
         read_only: bool = False, calculated: bool = False, unique: bool = False, external_options: bool = False,
         hubspot_defined: bool = True, group: str = "") -> dict:
    """One property in the shape of the client's ``Property`` model."""
    return {
        "name": name, "label": label, "type": type_, "fieldType": field_type, "description": "",
        "groupName": group or "information", "displayOrder": -1, "hidden": False, "formField": not read_only,
        "options": [{"label": o.replace("_", " ").title() if o.isupper() else o, "value": o, "displayOrder": n,
                     "hidden": False} for n, o in enumerate(options)],
        "hasUniqueValue": unique, "calculated": calculated, "externalOptions": external_options,
        "hubspotDefined": hubspot_defined, "createdAt": STAMP, "updatedAt": STAMP, "archived": False,
        "modificationMetadata": {"archivable": not hubspot_defined, "readOnlyDefinition": hubspot_defined,
                                 "readOnlyValue": read_only},
    }


def _system(modified: str, created: str) -> list[dict]:
    return [prop("hs_object_id", "Record ID", "number", "number", read_only=True),
            prop(created, "Create Date", "datetime", "date", read_only=True),
            prop(modified, "Last Modified Date", "datetime", "date", read_only=True),
            prop("hubspot_owner_id", "Owner", "enumeration", "select", external_options=True)]


STANDARD = {
    "contacts": [
        *_system("lastmodifieddate", "createdate"),
        prop("hs_lastmodifieddate", "Object last modified date/time", "datetime", "date", read_only=True),
        prop("email", "Email", field_type="text"),
        prop("firstname", "First Name"), prop("lastname", "Last Name"), prop("jobtitle", "Job Title"),
        prop("company", "Company Name"), prop("country", "Country/Region"), prop("city", "City"),
        prop("state", "State/Region"), prop("zip", "Postal Code"), prop("phone", "Phone Number", field_type="phonenumber"),
        prop("website", "Website URL"),
        prop("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", options=LIFECYCLE_STAGES),
        # The HubSpot score: HubSpot computes it from the portal's scoring rules; no API writes it.
        prop("hubspotscore", "HubSpot Score", "number", "number", read_only=True),
        prop("hs_analytics_num_visits", "Number of Sessions", "number", "number", read_only=True, calculated=True),
    ],
    "companies": [
        *_system("hs_lastmodifieddate", "createdate"),
        # Not unique: HubSpot deduplicates companies by domain only in its UI, so
        # batch upsert refuses it as idProperty.
        prop("domain", "Company Domain Name"), prop("name", "Name"), prop("industry", "Industry"),
        prop("numberofemployees", "Number of Employees", "number", "number"),
        prop("annualrevenue", "Annual Revenue", "number", "number"), prop("country", "Country/Region"),
        prop("city", "City"), prop("phone", "Phone Number"), prop("website", "Website URL"),
        prop("num_associated_contacts", "Number of Associated Contacts", "number", "number", read_only=True,
             calculated=True),
    ],
    "deals": [
        *_system("hs_lastmodifieddate", "createdate"),
        prop("dealname", "Deal Name"), prop("amount", "Amount", "number", "number"),
        prop("deal_currency_code", "Currency", "enumeration", "select", options=CURRENCIES),
        prop("dealstage", "Deal Stage", "enumeration", "radio", options=DEAL_STAGES),
        prop("pipeline", "Pipeline", "enumeration", "select", options=("default",)),
        prop("closedate", "Close Date", "datetime", "date"),
        prop("hs_is_closed", "Is Deal Closed?", "bool", "booleancheckbox", read_only=True, calculated=True),
    ],
    "tasks": [
        *_system("hs_lastmodifieddate", "hs_createdate"),
        prop("hs_task_subject", "Task Title"), prop("hs_task_body", "Task notes", field_type="textarea"),
        prop("hs_timestamp", "Due date", "datetime", "date"),
        prop("hs_task_status", "Task Status", "enumeration", "select", options=TASK_STATUSES),
        prop("hs_task_priority", "Priority", "enumeration", "select", options=TASK_PRIORITIES),
        prop("hs_task_type", "Task Type", "enumeration", "select", options=("CALL", "EMAIL", "TODO")),
    ],
}

# The custom properties this project needs in a portal (what the connection
# check asks an operator to create): {object type: [PropertyCreate bodies]}.
PROJECT_PROPERTIES = {
    "contacts": [{"name": "martech_score", "label": "Martech score", "type": "number", "fieldType": "number",
                  "groupName": "contactinformation"}],
    "deals": [{"name": "martech_deal_id", "label": "Martech deal id", "type": "string", "fieldType": "text",
               "groupName": "dealinformation", "hasUniqueValue": True}],
    "tasks": [{"name": "martech_task_id", "label": "Martech task id", "type": "string", "fieldType": "text",
               "groupName": "task_information", "hasUniqueValue": True}],
}


def from_create(body: dict) -> dict:
    """A ``PropertyCreate`` body as the ``Property`` HubSpot then answers."""
    out = prop(body["name"], body.get("label") or body["name"], body.get("type") or "string",
               body.get("fieldType") or "text", options=(), unique=bool(body.get("hasUniqueValue")),
               hubspot_defined=False, group=body.get("groupName") or "")
    out["options"] = [{"label": o.get("label", o.get("value")), "value": o.get("value"),
                       "displayOrder": o.get("displayOrder", n), "hidden": bool(o.get("hidden"))}
                      for n, o in enumerate(body.get("options") or [])]
    out["description"] = body.get("description") or ""
    out["formField"] = bool(body.get("formField", False))
    return out
