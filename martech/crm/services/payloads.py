"""Payloads: local records turned into CRM properties and associations, their hashes, previews."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from martech import configcache, hooks
from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, PushRecord, TransientError
from martech.crm.models import Connection, CrmOwner, FieldMapping, LifecycleMapping, PushState
from martech.crm.transforms import TransformError, read_local, to_remote
from martech.models import Lead


class PayloadError(ValueError):
    """A record that cannot be sent as it is (required field empty, no picklist value)."""


# --- payloads -----------------------------------------------------------------

# What a payload is built with, for every connection, per process
# (martech.configcache): the push mappings, the lifecycle values pushed and
# the CRM owners by email. Each drain read them again (three queries per
# object type, most of a small drain's own reads). Saving or deleting a
# connection, a mapping, a lifecycle value or stage, or a CRM owner (the
# owners pull saves each) bumps the key (apps.py).
BUILDER_KEY = "crm.push_builder"


@dataclass(frozen=True)
class _BuilderConfig:
    mappings: dict[tuple[int, str], tuple[FieldMapping, ...]]  # (connection, object) -> push mappings by pk
    stage_values: dict[int, dict[str, str]]  # connection -> stage key -> remote value
    owner_by_email: dict[int, dict[str, str]]  # connection -> email -> CRM owner id


def _load_builder_config() -> _BuilderConfig:
    mappings: dict[tuple[int, str], list[FieldMapping]] = {}
    for m in FieldMapping.objects.order_by("pk"):
        if m.pushes:
            mappings.setdefault((m.connection_id, m.object), []).append(m)
    stage_values: dict[int, dict[str, str]] = {}
    for lm in LifecycleMapping.objects.filter(push_default=True).select_related("stage").order_by("pk"):
        stage_values.setdefault(lm.connection_id, {})[lm.stage.key] = lm.remote_value
    owners: dict[int, dict[str, str]] = {}
    for connection_id, email, remote_id in CrmOwner.objects.filter(is_active=True).exclude(email="").order_by(
            "pk").values_list("connection_id", "email", "remote_id"):
        owners.setdefault(connection_id, {})[email.lower()] = remote_id
    return _BuilderConfig({key: tuple(rows) for key, rows in mappings.items()}, stage_values, owners)


class PayloadBuilder:
    """Turns local records of one object type into CRM properties for one
    connection, with the mappings, lifecycle values and owners loaded once
    per process (``BUILDER_KEY``)."""

    def __init__(self, connection: Connection, obj: str | objects.ObjectType = "contact"):
        self.connection = connection
        self.obj = objects.get(obj) if isinstance(obj, str) else obj
        config = configcache.cached(BUILDER_KEY, _load_builder_config)
        self.mappings = list(config.mappings.get((connection.pk, self.obj.key), ()))
        self.stage_values = config.stage_values.get(connection.pk, {}) \
            if any(m.local_field == "lifecycle_stage" for m in self.mappings) else {}
        self.owner_by_email = config.owner_by_email.get(connection.pk, {}) \
            if any(m.local_field == "owner" for m in self.mappings) else {}
        self.lead_owner_ids: dict[int, str | None] | None = None  # prefetched: lead id -> owner id or None

    def prefetch(self, instances: list) -> None:
        """Ask the provider for the CRM owner ids of many leads at once
        (``crm_owner_ids``) instead of one ``crm_owner_id`` per payload."""
        if self.obj.key != "contact" or not any(m.local_field == "owner" for m in self.mappings):
            return
        ids = [i.pk for i in instances]
        found = hooks.call("crm_owner_ids", lead_ids=ids, provider=self.connection.provider)
        if found is not None:
            self.lead_owner_ids = {i: found.get(i) for i in ids}

    def owner_id(self, instance) -> str:
        """The CRM owner id for the record's owner: a provider first (routing
        knows each rep's CRM owner id), else the owner's email matched
        against the pulled CRM owners; "" when neither knows."""
        provider = self.connection.provider
        if self.obj.key == "contact" and self.lead_owner_ids is not None and instance.pk in self.lead_owner_ids:
            provided = self.lead_owner_ids[instance.pk]
        elif self.obj.key == "contact":
            provided = hooks.call("crm_owner_id", lead_id=instance.pk, provider=provider)
        else:
            provided = (hooks.call("crm_user_owner_id", user_id=instance.owner_id, provider=provider)
                        if getattr(instance, "owner_id", None) else None)
        if provided:
            return str(provided)
        owner = getattr(instance, "owner", None) if getattr(instance, "owner_id", None) else None
        return self.owner_by_email.get((getattr(owner, "email", "") or "").lower(), "")

    def payload(self, instance) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.mappings:
            if m.local_field == "owner":
                value = self.owner_id(instance)
            elif m.local_field == "lifecycle_stage" and self.stage_values:
                key = read_local(instance, "lifecycle_stage")
                value = self.stage_values.get(key, "") if key else ""
            else:
                reader = self.obj.readers.get(m.local_field)
                try:
                    raw = reader(instance) if reader else read_local(instance, m.local_field)
                    value = to_remote(m.kind, raw, m.value_map)
                except (TransformError, ArithmeticError, ValueError) as exc:
                    raise PayloadError(f"{m.local_field}: {exc}") from None
            if value == "" and m.default:
                value = m.default
            if value == "":
                if m.required:
                    raise PayloadError(f"{m.local_field} is required by the mapping to {m.remote_field} but is empty")
                continue  # empty is not sent: a blank here never clears the CRM
            out[m.remote_field] = value
        return out


def payload_hash(properties: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(properties, sort_keys=True).encode()).hexdigest()


def record_hash(properties: dict[str, Any], associations: dict[str, list[str]],
                link_details: dict[str, dict[str, dict]] | None = None) -> str:
    """What the drain compares with the last push: the properties, plus the
    associations and link fields when there are any (so a record without
    them keeps the hash it always had)."""
    if link_details:
        return payload_hash({"properties": properties, "associations": associations, "links": link_details})
    return payload_hash({"properties": properties, "associations": associations} if associations else properties)


def _link_raw(links: list[objects.Link], instance) -> dict[str, dict[int, dict[str, Any]]]:
    return {link.key: link.details(instance) for link in links}


def _link_resolve(links: list[objects.Link], raw: dict[str, dict[int, dict[str, Any]]],
                  remote: dict[tuple[str, int], str]) -> tuple[dict[str, dict[str, dict]], list[tuple[str, int]]]:
    """Link fields by the associated records' remote ids; the local ids with
    no remote id yet are returned apart (the record waits for them)."""
    out: dict[str, dict[str, dict]] = {}
    missing: list[tuple[str, int]] = []
    for link in links:
        resolved = {}
        for local_id, fields in (raw.get(link.key) or {}).items():
            remote_id = remote.get((link.other, local_id))
            if remote_id:
                resolved[remote_id] = fields
            else:
                missing.append((link.other, local_id))
        if resolved:
            out[link.key] = dict(sorted(resolved.items()))
    return out, missing


def _remote_ids(connection: Connection, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
    """(object key, local id) -> remote id, from what was pushed or pulled,
    else the local model's remote id column."""
    out: dict[tuple[str, int], str] = {}
    for key, ids in wanted.items():
        if not ids:
            continue
        for local_id, remote_id in PushState.objects.filter(
                connection=connection, object=key, local_id__in=ids).exclude(remote_id="").values_list(
                "local_id", "remote_id"):
            out[(key, local_id)] = remote_id
        other = objects.get(key)
        # Every id column, in remote_id_of's order (a Salesforce Contact id before a Lead id).
        for column in dict.fromkeys([*other.id_prefixes.get(connection.provider, {}).values(),
                                     other.id_field(connection.provider)]):
            missing = [i for i in ids if (key, i) not in out]
            if not missing:
                break
            for local_id, remote_id in other.model_class.objects.filter(pk__in=missing).exclude(
                    **{f"{column}__isnull": True}).exclude(**{column: ""}).values_list("pk", column):
                out[(key, local_id)] = remote_id
    return out


def payload_preview(*, connection: Connection, obj: str, instance, connector: Connector | None = None
                    ) -> dict[str, Any]:
    """The exact request body the drain would send for one record (admin
    action): the connector's own batch body for a batch of one, with
    associations resolved as the drain resolves them."""
    object_type = objects.get(obj)
    if object_type.push is not None:
        # Not a record upsert (a segment mirror): its admin page shows the changes not sent yet.
        return {"error": f"{object_type.label} is not sent as a record; its own admin page shows what is not "
                         "sent yet"}
    connector = connector or connector_for(connection)
    try:
        properties = PayloadBuilder(connection, object_type).payload(instance)
    except PayloadError as exc:
        return {"error": str(exc)}
    key = object_type.upsert_key(instance) or (str(instance.pk) if getattr(connector, "upserts_by_local_id", False)
                                                else "")
    if not key:
        return {"error": f"{object_type.key_field} is empty: it is the upsert key of {object_type.label}"}
    links = object_type.associations(instance) if object_type.associations else {}
    link_specs = objects.links_synced_by(connector, object_type)
    raw = _link_raw(link_specs, instance)
    wanted = {k: set(v) for k, v in links.items()}
    for link in link_specs:
        wanted.setdefault(link.other, set()).update(raw[link.key])
    remote = _remote_ids(connection, wanted | {object_type.key: {instance.pk}})
    state = PushState.objects.filter(connection=connection, object=object_type.key, local_id=instance.pk).first()
    remote_id = (object_type.remote_id_of(instance, connection.provider)
                 or remote.get((object_type.key, instance.pk), ""))
    record = PushRecord(instance.pk, key, properties,
                        associations={k: [remote[(k, i)] for i in v if (k, i) in remote] for k, v in links.items()},
                        remote_id=remote_id, linked_before=_linked_before(state, remote_id),
                        link_details=_link_resolve(link_specs, raw, remote)[0])
    try:
        return connector.request_body(object_type.key, [record])
    except (TransientError, PermanentError) as exc:
        return {"error": str(exc)}  # e.g. the portal lacks the id property (its steps are in the message)


def _linked_before(state: PushState | None, remote_id: str) -> dict[str, list[str]] | None:
    """The associations the last push linked: none for a record never sent,
    None (not known) for one the CRM has but whose links were not kept."""
    if state is not None and state.associations is not None:
        return state.associations
    return None if remote_id or state is not None else {}


def lead_payload_preview(*, connection: Connection, lead: Lead) -> dict[str, Any]:
    """The exact payload the drain would send for ``lead`` (admin action)."""
    return payload_preview(connection=connection, obj="contact", instance=lead)
