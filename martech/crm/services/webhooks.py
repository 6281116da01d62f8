"""Webhook events received, then processed into pulls and deletions."""
from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.utils import timezone

from martech.crm import objects
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import Connector, PermanentError, RateLimited, TransientError
from martech.crm.models import Connection, SyncRun, WebhookReceipt
from martech.crm.services.allowance import _pause_for
from martech.crm.services.apply import pulled_apply
from martech.crm.services.deletions import _deleted_cursor_key, _deleted_records_apply

# --- webhooks -----------------------------------------------------------------

def webhook_receive(*, provider: str, events: list[dict]) -> list[int]:
    """Store accepted notifications, one per event id; returns the new
    receipts' ids (a redelivered event adds nothing)."""
    receipts = []
    for event in events:
        event_id = str(event.get("eventId") or "")
        if not event_id:
            continue
        receipt, created = WebhookReceipt.objects.get_or_create(
            provider=provider, event_id=event_id, defaults={"payload": event})
        if created:
            receipts.append(receipt.pk)
    return receipts


def webhook_process(*, receipt_ids: list[int], connector: Connector | None = None) -> int:
    """Fetch the records a batch of notifications names and apply each like
    a pulled one: one batch read per object type (``fetch_many``, 100 ids a
    call), not one GET per record, and a record named by several receipts
    is read once. A receipt whose record cannot be applied keeps the error."""
    receipts = list(WebhookReceipt.objects.filter(pk__in=receipt_ids, processed_at__isnull=True).order_by("pk"))
    connections: dict[str, Connection | None] = {}
    connectors: dict[str, Connector] = {}
    wanted: dict[tuple[str, str], list[WebhookReceipt]] = {}  # (provider, object) -> receipts
    for receipt in receipts:
        if receipt.provider not in connections:
            connections[receipt.provider] = Connection.objects.filter(provider=receipt.provider,
                                                                      is_active=True).first()
        connection = connections[receipt.provider]
        if connection is None:
            receipt.error = "no active connection"
            continue
        if connection.paused_until and connection.paused_until > timezone.now():
            # Not fetched during a limit's pause: the incremental pull after it brings the change.
            receipt.error = f"Paused until {connection.paused_until.isoformat()}: {connection.pause_reason}"[:2000]
            continue
        conn = connectors.setdefault(receipt.provider, connector or connector_for(connection))
        kind = str(receipt.payload.get("subscriptionType") or "")
        obj = _webhook_object(conn, kind)
        if obj is None or not _webhook_object_id(receipt.payload):
            receipt.error = f"subscription type {kind!r} not handled"
            continue
        if kind.endswith(".deletion") and objects.get(obj).remote_deleted is not None:
            # Deleted there (a deal): nothing to fetch; removed here as the deletions pull would.
            _webhook_deletion(connection, objects.get(obj), receipt)
            continue
        wanted.setdefault((receipt.provider, obj), []).append(receipt)
    for (provider, obj), group in wanted.items():
        connection, conn = connections[provider], connectors[provider]
        mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
        fields = sorted({m.remote_field for m in mappings})
        ids = sorted({_webhook_object_id(r.payload) for r in group})
        try:
            if hasattr(conn, "fetch_many"):
                fetched = {p.remote_id: p for p in conn.fetch_many(obj, ids, fields)}
            else:
                fetched = {i: p for i in ids if (p := conn.fetch_one(obj, i, fields)) is not None}
        except (TransientError, PermanentError) as exc:
            for receipt in group:
                receipt.error = str(exc)[:2000]
            if isinstance(exc, RateLimited):
                _pause_for(connection, exc)
            continue
        applied: dict[str, str] = {}  # remote id -> error ("" once applied)
        for receipt in group:
            remote_id = _webhook_object_id(receipt.payload)
            pulled = fetched.get(remote_id)
            if pulled is not None and remote_id not in applied:
                try:
                    pulled_apply(connection=connection, pulled=pulled, obj=obj, mappings=mappings, connector=conn)
                    applied[remote_id] = ""
                except ValidationError as exc:
                    applied[remote_id] = str(exc)[:2000]
            receipt.error = applied.get(remote_id, "")
    now = timezone.now()
    for receipt in receipts:
        receipt.processed_at = now
        receipt.save(update_fields=["processed_at", "error"])
    return len(receipts)


def _webhook_deletion(connection: Connection, obj: objects.ObjectType, receipt: WebhookReceipt) -> None:
    """An ``<object>.deletion`` notification for a type removed here when
    deleted in the CRM (``ObjectType.remote_deleted``): applied like a
    deletion the pull lists (``_deleted_records_apply``; one we never had,
    or removed already, changes nothing, as there)."""
    remote_id = _webhook_object_id(receipt.payload)
    at = receipt.payload.get("occurredAt")
    when = dt.datetime.fromtimestamp(int(at) / 1000, tz=dt.timezone.utc).isoformat() if at else ""
    tally = SyncRun(connection=connection, kind=SyncRun.Kind.PULL, object=_deleted_cursor_key(obj.key))
    _deleted_records_apply(connection, obj, [(remote_id, when)], tally)
    receipt.error = ""


def _webhook_object_id(payload: dict) -> str:
    """The record a notification names. An ``<object>.associationChange``
    (a contact added to or removed from a deal) has no objectId: it names
    ``fromObjectId`` -> ``toObjectId`` with an ``associationType`` such as
    "DEAL_TO_CONTACT" (HubSpot sends both directions); the subscribed
    object's side is the record to fetch, whose pull applies the change."""
    if payload.get("objectId"):
        return str(payload["objectId"])
    kind = str(payload.get("subscriptionType") or "")
    if kind.endswith(".associationChange"):
        prefix = kind.split(".", 1)[0].upper() + "_TO_"
        side = "fromObjectId" if str(payload.get("associationType") or "").startswith(prefix) else "toObjectId"
        return str(payload.get(side) or "")
    return ""


def _webhook_object(connector: Connector, subscription_type: str) -> str | None:
    """"company.propertyChange" -> "company" when the connector syncs it."""
    prefix = subscription_type.split(".", 1)[0]
    declared = getattr(connector, "objects", {}) or {}
    if prefix in declared:
        return prefix
    # The connector may name the object differently (e.g. its plural).
    for key, remote in declared.items():
        if remote == prefix:
            return key
    return None
