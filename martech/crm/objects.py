"""The CRM object registry: which local model an object type syncs with.

Everything the sync engine keeps is keyed by (connection, object type, local
record): outbox rows and dead letters (``OutboxItem``), what was last pushed
(``PushState``: remote id, payload hash, push time), field mappings
(``FieldMapping.object``), pull cursors (``SyncCursor``) and runs. The engine
(``services``) knows nothing about leads or deals: it asks the registry.

**An object type maps to a local model** by registering an ``ObjectType``::

    objects.register(ObjectType(
        key="deal",                        # stored in the rows above; a mapping's "object"
        label="Deal / Opportunity",
        model="attribution.Opportunity",   # app_label.Model, resolved lazily
        hook="opportunities",              # martech.hooks kind whose writes queue it
        write=opportunity_write,           # pull: write(instance, data, source) -> instance, through a service
        key_field="",                      # natural upsert key field ("email", "domain") or "" for the local id
        associations=deal_associations,    # instance -> {object key: [local ids]} (optional)
    ))

Core types (contact, company, task) are registered by ``martech.crm``;
a later stage registers its own from its AppConfig.ready (attribution's
``crm_sync.py`` registers "deal"), so martech never imports a later stage.

**A connector declares which object types it syncs** with ``objects``, a
dict from object key to the provider's object name (HubSpot:
``{"contact": "contacts", "company": "companies", ...}``; Salesforce could
map "lead" -> "Lead", "company" -> "Account"). The engine pushes, pulls and
lists only the types that are both registered and declared by the
connection's connector; other outbox rows wait (and show in the health page).

**Links** (``ObjectType.links``) are to-many associations that are records
of their own in some CRM, with fields of their own: a campaign's members
(Salesforce CampaignMember: Status) and a deal's contact roles (Salesforce
OpportunityContactRole: Role, IsPrimary). A connector that syncs one
declares it in ``links`` (link key -> its object name). The link's fields
are pushed with the parent record (hashed with it, so a role change pushes
the deal) and pulled by their own cursor (``services.links_pull``), each
through ``Link.apply`` (the parent's own service). Connectors that do not
declare a link get plain associations as before.

The write path queues a record in its own transaction: each object type's
``hook`` names the ``martech.hooks`` change hook its service calls
(``leads``, ``accounts``, ``tasks``, or any other kind through
``hooks.records_changed(kind, ...)``); ``outbox.register_queueing`` subscribes
a queueing function for it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import models

# Remote id column on the local model, per provider (models carry both).
DEFAULT_ID_FIELDS = {"hubspot": "hubspot_id", "salesforce": "salesforce_id"}


@dataclass(frozen=True)
class Link:
    key: str  # cursor and run key ("campaign_member", "contact_role"); at most 20 characters
    label: str
    other: str  # the associated object key ("contact")
    # Push: parent instance -> {local id of the other record: {field: value}}
    # (JSON-able values, hashed with the parent's payload).
    details: Callable[[Any], dict[int, dict[str, Any]]]
    # Pull: apply(*, parent, other, fields, remote_id, modified_at, source) writes one
    # pulled link through the parent's service; idempotent (a re-pull changes nothing).
    apply: Callable[..., None]
    # Removed here -> deleted in the CRM (contact roles). The links both sides
    # had are then kept per parent (PushState.links), so the push deletes only
    # what was removed here, never a CRM link not pulled yet. Campaign members
    # are never removed (a touch stays a fact).
    removable: bool = False
    # Deleted in the CRM (``services.deletions_pull``): remove(*, parent, other,
    # remote_id, deleted_at, source) -> bool takes it off here through the
    # parent's service (parent/other None when the CRM no longer says which);
    # idempotent, True when something here changed. None: deletions not pulled.
    remove: Callable[..., bool] | None = None


@dataclass(frozen=True)
class ObjectType:
    key: str
    label: str
    model: str
    hook: str
    # write(*, instance, data, source) -> instance. ``data`` holds converted
    # mapped values (local field -> value) and the remote id column; the
    # function writes through the object's own service (one dedupe path).
    write: Callable[..., models.Model]
    # write_many(*, items=[(instance or None, data)], source) -> [record | None | ValidationError],
    # one per item in order: a pulled page written in bulk through the
    # object's bulk service (leads: lead_upsert_many). Runs in the page's
    # transaction; an item refused is a ValidationError and wrote nothing; a
    # unique-key conflict raises IntegrityError and the page is then written
    # item by item through ``write``. None: ``write`` per record.
    write_many: Callable[..., list] | None = None
    # Local field holding the natural upsert key (lowercased when sent); ""
    # means the local primary key (the connector upserts by a unique property).
    key_field: str = ""
    id_fields: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ID_FIELDS))
    # Per provider, remote id prefix -> column, where one object type lands in
    # two columns (Salesforce: a lead is a Lead "00Q..." or a Contact "003...").
    id_prefixes: dict[str, dict[str, str]] = field(default_factory=dict)
    select_related: tuple[str, ...] = ()
    # instance -> {other object key: [local ids]}: pushed as associations.
    associations: Callable[[Any], dict[str, list[int]]] | None = None
    # Pull: associated object key -> local field taking the associated
    # record (a deal's company -> the opportunity's account).
    association_fields: dict[str, str] = field(default_factory=dict)
    # Pull: apply_associations(*, instance, linked={other key: [local instances]}, source)
    # for to-many associations (a deal's contacts -> contact roles). Optional.
    apply_associations: Callable[..., None] | None = None
    # Pull: remove_associations(*, instance, removed={other key: [local instances]}, source)
    # for links both sides had at the last sync (PushState.associations) that
    # the CRM no longer has: removed there, so removed here (a deal's contact
    # role, its account). Optional.
    remove_associations: Callable[..., None] | None = None
    # Written fields that queue a push even when no mapping names them
    # (associations, e.g. a deal's account).
    extra_trigger_fields: frozenset[str] = frozenset()
    # Push: how to read a local field when the plain value is not what maps
    # (a deal's stage FK -> its key, which the dealstage value map uses).
    readers: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    # To-many associations with fields of their own (see "Links" above).
    links: tuple[Link, ...] = ()
    # Push order inside one drain: associated types first (companies, contacts, then deals, tasks).
    order: int = 50
    # A type whose push is not a record upsert (a segment mirror's list
    # memberships, martech.crm.lists): push(connection, connector, builder,
    # items, run) sends the claimed outbox items and settles each of them
    # (services._finish / _fail), so the drain's claim, lease, retries, dead
    # letters and health apply to it unchanged. None: the upsert path.
    push: Callable[..., None] | None = None
    modified_field: str = "updated_at"
    # Deleted in the CRM (``services.deletions_pull``): remote_deleted(*,
    # instance, remote_id, deleted_at, source) -> bool removes the local
    # record through its service (a deal: with its credits), True when it
    # did. None: ours is kept and only its CRM id cleared.
    remote_deleted: Callable[..., bool] | None = None
    # Demo / starting mappings per provider: (local field, remote field, kind, extra FieldMapping fields).
    default_mappings: dict[str, list[tuple[str, str, str, dict]]] = field(default_factory=dict)

    @property
    def model_class(self) -> type[models.Model]:
        return apps.get_model(self.model)

    def upsert_key(self, instance) -> str:
        if not self.key_field:
            return str(instance.pk)
        return str(getattr(instance, self.key_field, "") or "").strip().lower()

    def remote_id_of(self, instance, provider: str) -> str:
        """The CRM id stored on the local record (a Salesforce Contact id before a Lead id)."""
        for column in [*self.id_prefixes.get(provider, {}).values(), self.id_field(provider)]:
            value = getattr(instance, column, None)
            if value:
                return str(value)
        return ""

    def id_field(self, provider: str, remote_id: str = "") -> str:
        for prefix, column in self.id_prefixes.get(provider, {}).items():
            if remote_id.startswith(prefix):
                return column
        return self.id_fields.get(provider, f"{provider}_id")


_registry: dict[str, ObjectType] = {}
_listeners: list[Callable[[ObjectType], None]] = []


def register(obj: ObjectType) -> ObjectType:
    """Add (or replace) an object type; idempotent for AppConfig.ready re-runs."""
    _registry[obj.key] = obj
    for listener in list(_listeners):
        listener(obj)
    return obj


def on_register(fn: Callable[[ObjectType], None]) -> None:
    """``fn(obj)`` for every type registered so far and later (the outbox subscribes its hook)."""
    _listeners.append(fn)
    for obj in list(_registry.values()):
        fn(obj)


def get(key: str) -> ObjectType:
    try:
        return _registry[key]
    except KeyError:
        raise LookupError(f"No CRM object type {key!r} is registered (known: {', '.join(sorted(_registry))}).") \
            from None


def all_types() -> list[ObjectType]:
    return sorted(_registry.values(), key=lambda o: (o.order, o.key))


def choices() -> list[tuple[str, str]]:
    """Callable choices for the ``object`` columns: the registry, not a migration, decides."""
    return [(o.key, o.label) for o in all_types()]


def get_link_keys() -> set[str]:
    """Every registered link's key."""
    return {link.key for obj in _registry.values() for link in obj.links}


def links_synced_by(connector, obj: ObjectType) -> list[Link]:
    """The links of ``obj`` this connector declares (``connector.links``)."""
    declared = getattr(connector, "links", {}) or {}
    return [link for link in obj.links if link.key in declared]


def synced_by(connector) -> list[ObjectType]:
    """The registered types this connector declares (``connector.objects``)."""
    declared = getattr(connector, "objects", {}) or {}
    return [o for o in all_types() if o.key in declared]
