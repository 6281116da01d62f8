"""Sync services: build payloads, drain the outbox, pull changes, owners,
webhooks. Commands, tasks and the admin all call these."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from martech import hooks
from martech.crm.connectors import connector_for
from martech.crm.connectors.base import AuthError, Connector, PermanentError, PushRecord, TransientError
from martech.crm.models import (
    Connection,
    CrmOwner,
    FieldMapping,
    LifecycleMapping,
    OutboxItem,
    PushState,
    SyncCursor,
    SyncRun,
    WebhookReceipt,
)
from martech.crm.transforms import TransformError, read_local, to_local, to_remote
from martech.models import Lead

log = logging.getLogger(__name__)
LEASE = dt.timedelta(minutes=5)


class PayloadError(ValueError):
    """A record that cannot be sent as it is (required field empty, no picklist value)."""


# --- payloads -----------------------------------------------------------------

class PayloadBuilder:
    """Turns leads into CRM properties for one connection, with the
    mappings, lifecycle values and owners loaded once."""

    def __init__(self, connection: Connection, obj: str = "contact"):
        self.connection = connection
        self.mappings = [m for m in connection.mappings.filter(object=obj).order_by("pk") if m.pushes]
        self.stage_values = {
            lm.stage.key: lm.remote_value
            for lm in LifecycleMapping.objects.filter(connection=connection, push_default=True).select_related("stage")
        }
        self.owner_by_email = {
            o.email.lower(): o.remote_id for o in CrmOwner.objects.filter(connection=connection, is_active=True)
            if o.email
        }

    def owner_id(self, lead: Lead) -> str:
        provided = hooks.call("crm_owner_id", lead_id=lead.pk, provider=self.connection.provider)
        if provided:
            return str(provided)
        email = getattr(lead.owner, "email", "") if lead.owner_id else ""
        return self.owner_by_email.get((email or "").lower(), "")

    def payload(self, lead: Lead) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.mappings:
            if m.local_field == "owner":
                value = self.owner_id(lead)
            elif m.local_field == "lifecycle_stage" and self.stage_values:
                key = read_local(lead, "lifecycle_stage")
                value = self.stage_values.get(key, "") if key else ""
            else:
                try:
                    value = to_remote(m.kind, read_local(lead, m.local_field), m.value_map)
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


def payload_hash(properties: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(properties, sort_keys=True).encode()).hexdigest()


def lead_payload_preview(*, connection: Connection, lead: Lead) -> dict[str, Any]:
    """The exact payload the drain would send for ``lead`` (admin action)."""
    builder = PayloadBuilder(connection)
    try:
        properties = builder.payload(lead)
    except PayloadError as exc:
        return {"error": str(exc)}
    if connection.provider == "salesforce":
        from martech.crm.connectors.salesforce import SalesforceConnector

        return SalesforceConnector(connection).preview(lead, properties)  # builds the body, calls nothing
    return {"inputs": [{"id": lead.email or "", "idProperty": "email", "properties": properties}]}


# --- API allowance ------------------------------------------------------------

def _count_calls(connection: Connection, n: int) -> None:
    today = timezone.now().date()
    if connection.api_calls_day != today:
        connection.api_calls_day, connection.api_calls_used = today, 0
    connection.api_calls_used += n
    Connection.objects.filter(pk=connection.pk).update(api_calls_day=today, api_calls_used=connection.api_calls_used)


def budget_left(connection: Connection) -> int:
    if connection.api_calls_day != timezone.now().date():
        return connection.daily_api_limit
    return max(connection.daily_api_limit - connection.api_calls_used, 0)


def _record_error(connection: Connection, message: str, *, stop: bool = False) -> None:
    connection.last_error, connection.last_error_at = message[:2000], timezone.now()
    fields = {"last_error": connection.last_error, "last_error_at": connection.last_error_at}
    if stop:
        connection.stopped_reason = message[:2000]
        fields["stopped_reason"] = connection.stopped_reason
    Connection.objects.filter(pk=connection.pk).update(**fields)


# --- push ---------------------------------------------------------------------

def _claim(connection: Connection, limit: int) -> list[OutboxItem]:
    """Take due pending items under a lease, so two drains never send the
    same record at once; an item whose drain died is due again after LEASE."""
    now = timezone.now()
    with transaction.atomic():
        items = list(
            OutboxItem.objects.select_for_update(skip_locked=True)
            .filter(connection=connection, status=OutboxItem.Status.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at", "pk")[:limit]
        )
        if items:
            OutboxItem.objects.filter(pk__in=[i.pk for i in items]).update(next_attempt_at=now + LEASE)
    return items


def _fail(items: Iterable[OutboxItem], error: str, *, dead_now: bool = False) -> int:
    max_attempts = settings.MARTECH_CRM["MAX_ATTEMPTS"]
    now = timezone.now()
    dead = 0
    for item in items:
        item.attempts += 1
        item.last_error = error[:4000]
        if dead_now or item.attempts >= max_attempts:
            item.status = OutboxItem.Status.DEAD
            dead += 1
        else:
            backoff = settings.MARTECH_CRM["BACKOFF_BASE"] * 60 * (2 ** (item.attempts - 1))
            item.next_attempt_at = now + dt.timedelta(seconds=backoff)
    OutboxItem.objects.bulk_update(list(items), ["attempts", "last_error", "status", "next_attempt_at"], batch_size=500)
    return dead


def outbox_drain(*, connection: Connection, connector: Connector | None = None, max_items: int | None = None,
                 progress=None, batch: int | None = None) -> SyncRun:
    """Push what is due for ``connection``; returns the recorded SyncRun.

    Unchanged payloads (same hash as the last push) are skipped without a
    call. A record the CRM refuses is failed alone; after MAX_ATTEMPTS it is
    a dead letter. Near the daily allowance (SLOWDOWN_AT) one batch per run
    is sent; at the allowance nothing is. ``batch`` overrides DRAIN_BATCH
    (a Salesforce backfill claims more, so it goes through Bulk API 2.0)."""
    conf = settings.MARTECH_CRM
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PUSH, object="contact")
    if connection.stopped_reason or not connection.is_active:
        run.error = connection.stopped_reason or "connection inactive"
        run.finished_at = timezone.now()
        run.save()
        return run
    connector = connector or connector_for(connection)
    builder = PayloadBuilder(connection)
    done = 0
    try:
        while max_items is None or done < max_items:
            left = budget_left(connection)
            if left <= 0:
                run.error = "Daily API allowance used; pushing resumes tomorrow."
                _record_error(connection, run.error)
                break
            slow = left <= connection.daily_api_limit * (1 - conf["SLOWDOWN_AT"])
            limit = 100 if slow else (batch or conf["DRAIN_BATCH"])
            if max_items is not None:
                limit = min(limit, max_items - done)
            items = _claim(connection, limit)
            if not items:
                break
            done += len(items)
            _push_items(connection, connector, builder, items, run)
            if progress is not None:
                progress.update(len(items))
            if slow:
                break
    except AuthError as exc:
        run.error = f"Stopped: {exc}"
        _record_error(connection, run.error, stop=True)
    finally:
        run.api_calls = connector.stats.api_calls
        _count_calls(connection, 0)
        run.finished_at = timezone.now()
        run.save()
    return run


def _push_items(connection, connector, builder, items, run) -> None:
    leads = Lead.objects.select_related("owner", "lifecycle_stage").in_bulk([i.local_id for i in items])
    states = {s.local_id: s for s in PushState.objects.filter(connection=connection, object="contact",
                                                                 local_id__in=[i.local_id for i in items])}
    to_send: list[tuple[OutboxItem, PushRecord, str]] = []
    finished: list[OutboxItem] = []
    for item in items:
        lead = leads.get(item.local_id)
        if lead is None or (connection.provider == "hubspot" and not lead.email):
            # A deleted or merged-away lead, or one with no upsert key (Salesforce upserts by our id).
            _fail([item], "lead deleted or has no email (HubSpot upserts contacts by email)" if lead else
                  "lead deleted or merged away", dead_now=True)
            run.failed += 1
            continue
        try:
            properties = builder.payload(lead)
        except PayloadError as exc:
            _fail([item], str(exc), dead_now=True)  # retrying cannot fix the data; a fix re-queues it
            run.failed += 1
            continue
        digest = payload_hash(properties)
        state = states.get(item.local_id)
        if state is not None and state.payload_hash == digest:
            finished.append(item)
            run.skipped += 1
            continue
        target, remote_id = connector.route(lead) if hasattr(connector, "route") else ("", "")
        to_send.append((item, PushRecord(item.local_id, (lead.email or "").lower(), properties, target, remote_id),
                        digest))
    _finish(finished)
    if not to_send:
        return
    before = connector.stats.api_calls
    try:
        results = connector.push_batch("contact", [r for _, r, _ in to_send])
    except TransientError as exc:
        _count_calls(connection, connector.stats.api_calls - before)
        run.failed += len(to_send)
        _record_error(connection, str(exc))
        _fail([i for i, _, _ in to_send], str(exc))
        return
    except AuthError:
        _count_calls(connection, connector.stats.api_calls - before)
        _release([i for i, _, _ in to_send])
        raise
    except PermanentError as exc:
        _count_calls(connection, connector.stats.api_calls - before)
        run.failed += len(to_send)
        _record_error(connection, str(exc))
        _fail([i for i, _, _ in to_send], str(exc))
        return
    _count_calls(connection, connector.stats.api_calls - before)
    by_id = {r.local_id: r for r in results}
    now = timezone.now()
    ok_items, new_states, remote_ids = [], [], {}
    for item, record, digest in to_send:
        result = by_id.get(item.local_id)
        if result is None or result.error:
            error = result.error if result else "missing from the CRM's answer"
            _fail([item], error)
            run.failed += 1
            continue
        ok_items.append(item)
        run.pushed += 1
        new_states.append(PushState(connection=connection, object="contact", local_id=item.local_id,
                                    remote_id=result.remote_id, payload_hash=digest, pushed_at=now))
        remote_ids[item.local_id] = result.remote_id
    with transaction.atomic():
        PushState.objects.bulk_create(
            new_states, update_conflicts=True, unique_fields=["connection", "object", "local_id"],
            update_fields=["remote_id", "payload_hash", "pushed_at"], batch_size=500,
        )
        _finish(ok_items)
        _store_remote_ids(connection, remote_ids, leads)


def _remote_id_field(provider: str, remote_id: str) -> str:
    """The Lead field that holds this CRM id."""
    if provider == "salesforce":
        from martech.crm.connectors.salesforce import local_id_field

        return local_id_field(remote_id)
    return "hubspot_id"


def _store_remote_ids(connection: Connection, remote_ids: dict[int, str], leads: dict[int, Lead]) -> None:
    changed, fields = [], set()
    for local_id, remote_id in remote_ids.items():
        lead = leads[local_id]
        field = _remote_id_field(connection.provider, remote_id)
        if remote_id and getattr(lead, field) != remote_id:
            setattr(lead, field, remote_id)
            changed.append(lead)
            fields.add(field)
    if changed:
        Lead.objects.bulk_update(changed, sorted(fields), batch_size=500)
        hooks.leads_changed(ids=[lead.pk for lead in changed], fields=sorted(fields),
                            source=f"crm:{connection.provider}")


def _finish(items: list[OutboxItem]) -> None:
    if items:
        OutboxItem.objects.filter(pk__in=[i.pk for i in items]).update(
            status=OutboxItem.Status.DONE, last_error="", updated_at=timezone.now())


def _release(items: list[OutboxItem]) -> None:
    OutboxItem.objects.filter(pk__in=[i.pk for i in items]).update(next_attempt_at=timezone.now())


@transaction.atomic
def dead_letter_retry(*, items: Iterable[OutboxItem], actor=None) -> int:
    """Put dead letters back in the queue (admin action). A record that
    already has a pending row keeps that one."""
    n = 0
    for item in items:
        if item.status != OutboxItem.Status.DEAD:
            continue
        pending = OutboxItem.objects.filter(connection_id=item.connection_id, object=item.object,
                                            local_id=item.local_id, status=OutboxItem.Status.PENDING).exists()
        if pending:
            item.status = OutboxItem.Status.DONE
            item.last_error = f"superseded by a pending push (retried by {actor or 'system'})"
        else:
            item.status, item.attempts = OutboxItem.Status.PENDING, 0
            item.next_attempt_at = timezone.now()
        item.save(update_fields=["status", "attempts", "next_attempt_at", "last_error", "updated_at"])
        n += 1
    log.info("dead letters retried: %s by %s", n, actor)
    return n


# --- pull ---------------------------------------------------------------------

def _local_changed_since_sync(connection: Connection, lead: Lead) -> bool:
    if OutboxItem.objects.filter(connection=connection, object="contact", local_id=lead.pk,
                                 status=OutboxItem.Status.PENDING).exists():
        return True
    state = PushState.objects.filter(connection=connection, object="contact", local_id=lead.pk).first()
    return state is None or (state.pushed_at is not None and lead.updated_at > state.pushed_at)


def _parse_time(value: str) -> dt.datetime | None:
    try:
        return to_local("datetime", value)
    except TransformError:
        return None


def pulled_apply(*, connection: Connection, pulled, mappings: list[FieldMapping] | None = None,
                 dry_run: bool = False) -> str:
    """Write one pulled record through ``lead_upsert``; returns 'pulled',
    'skipped' or raises ValidationError/TransformError naming the field."""
    from martech.services.leads import lead_upsert

    if mappings is None:
        mappings = [m for m in connection.mappings.filter(object="contact") if m.pulls]
    stage_by_value = {lm.remote_value: lm.stage.key for lm in
                      LifecycleMapping.objects.filter(connection=connection).select_related("stage")}
    props = pulled.properties
    email = (props.get("email") or props.get("Email") or "").strip().lower()
    id_field = _remote_id_field(connection.provider, pulled.remote_id)
    lead = Lead.objects.filter(Q(**{id_field: pulled.remote_id}) | (Q(email=email) if email else Q(pk=None))).first()
    take_all = True
    if lead is not None and _local_changed_since_sync(connection, lead):
        if connection.conflict_rule == Connection.ConflictRule.MOST_RECENT:
            remote_at = _parse_time(pulled.modified_at)
            take_all = remote_at is not None and remote_at > lead.updated_at
            if not take_all:
                return "skipped"
        else:
            take_all = False
    data: dict[str, Any] = {id_field: pulled.remote_id}
    if email:
        data["email"] = email
    properties: dict[str, Any] = {}
    for m in mappings:
        if m.local_field in ("owner", "email") or m.remote_field not in props:
            continue
        if not take_all and m.system_of_record != FieldMapping.Owner.REMOTE:
            continue  # both sides changed: the local side is this field's system of record
        raw = props.get(m.remote_field)
        if m.local_field == "lifecycle_stage" and stage_by_value:
            value = stage_by_value.get(raw)
        else:
            try:
                value = to_local(m.kind, raw, m.value_map)
            except TransformError as exc:
                raise ValidationError({m.local_field: f"{m.remote_field}: {exc}"}) from None
        if value is None:
            continue
        if isinstance(value, list):
            value = ";".join(value) if not m.local_field.startswith("properties.") else value
        if m.local_field.startswith("properties."):
            properties[m.local_field.removeprefix("properties.")] = (
                str(value) if hasattr(value, "as_tuple") or isinstance(value, (dt.date,)) else value)
        else:
            data[m.local_field] = value
    if properties:
        data["properties"] = properties
    if dry_run:
        return "pulled"
    lead, _ = lead_upsert(data=data, source=f"crm:{connection.provider}")
    _mark_synced(connection, lead, pulled.remote_id)
    return "pulled"


def _mark_synced(connection: Connection, lead: Lead, remote_id: str) -> None:
    """After a pull both sides agree: store the payload we would now push,
    so the lead is not seen as changed here on the next pull and an
    identical push is skipped."""
    lead = Lead.objects.select_related("owner", "lifecycle_stage").get(pk=lead.pk)
    try:
        digest = payload_hash(PayloadBuilder(connection).payload(lead))
    except PayloadError:
        digest = ""
    PushState.objects.update_or_create(
        connection=connection, object="contact", local_id=lead.pk,
        defaults={"remote_id": remote_id, "payload_hash": digest, "pushed_at": timezone.now()})


def pull_changes(*, connection: Connection, obj: str = "contact", full: bool = False, dry_run: bool = False,
                 connector: Connector | None = None, progress=None) -> SyncRun:
    """Incremental pull since the stored cursor (HubSpot search on
    lastmodifieddate). Each record goes through ``lead_upsert``, the one
    dedupe path. The cursor advances only past records handled."""
    run = SyncRun.objects.create(connection=connection, kind=SyncRun.Kind.PULL, object=obj)
    connector = connector or connector_for(connection)
    cursor, _ = SyncCursor.objects.get_or_create(connection=connection, object=obj)
    mappings = [m for m in connection.mappings.filter(object=obj) if m.pulls]
    newest = cursor.value
    try:
        for pulled in connector.pull_since(obj, "" if full else cursor.value, [m.remote_field for m in mappings]):
            try:
                outcome = pulled_apply(connection=connection, pulled=pulled, mappings=mappings, dry_run=dry_run)
            except ValidationError as exc:
                run.failed += 1
                run.error = f"{pulled.remote_id}: {exc.message_dict if hasattr(exc, 'message_dict') else exc}"[:2000]
                outcome = None
            if outcome == "pulled":
                run.pulled += 1
            elif outcome == "skipped":
                run.skipped += 1
            newest = max(newest, pulled.modified_at)
            if progress is not None:
                progress.update(1)
    except (TransientError, PermanentError) as exc:
        run.error = str(exc)[:2000]
        _record_error(connection, run.error, stop=isinstance(exc, AuthError))
    finally:
        if not dry_run and newest != cursor.value:
            cursor.value = newest
            cursor.save(update_fields=["value", "updated_at"])
        run.api_calls = connector.stats.api_calls
        _count_calls(connection, run.api_calls)
        run.finished_at = timezone.now()
        run.save()
    return run


def owners_pull(*, connection: Connection, connector: Connector | None = None) -> int:
    connector = connector or connector_for(connection)
    rows = connector.owners()
    for row in rows:
        CrmOwner.objects.update_or_create(connection=connection, remote_id=row["remote_id"],
                                          defaults={k: v for k, v in row.items() if k != "remote_id"})
    _count_calls(connection, connector.stats.api_calls)
    return len(rows)


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
    """Fetch each notified contact and apply it like a pulled record."""
    done = 0
    for receipt in WebhookReceipt.objects.filter(pk__in=receipt_ids, processed_at__isnull=True):
        connection = Connection.objects.filter(provider=receipt.provider, is_active=True).first()
        if connection is None:
            receipt.error = "no active connection"
        else:
            conn = connector or connector_for(connection)
            object_id = str(receipt.payload.get("objectId") or "")
            kind = str(receipt.payload.get("subscriptionType") or "")
            try:
                if kind.startswith("contact.") and object_id:
                    mappings = [m for m in connection.mappings.filter(object="contact") if m.pulls]
                    pulled = conn.fetch_one("contact", object_id, [m.remote_field for m in mappings] + ["email"])
                    if pulled is not None:
                        pulled_apply(connection=connection, pulled=pulled, mappings=mappings)
                else:
                    receipt.error = f"subscription type {kind!r} not handled"
            except (ValidationError, TransientError, PermanentError) as exc:
                receipt.error = str(exc)[:2000]
        receipt.processed_at = timezone.now()
        receipt.save(update_fields=["processed_at", "error"])
        done += 1
    return done
