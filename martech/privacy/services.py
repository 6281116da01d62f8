"""Subject access export and erasure: one service each, called by the
admin, the API, the management commands and the tests alike.

Who may call them is the caller's check (the admin's and the API's
permissions); each call writes a ``PrivacyRequest`` naming who asked, when,
and a salted hash of whom, in the same transaction as what it did.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import EmptyResultSet
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection

from martech.crm import outbox
from martech.csvsafe import cell_escape
from martech.db import run_in_transaction
from martech.privacy import crm
from martech.privacy.models import CrmDeletion, PrivacyRequest
from martech.privacy.subjects import Subject, sections, subject_find
from martech.privacy.tombstones import digest, tombstones_add
from martech.services.leads import person_key_lock

log = logging.getLogger(__name__)

# Models whose rows an erasure keeps with the person taken out (the rest is deleted):
# attribution credits move to the "erased" placeholder (no touch), so revenue
# totals per channel and campaign stay what they were; the admin's change log
# keeps that a change was made, not about whom.
ANONYMIZED = ("attribution.AttributionCredit", "admin.LogEntry")
ERASED_REPR = "(erased)"


def _columns(qs) -> list[str]:
    return [f.attname for f in qs.model._meta.concrete_fields]


def _request_hash(subject: Subject) -> str:
    return digest(subject.named_by, subject.named)


# --- export ---------------------------------------------------------------------


@dataclass
class Export:
    request: PrivacyRequest
    document: dict[str, Any]

    def json(self) -> str:
        return json.dumps(self.document, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False)

    def zip(self) -> bytes:
        return export_zip(self.document)


def subject_export(*, email: str = "", lead_id: int | None = None, crm_id: str = "", actor=None,
                   source: str) -> Export:
    """Everything held about one person, by model (``"martech.Event"``:
    rows as stored, columns by name), in one JSON-able document, and the
    audit row (``PrivacyRequest`` of kind export: who, when, the subject's
    salted hash and the counts, never the data). Reads in one transaction,
    so the document is one consistent snapshot."""

    def run() -> Export:
        subject = subject_find(email=email, lead_id=lead_id, crm_id=crm_id)
        records: dict[str, list[dict[str, Any]]] = {}
        for label, qs in sections(subject):
            records[label] = list(qs.order_by("pk").values(*_columns(qs)))
        counts = {label: len(rows) for label, rows in records.items()}
        request = PrivacyRequest.objects.create(
            kind=PrivacyRequest.Kind.EXPORT, subject_kind=subject.named_by, subject_hash=_request_hash(subject),
            requested_by=actor, source=source[:100], counts=counts)
        document = {
            "request": request.pk,
            "generated_at": request.created_at,
            "subject": {"named_by": subject.named_by, "value": subject.named},
            "counts": counts,
            "records": records,
        }
        return Export(request=request, document=document)

    return run_in_transaction(run)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)
    elif value is None:
        value = ""
    elif not isinstance(value, str):
        value = DjangoJSONEncoder().default(value) if not isinstance(value, (int, float, bool)) else value
    return cell_escape(value)


def export_zip(document: dict[str, Any]) -> bytes:
    """The export as a zip: ``subject.json`` (the whole document) and one
    CSV per model with rows (JSON columns as JSON text, spreadsheet-safe cells)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("subject.json", json.dumps(document, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False))
        for label, rows in document["records"].items():
            if not rows:
                continue
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(list(rows[0]))
            for row in rows:
                writer.writerow([_cell(v) for v in row.values()])
            archive.writestr(f"{label}.csv", out.getvalue())
    return buffer.getvalue()


# --- erasure --------------------------------------------------------------------


def _crm_targets(subject: Subject) -> list[tuple[Any, str]]:
    """(connection, remote id) of the person in each active connection."""
    Connection = apps.get_model("crm", "Connection")
    targets = []
    for conn in Connection.objects.filter(is_active=True).order_by("pk"):
        if conn.provider == "hubspot":
            ids = subject.crm_ids.get("hubspot_id", set())
        else:
            ids = subject.crm_ids.get("salesforce_contact_id", set()) | subject.crm_ids.get("salesforce_lead_id", set())
        targets += [(conn, remote_id) for remote_id in sorted(ids)]
    return targets


def _delete_in_one_statement(qs) -> int:
    """``DELETE FROM table WHERE pk IN (<the queryset's pks>)``: no rows
    loaded, no signals (none are connected to these models)."""
    model = qs.model
    try:
        inner, params = qs.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:  # nothing to match (no lead, no anonymous id)
        return 0
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(model._meta.db_table)} WHERE {quote(model._meta.pk.column)} IN ({inner})",
                       params)
        return cursor.rowcount


def subject_erase(*, email: str = "", lead_id: int | None = None, crm_id: str = "", actor=None, source: str,
                  crm_delete: bool = True) -> PrivacyRequest:
    """Erase one person from every app, in one transaction:

    - delete their lead and every row about them (``subjects.sections``:
      events under the lead and under every anonymous id linked to it, form
      submissions, consent, stage history, tasks, scores and explanations,
      assignments, enrollments, messages, suppressions, audiences, contact
      roles, touchpoints, CRM outbox rows, push states, pull failures, list
      members, quarantined events and webhook payloads naming them);
    - keep their attribution credits with no touch (the "erased"
      placeholder): revenue totals by channel and campaign do not move;
    - blank the admin change log's text about them;
    - record salted-hash tombstones of their email, CRM ids and anonymous
      and user ids, so later imports, pulls, webhooks, forms and tracker
      calls are refused or suppressed (``tombstones.erased_keys``);
    - with ``crm_delete``, queue a delete of the person in each active CRM
      connection through the outbox (HubSpot GDPR delete, Salesforce delete);
    - write the receipt: a ``PrivacyRequest`` with counts per model, who and
      when, and the subject's salted hash, none of their data.

    Locks the lead first (the lock order of every lead write: lead, then its
    outbox and push state, then assignments), and is retried whole when the
    database aborts it for a concurrent write (``martech.db``). Erasing
    someone already erased finds nothing and writes an empty receipt."""

    def run() -> PrivacyRequest:
        # The person's key lock before their lead's row lock (lead_upsert
        # takes the same one before creating a lead): a create of this email
        # either committed before (and is erased here) or waits, then meets
        # the tombstone.
        person_key_lock([("email", str(email).strip().lower())] if email else [])
        subject = subject_find(email=email, lead_id=lead_id, crm_id=crm_id, lock=True)
        person_key_lock([("email", e) for e in subject.emails]
                        + [(column, v) for column, values in subject.crm_ids.items() for v in values])
        request = PrivacyRequest.objects.create(
            kind=PrivacyRequest.Kind.ERASURE, subject_kind=subject.named_by, subject_hash=_request_hash(subject),
            requested_by=actor, source=source[:100])
        targets = _crm_targets(subject) if crm_delete else []
        deleted: dict[str, int] = {}
        anonymized: dict[str, int] = {}
        # Rows that point at others go first (credits at touchpoints, executions
        # at enrollments, escalations at assignments), the lead last.
        for label, qs in reversed(sections(subject)):
            if label == "attribution.AttributionCredit":
                n = qs.model.objects.filter(pk__in=list(qs.values_list("pk", flat=True))).update(touchpoint=None)
                if n:
                    anonymized[label] = n
                continue
            if label == "admin.LogEntry":
                n = qs.model.objects.filter(pk__in=list(qs.values_list("pk", flat=True))).update(
                    object_repr=ERASED_REPR, change_message="")
                if n:
                    anonymized[label] = n
                continue
            if label == "martech.Event":
                # The big one (10,000 events is one ordinary visitor's year):
                # one statement, where Django's delete would load every row to
                # look for touchpoints, which are gone already (deleted just
                # before, under the lead's lock, which touchpoint rebuilds take
                # too). Touchpoints point at events without a database foreign
                # key (the events table is partitioned on PostgreSQL). There,
                # the events' trigger releases their dedupe keys.
                n = _delete_in_one_statement(qs)
                if n:
                    deleted[label] = n
                continue
            if label in ("martech.QuarantinedEvent", "crm.WebhookReceipt"):
                # Matched on their raw text (an annotation): deleted by key.
                qs = qs.model.objects.filter(pk__in=list(qs.values_list("pk", flat=True)))
            _, by_model = qs.delete()
            for model_label, n in by_model.items():
                if n:
                    deleted[model_label] = deleted.get(model_label, 0) + n
        tombstones_add(keys=subject.tombstone_keys(), request=request)
        crm_deletes: dict[str, int] = {}
        if targets:
            rows = CrmDeletion.objects.bulk_create(
                [CrmDeletion(request=request, connection=c, remote_id=r) for c, r in targets])
            # The CRM drain (every minute) sends them like any outbox row.
            outbox.enqueue([(row.connection_id, crm.KEY, row.pk) for row in rows])
            for conn, _ in targets:
                crm_deletes[conn.provider] = crm_deletes.get(conn.provider, 0) + 1
        request.counts = {"deleted": deleted, "anonymized": anonymized}
        request.crm_deletes = crm_deletes
        request.save(update_fields=["counts", "crm_deletes"])
        log.info("erasure #%s: %s rows deleted, %s anonymized, %s CRM deletes queued", request.pk,
                 sum(deleted.values()), sum(anonymized.values()), sum(crm_deletes.values()))
        return request

    return run_in_transaction(run)

