"""CSV imports of campaign spend and opportunities: the admin upload and the
API share these. All or nothing: every row is checked first and a bad file
is refused with each offending row and field named, so nothing is silently
dropped. Both are idempotent: spend upserts by (campaign, date),
opportunities by CRM id (a row without one creates a new opportunity)."""
from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.dateparse import parse_date, parse_datetime

from attribution.models import CampaignSpend
from attribution.services import opportunity_set_contact, opportunity_upsert
from martech.models import Campaign, Channel, Lead

SPEND_COLUMNS = ("campaign", "date", "amount", "currency", "impressions", "clicks")
OPPORTUNITY_COLUMNS = (
    "name", "amount", "currency", "stage", "pipeline", "created_at", "closed_at", "source",
    "salesforce_id", "hubspot_id", "contacts", "expected_close_date", "probability",
)
MAX_ROWS = 100_000


def csv_rows(text: str | bytes) -> list[dict[str, str]]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError({"file": ["The file is not UTF-8 text."]}) from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ValidationError({"file": ["The file is empty (no header row)."]})
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    if len(rows) > MAX_ROWS:
        raise ValidationError({"file": [f"More than {MAX_ROWS} rows; split the file."]})
    return rows


def _safe(parse, value: str):
    # Django's parsers raise ValueError for well-formed but impossible dates (month 13).
    try:
        return parse(value)
    except ValueError:
        return None


def _decimal(value: str, errors: dict, field: str, *, places: int = 2) -> Decimal | None:
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError):
        errors[field] = ["Not a number."]
        return None
    if not d.is_finite() or d < 0:
        errors[field] = ["Must be a number of zero or more."]
        return None
    if d != d.quantize(Decimal(1).scaleb(-places)):
        errors[field] = [f"At most {places} decimal places."]
        return None
    return d


def _int(value: str, errors: dict, field: str) -> int:
    if value in ("", None):
        return 0
    if not str(value).isdigit():
        errors[field] = ["Must be a whole number of zero or more."]
        return 0
    return int(value)


def _campaign(value: str, cache: dict) -> Campaign | None:
    """A campaign by id, or by its utm_campaign key, or by its name (when unique)."""
    if value not in cache:
        found = None
        if value.isdigit():
            found = Campaign.objects.filter(pk=int(value)).first()
        if found is None:
            found = Campaign.objects.filter(utm_campaign=value).first()
        if found is None:
            named = list(Campaign.objects.filter(name=value)[:2])
            found = named[0] if len(named) == 1 else None
        cache[value] = found
    return cache[value]


def _check(errors_by_row: dict) -> None:
    if errors_by_row:
        raise ValidationError({f"row {n}": [f"{field}: {'; '.join(msgs)}" for field, msgs in errs.items()] for n, errs in errors_by_row.items()})


@transaction.atomic
def spend_import(*, rows: Iterable[dict]) -> dict[str, int]:
    """Upsert daily spend rows (columns: campaign, date, amount, currency,
    impressions, clicks). Row numbers in errors count the header as row 1."""
    cache: dict = {}
    objs: dict[tuple, CampaignSpend] = {}
    errors_by_row: dict[int, dict] = {}
    for n, row in enumerate(rows, start=2):
        errors: dict = {}
        unknown = sorted(set(row) - set(SPEND_COLUMNS))
        if unknown:
            errors["columns"] = [f"Unknown column(s): {', '.join(unknown)}."]
        campaign = _campaign(str(row.get("campaign", "")), cache) if row.get("campaign") else None
        if campaign is None:
            errors["campaign"] = ["Required; a campaign id, utm_campaign or unique name." if not row.get("campaign") else f"No campaign {row['campaign']!r}."]
        day = row.get("date")
        parsed_day = day if isinstance(day, date) else (_safe(parse_date, str(day)) if day else None)
        if parsed_day is None:
            errors["date"] = ["Required, as YYYY-MM-DD."]
        amount = _decimal(str(row.get("amount", "")), errors, "amount")
        currency = str(row.get("currency") or settings.MARTECH_COMPANY_CURRENCY).upper()
        if len(currency) != 3 or not currency.isalpha():
            errors["currency"] = ["A three-letter ISO 4217 code."]
        impressions = _int(str(row.get("impressions", "") or ""), errors, "impressions")
        clicks = _int(str(row.get("clicks", "") or ""), errors, "clicks")
        if errors:
            errors_by_row[n] = errors
            continue
        objs[(campaign.pk, parsed_day)] = CampaignSpend(
            campaign=campaign, date=parsed_day, amount=amount, currency=currency, impressions=impressions, clicks=clicks
        )
    _check(errors_by_row)
    CampaignSpend.objects.bulk_create(
        objs.values(), update_conflicts=True, unique_fields=["campaign", "date"],
        update_fields=["amount", "currency", "impressions", "clicks"], batch_size=2000,
    )
    return {"rows": len(objs)}


@transaction.atomic
def opportunities_import(*, rows: Iterable[dict], actor=None) -> dict[str, int]:
    """Create or update opportunities through opportunity_upsert; ``contacts``
    is a ';'-separated list of lead emails, the first one primary."""
    created = updated = 0
    errors_by_row: dict[int, dict] = {}
    for n, row in enumerate(rows, start=2):
        errors: dict = {}
        unknown = sorted(set(row) - set(OPPORTUNITY_COLUMNS))
        if unknown:
            errors["columns"] = [f"Unknown column(s): {', '.join(unknown)}."]
        data: dict = {k: row[k] for k in ("name", "currency", "stage", "pipeline", "salesforce_id", "hubspot_id") if row.get(k)}
        if not row.get("name"):
            errors["name"] = ["Required."]
        if row.get("amount"):
            data["amount"] = _decimal(row["amount"], errors, "amount")
        if row.get("probability"):
            data["probability"] = _decimal(row["probability"], errors, "probability")
            if data["probability"] is not None and data["probability"] > 100:
                errors["probability"] = ["A percentage from 0 to 100."]
        if row.get("expected_close_date"):
            data["expected_close_date"] = _safe(parse_date, row["expected_close_date"])
            if data["expected_close_date"] is None:
                errors["expected_close_date"] = ["A date, as YYYY-MM-DD."]
        for field in ("created_at", "closed_at"):
            if row.get(field):
                text = row[field]
                # A bare date is that day's midnight UTC.
                value = _safe(parse_datetime, text + "T00:00:00+00:00" if len(text) == 10 else text)
                if value is None:
                    errors[field] = ["A date (YYYY-MM-DD) or ISO 8601 date-time."]
                elif value.tzinfo is None:
                    errors[field] = ["Give a time zone offset (e.g. +00:00)."]
                else:
                    data[field] = value
        if row.get("source"):
            if row["source"] not in Channel.values:
                errors["source"] = [f"One of {', '.join(Channel.values)}."]
            data["source"] = row["source"]
        emails = [e.strip().lower() for e in (row.get("contacts") or "").split(";") if e.strip()]
        leads = {l.email: l for l in Lead.objects.filter(email__in=emails)}
        missing = [e for e in emails if e not in leads]
        if missing:
            errors["contacts"] = [f"No lead with email {', '.join(missing)}."]
        if errors:
            errors_by_row[n] = errors
            continue
        try:
            with transaction.atomic():
                opp, was_created = opportunity_upsert(data=data, source="csv import", actor=actor)
                for i, email in enumerate(emails):
                    opportunity_set_contact(opportunity=opp, lead=leads[email], is_primary=i == 0)
        except ValidationError as exc:
            errors_by_row[n] = exc.message_dict if hasattr(exc, "error_dict") else {"row": exc.messages}
            continue
        created += was_created
        updated += not was_created
    _check(errors_by_row)
    return {"created": created, "updated": updated}
