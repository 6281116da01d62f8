"""CSV import of leads: the bulk twin of ``lead_upsert``.

Why not django-import-export's import: its admin flow only offers "Confirm
import" when the dry run has no validation errors at all (and its
skip-confirm mode rolls back on any), so one bad email would stop a 10,000-row
file; and it resolves and saves row by row. Ops need the opposite: keep the
valid rows, list the bad ones by row and field, and take a big file in
seconds. The export still uses django-import-export (``martech.resources``).

Every row goes through ``clean_lead_data`` (the capture path's validation and
normalization) and finds its lead by the same key as ``lead_upsert``: the
normalized email, else a CRM id. Blank cells never clear stored values,
custom properties merge key by key, a new lead gets the default stage, stage
changes write ``StageTransition`` rows with the acting user, and the same
signals are sent after commit. Importing the same file twice updates, never
duplicates (the second run changes nothing).

Rows are written per chunk, in one transaction per chunk, with a handful of
queries per chunk (look-ups, one account query, bulk insert, bulk update,
bulk insert of transitions). If a chunk hits a unique-key conflict (a capture
created the same lead meanwhile, or two rows of the file claim one CRM id),
that chunk is redone row by row through ``lead_upsert`` so each row gets its
own answer.
"""
from __future__ import annotations

import codecs
import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from martech import hooks, signals
from martech.csvsafe import cell_unescape
from martech.models import Account, Lead, LifecycleStage, StageTransition
from martech.resources import EXPORT_ONLY_COLUMNS, IMPORT_COLUMNS
from martech.services.leads import CRM_KEYS, ERASED_MESSAGE, clean_lead_data, erased_keys, lead_upsert
from martech.services.normalize import free_mail_domains, normalize_domain

log = logging.getLogger(__name__)

CHUNK_SIZE = 1000
# bulk_update builds a CASE WHEN per row and field; its cost is mostly
# Django's (about 0.5 ms a changed row measured), not the database's.
UPDATE_BATCH = 500
NON_FIELD = "row"


@dataclass(frozen=True)
class RowError:
    row: int  # the spreadsheet row: the header is row 1, the first lead row 2
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.message}"


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def invalid_rows(self) -> int:
        return len({e.row for e in self.errors})

    @property
    def valid_rows(self) -> int:
        return self.rows - self.invalid_rows

    def summary(self) -> str:
        return (
            f"{self.rows} rows: {self.created} leads created, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.invalid_rows} rows with errors."
        )


@dataclass
class _Row:
    number: int
    raw: dict[str, Any]  # what lead_upsert would get (non-blank cells)
    cleaned: dict[str, Any]
    stage: LifecycleStage | None


# --- reading ----------------------------------------------------------------


def _text_lines(file: IO) -> Iterator[str]:
    """Lines of an uploaded file, bytes or text; a UTF-8 BOM (Excel) is dropped."""
    first = file.read(0)
    if isinstance(first, bytes):
        yield from codecs.iterdecode(file, "utf-8-sig")
    else:
        yield from file


def _check_header(header: list[str]) -> list[str]:
    columns = [h.strip().lower() for h in header]
    known = set(IMPORT_COLUMNS) | set(EXPORT_ONLY_COLUMNS) | {"properties"}
    unknown = [c for c in columns if c not in known and not (c.startswith("properties.") and len(c) > 11)]
    if unknown:
        raise ValidationError(
            {"file": [f"Unknown column(s): {', '.join(unknown)}. Use: {', '.join(IMPORT_COLUMNS)}, properties.<name>."]}
        )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ValidationError({"file": [f"Column(s) given twice: {', '.join(dupes)}."]})
    if not ({"email", *CRM_KEYS} & set(columns)):
        raise ValidationError({"file": ["The file needs an email column (or a CRM id column)."]})
    return columns


def _parse_rows(
    lines: Iterable[str], *, stages: dict[str, LifecycleStage], report: ImportReport
) -> Iterator[_Row]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationError({"file": ["The file is empty."]}) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValidationError({"file": [f"Not a readable UTF-8 CSV file: {exc}"]}) from None
    columns = _check_header(header)
    ignored = set(EXPORT_ONLY_COLUMNS)
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            # The rest of the file cannot be read reliably: say where it broke.
            report.rows += 1
            report.errors.append(RowError(number + 1, NON_FIELD, f"Unreadable from here on: {exc}"))
            return
        number += 1
        if not any(c.strip() for c in cells):
            continue  # a blank line, as spreadsheets leave at the end
        report.rows += 1
        if len(cells) > len(columns):
            report.errors.append(RowError(number, NON_FIELD, f"{len(cells)} cells but {len(columns)} columns."))
            continue
        raw: dict[str, Any] = {}
        errors: list[RowError] = []
        for column, value in zip(columns, cells):
            value = cell_unescape(value.strip())
            if not value or column in ignored:
                continue  # blank cells never clear stored values (as in lead_upsert)
            if column == "properties":
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    errors.append(RowError(number, column, "Give a JSON object, e.g. {\"plan\": \"pro\"}."))
                    continue
                value = parsed
            raw[column] = value
        try:
            cleaned = clean_lead_data(raw)
        except ValidationError as exc:
            errors.extend(RowError(number, f, m) for f, msgs in exc.message_dict.items() for m in msgs)
            cleaned = {}
        if not errors and not cleaned.get("email") and not any(cleaned.get(k) for k in CRM_KEYS):
            errors.append(RowError(number, "email", "An email (or a CRM id) is required."))
        stage = None
        if not errors and cleaned.get("lifecycle_stage"):
            stage = stages.get(cleaned["lifecycle_stage"])
            if stage is None:
                key = cleaned["lifecycle_stage"]
                errors.append(RowError(number, "lifecycle_stage", f"Unknown lifecycle stage {key!r}."))
        if errors:
            report.errors.extend(errors)
            continue
        cleaned.pop("lifecycle_stage", None)
        yield _Row(number=number, raw=raw, cleaned=cleaned, stage=stage)


def _without_erased(chunk: list[_Row], report: ImportReport) -> list[_Row]:
    """Rows about an erased person are row errors naming the field (one
    tombstone look-up per chunk); the bulk path below never meets them."""
    keys = {(k, r.cleaned[k]) for r in chunk for k in ("email", *CRM_KEYS) if r.cleaned.get(k)}
    erased = erased_keys(sorted(keys))
    if not erased:
        return chunk
    kept = []
    for row in chunk:
        hit = next((k for k in ("email", *CRM_KEYS) if (k, row.cleaned.get(k)) in erased), None)
        if hit is None:
            kept.append(row)
        else:
            report.errors.append(RowError(row.number, hit, ERASED_MESSAGE))
    return kept


def _chunks(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    chunk: list[_Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- writing ----------------------------------------------------------------


@dataclass
class _Plan:
    lead: Lead
    created: bool
    changed: set[str] = field(default_factory=set)
    stage: LifecycleStage | None = None
    needs_account: bool = False


def _current(lead: Lead, key: str) -> Any:
    value = getattr(lead, key)
    if key == "phone":
        # Compare E.164 strings: PhoneNumber == str parses the string again,
        # and parsing is most of an import's CPU time.
        return str(value) if value else ""
    return value


def _apply(plan: _Plan, row: _Row) -> None:
    lead = plan.lead
    for key, value in row.cleaned.items():
        if key == "properties":
            merged = {**lead.properties, **value}
            if merged != lead.properties:
                lead.properties = merged
                plan.changed.add("properties")
        elif value not in ("", None) and _current(lead, key) != value:
            setattr(lead, key, value)
            plan.changed.add(key)
    if "email" in plan.changed and lead.account_id is None:
        plan.needs_account = True
    if row.stage is not None:
        plan.stage = row.stage


def _write_chunk(
    chunk: list[_Row], *, source: str, actor, default_stage: LifecycleStage | None
) -> tuple[int, int, int]:
    """Upsert one chunk in bulk. Returns (created, updated, unchanged)."""
    emails = {r.cleaned["email"] for r in chunk if r.cleaned.get("email")}
    crm_q = Q()
    for key in CRM_KEYS:
        values = {r.cleaned[key] for r in chunk if r.cleaned.get(key)}
        if values:
            crm_q |= Q(**{f"{key}__in": values})
    lookup = Q(email__in=emails) if emails else Q()
    lookup |= crm_q
    # Locked, so a concurrent edit of these leads waits for this chunk instead
    # of being overwritten by bulk_update's stale copy; in primary key order,
    # as every path that locks several leads takes them (README, lock order).
    found = list(Lead.objects.select_for_update().filter(lookup).order_by("pk")) if lookup else []
    by_key: dict[tuple[str, str], _Plan] = {}
    plans: dict[int, _Plan] = {}  # id(plan) -> plan, in first-seen order
    for lead in found:
        plan = _Plan(lead=lead, created=False)
        plans[id(plan)] = plan
        for key in ("email", *CRM_KEYS):
            if getattr(lead, key):
                by_key[(key, getattr(lead, key))] = plan

    for row in chunk:
        # The same order as services.leads._find_lead: email, then CRM ids.
        plan = None
        for key in ("email", *CRM_KEYS):
            value = row.cleaned.get(key)
            if value and (key, value) in by_key:
                plan = by_key[(key, value)]
                break
        if plan is None:
            lead = Lead(properties={})
            plan = _Plan(lead=lead, created=True, needs_account=True)
            plans[id(plan)] = plan
        _apply(plan, row)
        for key in ("email", *CRM_KEYS):
            if getattr(plan.lead, key):
                by_key[(key, getattr(plan.lead, key))] = plan

    # One query for the accounts of every new (or newly emailed) lead.
    domains = {}
    for plan in plans.values():
        if plan.needs_account and plan.lead.email:
            domain = normalize_domain(plan.lead.email.rpartition("@")[2])
            if domain and domain not in free_mail_domains():
                domains[id(plan)] = domain
    accounts = {a.domain: a for a in Account.objects.filter(domain__in=set(domains.values()))} if domains else {}
    now = timezone.now()
    new_leads, updated_leads, transitions, update_fields = [], [], [], set()
    unchanged = 0
    for key, plan in plans.items():
        lead = plan.lead
        account = accounts.get(domains.get(key))
        if account is not None and lead.account_id is None:
            lead.account = account
            plan.changed.add("account")
            if plan.created and not lead.company_name:
                lead.company_name = account.name
        stage = plan.stage or (default_stage if plan.created else None)
        if stage is not None and stage.pk != lead.lifecycle_stage_id:
            transitions.append(
                (
                    lead,
                    StageTransition(
                        from_stage_id=lead.lifecycle_stage_id,
                        to_stage=stage,
                        changed_at=now,
                        reason="created" if plan.created else "set on upsert",
                        actor=actor,
                        source=source[:100],
                    ),
                )
            )
            lead.lifecycle_stage = stage
            plan.changed.add("lifecycle_stage")
        if plan.created:
            new_leads.append(lead)
        elif plan.changed:
            lead.updated_at = now
            updated_leads.append(lead)
            update_fields |= plan.changed
        else:
            unchanged += 1

    Lead.objects.bulk_create(new_leads, batch_size=500)
    if updated_leads:
        Lead.objects.bulk_update(updated_leads, fields=sorted(update_fields | {"updated_at"}), batch_size=UPDATE_BATCH)
    for lead, transition in transitions:
        transition.lead = lead
    StageTransition.objects.bulk_create([t for _, t in transitions], batch_size=500)
    all_fields = [f.name for f in Lead._meta.concrete_fields]
    hooks.leads_changed(ids=[lead.pk for lead in new_leads], fields=all_fields, created=True, source=source)
    hooks.leads_changed(ids=[lead.pk for lead in updated_leads], fields=update_fields, source=source)

    # The same announcements lead_upsert makes, after the commit.
    for lead, transition in transitions:
        transaction.on_commit(
            lambda lead=lead, t=transition: signals.lead_stage_changed.send(sender=Lead, lead=lead, transition=t)
        )
    for lead in new_leads:
        transaction.on_commit(lambda lead=lead: signals.lead_created.send(sender=Lead, lead=lead, source=source))
    return len(new_leads), len(updated_leads), unchanged


def _write_rows_one_by_one(chunk: list[_Row], *, source: str, actor, report: ImportReport) -> None:
    for row in chunk:
        try:
            with transaction.atomic():
                _, created = lead_upsert(data=row.raw, source=source, actor=actor)
        except ValidationError as exc:
            report.errors.extend(RowError(row.number, f, m) for f, msgs in exc.message_dict.items() for m in msgs)
            continue
        except IntegrityError:
            message = "Its email or CRM id belongs to another lead; merge the two leads first."
            report.errors.append(RowError(row.number, NON_FIELD, message))
            continue
        if created:
            report.created += 1
        else:
            report.updated += 1


def lead_import_csv(*, file: IO, actor=None, source: str = "import:csv", chunk_size: int = CHUNK_SIZE) -> ImportReport:
    """Import leads from a CSV file (bytes or text, UTF-8, header row).

    Valid rows are kept even when others are not; every bad row is reported
    by row number and field. Raises ValidationError({"file": ...}) only for a
    file that cannot be read as a lead CSV at all (bad header), before any
    write. Each chunk commits on its own, so a crash midway keeps the chunks
    already written; running the file again completes it.
    """
    actor = actor if getattr(actor, "is_authenticated", False) else None
    report = ImportReport()
    stages = {s.key: s for s in LifecycleStage.objects.all()}
    default_stage = stages.get(settings.MARTECH["DEFAULT_LIFECYCLE_STAGE"])
    rows = _parse_rows(_text_lines(file), stages=stages, report=report)
    for chunk in _chunks(rows, chunk_size):
        chunk = _without_erased(chunk, report)
        if not chunk:
            continue
        with transaction.atomic():
            try:
                with transaction.atomic():
                    created, updated, unchanged = _write_chunk(
                        chunk, source=source, actor=actor, default_stage=default_stage
                    )
            except IntegrityError:
                log.info("lead import: unique conflict in a chunk of %d rows; redoing it row by row", len(chunk))
                _write_rows_one_by_one(chunk, source=source, actor=actor, report=report)
            else:
                report.created += created
                report.updated += updated
                report.unchanged += unchanged
    report.errors.sort(key=lambda e: e.row)
    return report
