"""Portal (HubSpot) and org (Salesforce) schema awareness.

A CRM refuses what it does not have: a property the portal lacks, one it
computes itself (read-only, calculated), a picklist value not among its
options, an upsert key that is not a unique-value property. Finding that out
per record, at push time, turns a setup gap into dead letters. So a
connection reads the definitions once per object type (HubSpot's
properties API, Salesforce's sObject describe), keeps them
(``RemoteSchema``), and checks against them:

- ``mapping_problems``: what ``FieldMapping.clean`` (the admin) and the
  check refuse, by form field and reason. Only stored definitions are used,
  never a call: when none were read yet the save goes through with a
  warning and the check reports later.
- ``connection_check``: reads every synced object type's definitions again
  (one call each) and lists what the portal lacks (the custom properties or
  fields to create, with the steps), the upsert keys it refuses, and every
  mapping or lifecycle value it would refuse. The admin's *Check
  connection*, ``crm_sync --check`` and the push's own key decision use it.
- ``definitions_fresh``: the connector's read before a push decision that
  depends on the schema (HubSpot: whether deals/tasks can be upserted by
  their key), refreshed when older than ``MARTECH_CRM_SCHEMA_MAX_AGE``.

A provider's connector module says what it needs (``schema_requirements``),
where a mapping lands (``schema_targets``) and how it reads a definition
(the connector's ``describe``).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

# Keys of one stored definition (RemoteSchema.fields[name]).
FIELD_KEYS = ("label", "type", "options", "read_only", "calculated", "unique", "createable", "updateable",
              "restricted", "external_id")


@dataclass(frozen=True)
class Requirement:
    """A custom property or field the connector itself writes (not a mapping):
    the id it upserts or matches by."""
    remote_object: str
    name: str
    unique: bool  # must hold unique values (HubSpot "Require unique values", Salesforce External ID + Unique)
    steps: str  # what an operator does to create it
    why: str


@dataclass
class CheckReport:
    connection_id: int
    provider: str
    read: list[str] = field(default_factory=list)  # remote objects whose definitions were read
    missing: list[Requirement] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (what, field, reason)
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.refused and not self.error

    def lines(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"Could not read the definitions: {self.error}")
        for req in self.missing:
            out.append(f"Missing {req.remote_object} field {req.name} ({req.why}). {req.steps}")
        for what, name, reason in self.refused:
            out.append(f"Refused: {what}: {name}: {reason}")
        out += self.notes
        if self.ok:
            out.append(f"OK: {', '.join(self.read) or 'nothing'} read; every mapping and lifecycle value fits.")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"connection": self.connection_id, "provider": self.provider, "ok": self.ok, "read": self.read,
                "missing": [{"object": r.remote_object, "name": r.name, "unique": r.unique, "steps": r.steps,
                             "why": r.why} for r in self.missing],
                "refused": [{"what": w, "field": f, "reason": r} for w, f, r in self.refused],
                "notes": self.notes, "error": self.error}


def _provider_module(provider: str):
    if provider == "hubspot":
        from martech.crm.connectors import hubspot as module
    elif provider == "salesforce":
        from martech.crm.connectors import salesforce as module
    else:  # pragma: no cover - Provider choices
        raise LookupError(provider)
    return module


def max_age() -> dt.timedelta:
    return dt.timedelta(seconds=settings.MARTECH_CRM["SCHEMA_MAX_AGE"])


def definitions(connection, remote_object: str) -> dict[str, dict] | None:
    """The stored definitions of one remote object; None when never read."""
    from martech.crm.models import RemoteSchema

    row = RemoteSchema.objects.filter(connection=connection, remote_object=remote_object).first()
    return None if row is None else row.fields


def _store(connection, remote_object: str, fields: dict[str, dict]) -> None:
    from martech.crm.models import RemoteSchema

    RemoteSchema.objects.update_or_create(connection=connection, remote_object=remote_object,
                                          defaults={"fields": fields, "fetched_at": timezone.now()})


def definitions_fresh(connection, connector, remote_object: str) -> dict[str, dict]:
    """The stored definitions, read again (one call) when missing or older
    than MARTECH_CRM_SCHEMA_MAX_AGE."""
    from martech.crm.models import RemoteSchema

    row = RemoteSchema.objects.filter(connection=connection, remote_object=remote_object).first()
    if row is not None and row.fetched_at > timezone.now() - max_age():
        return row.fields
    fields = connector.describe(remote_object)
    _store(connection, remote_object, fields)
    return fields


def schema_refresh(*, connection, connector=None, remote_objects: list[str] | None = None) -> dict[str, dict]:
    """Read the definitions of ``remote_objects`` (default: every object the
    connector syncs, and the link objects it writes), one call each, and
    store them. Returns {remote object: fields}."""
    from martech.crm.connectors import connector_for

    connector = connector or connector_for(connection)
    module = _provider_module(connection.provider)
    names = remote_objects or module.schema_objects(connector)
    out = {}
    for name in names:
        out[name] = connector.describe(name)
        _store(connection, name, out[name])
    return out


def _readable(provider: str) -> str:
    return {"hubspot": "HubSpot", "salesforce": "Salesforce"}.get(provider, provider)


def mapping_problems(mapping, *, cached: dict[str, dict[str, dict] | None] | None = None,
                     lifecycle: bool = True) -> tuple[dict[str, list[str]], list[str]]:
    """What the portal or org would refuse of ``mapping``: ({form field:
    [reasons]}, [warnings]). ``cached``: {remote object: definitions} to use
    instead of the stored ones (the check passes what it just read)."""
    from martech.crm.models import LifecycleMapping

    errors: dict[str, list[str]] = {}
    warnings: list[str] = []
    connection = mapping.connection
    module = _provider_module(connection.provider)
    crm = _readable(connection.provider)
    remote = (mapping.remote_field or "").strip()
    if not remote:
        return errors, warnings
    for remote_object, name in module.schema_targets(mapping.object, remote):
        defs = cached.get(remote_object) if cached is not None and remote_object in cached \
            else definitions(connection, remote_object)
        if defs is None:
            warnings.append(f"{crm} {remote_object} definitions were not read yet, so {name!r} was not checked: "
                            "run the connection check.")
            continue
        definition = defs.get(name)
        if definition is None:
            errors.setdefault("remote_field", []).append(
                f"{crm} {remote_object} has no field {name!r}. {module.create_steps(remote_object, name, mapping.kind)}")
            continue
        if mapping.pushes and (definition.get("read_only") or definition.get("calculated")
                               or not (definition.get("updateable") or definition.get("createable"))):
            why = "calculated" if definition.get("calculated") else "read-only"
            errors.setdefault("direction", []).append(
                f"{crm} {remote_object} field {name!r} is {why} (the CRM sets it): it cannot be pushed. Make the "
                "mapping pull-only, or map a custom field.")
        options = definition.get("options")
        if not (definition.get("restricted") and options is not None):
            continue
        allowed = set(options)
        shown = ", ".join(options[:20]) + (" ..." if len(options) > 20 else "")
        if mapping.kind == "picklist" and isinstance(mapping.value_map, dict):
            bad = sorted({str(v) for v in mapping.value_map.values()} - allowed)
            if bad:
                errors.setdefault("value_map", []).append(
                    f"{', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} not among the options of "
                    f"{crm} {remote_object} field {name!r} ({shown}).")
        if mapping.default:
            values = mapping.default.split(";") if mapping.kind == "multi" else [mapping.default]
            if mapping.kind != "picklist" and any(v not in allowed for v in values):
                errors.setdefault("default", []).append(
                    f"{mapping.default!r} is not among the options of {crm} {remote_object} field {name!r} ({shown}).")
        if lifecycle and mapping.local_field == "lifecycle_stage" and mapping.pushes and connection.pk:
            bad = sorted({lm.remote_value for lm in LifecycleMapping.objects.filter(
                connection=connection, push_default=True)} - allowed)
            if bad:
                errors.setdefault("remote_field", []).append(
                    f"Lifecycle values {', '.join(map(repr, bad))} are not among the options of {crm} "
                    f"{remote_object} field {name!r} ({shown}); change them under Lifecycle mappings.")
    return errors, warnings


def lifecycle_problem(lifecycle) -> str:
    """A lifecycle value the field it is pushed to does not have (stored
    definitions only); "" when it fits or cannot be told."""
    from martech.crm.models import FieldMapping

    if not lifecycle.push_default or not lifecycle.connection_id:
        return ""
    module = _provider_module(lifecycle.connection.provider)
    for mapping in FieldMapping.objects.filter(connection_id=lifecycle.connection_id, object="contact",
                                               local_field="lifecycle_stage"):
        if not mapping.pushes:
            continue
        for remote_object, name in module.schema_targets("contact", mapping.remote_field):
            definition = (definitions(lifecycle.connection, remote_object) or {}).get(name)
            if definition and definition.get("restricted") and definition.get("options") is not None \
                    and lifecycle.remote_value not in definition["options"]:
                return (f"{lifecycle.remote_value!r} is not among the options of "
                        f"{_readable(lifecycle.connection.provider)} {remote_object} field {name!r} "
                        f"({', '.join(definition['options'][:20])}).")
    return ""


def connection_check(*, connection, connector=None) -> CheckReport:
    """Read the definitions again and list what the portal or org lacks or
    refuses: the custom fields the connector needs (with the steps to create
    them), upsert keys it cannot use, and every mapping and lifecycle value
    it would refuse (field and reason). Nothing is written to the CRM."""
    from martech.crm import objects
    from martech.crm.connectors import connector_for
    from martech.crm.connectors.base import PermanentError, TransientError
    from martech.crm.models import FieldMapping, LifecycleMapping

    connector = connector or connector_for(connection)
    module = _provider_module(connection.provider)
    report = CheckReport(connection.pk, connection.provider)
    try:
        schemas = schema_refresh(connection=connection, connector=connector)
    except (TransientError, PermanentError) as exc:
        report.error = str(exc)
        return report
    report.read = sorted(schemas)
    keys = [o.key for o in objects.synced_by(connector)]
    for key in keys:
        for req in module.schema_requirements(key, connector):
            definition = (schemas.get(req.remote_object) or {}).get(req.name)
            if definition is None:
                report.missing.append(req)
            elif req.unique and not definition.get("unique"):
                refuse, why = module.not_unique(req, definition)
                if refuse:
                    report.refused.append((f"{req.remote_object} key", req.name, why))
                else:
                    report.notes.append(why)
        report.notes += module.key_notes(key, schemas)
    mappings = FieldMapping.objects.filter(connection=connection, object__in=keys).order_by("object", "pk")
    for mapping in mappings:
        errors, warnings = mapping_problems(mapping, cached=schemas, lifecycle=False)
        for form_field, reasons in errors.items():
            for reason in reasons:
                report.refused.append((f"mapping {mapping.object} {mapping.local_field} -> {mapping.remote_field}",
                                       form_field, reason))
        report.notes += warnings
    for lifecycle in LifecycleMapping.objects.filter(connection=connection).order_by("pk"):
        problem = lifecycle_problem(lifecycle)
        if problem:
            report.refused.append((f"lifecycle value {lifecycle.remote_value!r}", "remote_value", problem))
    return report
