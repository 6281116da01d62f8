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

from martech.csvsafe import cell_unescape
from martech.models import LifecycleStage
from martech.resources import EXPORT_ONLY_COLUMNS, IMPORT_COLUMNS
from martech.services.leads import (
    CRM_KEYS,
    ERASED_MESSAGE,
    LeadInput,
    clean_lead_data,
    lead_upsert,
    lead_upsert_many,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1000
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


def _write_chunk(
    chunk: list[_Row], *, source: str, actor, default_stage: LifecycleStage | None
) -> tuple[int, int, int, list[RowError]]:
    """Upsert one chunk in bulk (``lead_upsert_many``). Returns (created,
    updated, unchanged, the row errors of rows about an erased person:
    ``lead_upsert_many`` wrote nothing for them and names the field)."""
    result = lead_upsert_many(
        rows=[LeadInput(cleaned=r.cleaned, stage=r.stage) for r in chunk],
        source=source, actor=actor, default_stage=default_stage,
    )
    erased = [RowError(chunk[n].number, field_name, ERASED_MESSAGE) for n, field_name in sorted(result.erased.items())]
    return result.created, result.updated, result.unchanged, erased


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
        with transaction.atomic():
            try:
                with transaction.atomic():
                    created, updated, unchanged, erased = _write_chunk(
                        chunk, source=source, actor=actor, default_stage=default_stage
                    )
            except IntegrityError:
                log.info("lead import: unique conflict in a chunk of %d rows; redoing it row by row", len(chunk))
                _write_rows_one_by_one(chunk, source=source, actor=actor, report=report)
            else:
                report.created += created
                report.updated += updated
                report.unchanged += unchanged
                report.errors.extend(erased)
    report.errors.sort(key=lambda e: e.row)
    return report
