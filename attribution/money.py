"""Money in the company currency: dated exchange rates, conversion, and the
writes that change rates (admin, CSV import, the scheduled fetch).

An amount in currency C on day D is converted with the latest rate of C on
or before D (``ExchangeRate``: one unit of C in company-currency units),
rounded half-even to the cent. Amounts already in the company currency
(``MARTECH_COMPANY_CURRENCY``) need no rate. A missing rate is never taken
as 1: the conversion answers None, the credit keeps its amount in its own
currency with a null company amount, and the reports list it as
unconverted.

Which day: a deal's close day (UTC) once it is closed won or lost, its
creation day while it is open; a day of spend, its own date. A rate change
therefore moves the deals of that currency dated from the changed day up to
the next rate of the currency: ``exchange_rates_changed`` queues their
recompute after commit, and only theirs.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timezone as dt_timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django_q.tasks import async_task

from attribution.models import ExchangeRate, Opportunity
from martech.taskqueue import bulk_cluster

CENT = Decimal("0.01")
RATE_PLACES = Decimal("1e-10")
# Recompute tasks take this many opportunities each (a rate change can move thousands).
RECOMPUTE_BATCH = 1000


def company_currency() -> str:
    return settings.MARTECH_COMPANY_CURRENCY


def currency_clean(value: str, *, field: str = "currency") -> str:
    code = (value or "").strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise ValidationError({field: [f"A three-letter ISO 4217 code (got {value!r})."]})
    return code


def utc_day(value: datetime) -> date:
    return value.astimezone(dt_timezone.utc).date()


def opportunity_rate_day(*, created_at: datetime, closed_at: datetime | None, is_closed: bool) -> date:
    """The day whose rate converts a deal: its close once closed, else its creation."""
    return utc_day(closed_at if is_closed and closed_at is not None else created_at)


@dataclass(frozen=True, slots=True)
class Conversion:
    amount: Decimal  # in the company currency
    rate: Decimal
    rate_date: date | None  # None: the amount was in the company currency


class RateTable:
    """Every rate in memory, per currency by date (one query): a full
    attribution run converts every deal through one table."""

    def __init__(self, rows: Iterable[tuple[str, date, Decimal]], *, company: str | None = None) -> None:
        self.company = company or company_currency()
        per: dict[str, list[tuple[date, Decimal]]] = defaultdict(list)
        for currency, day, rate in rows:
            per[currency].append((day, rate))
        self._dates: dict[str, list[date]] = {}
        self._rates: dict[str, list[Decimal]] = {}
        for currency, items in per.items():
            items.sort()
            self._dates[currency] = [d for d, _r in items]
            self._rates[currency] = [r for _d, r in items]
        # (currency, day) -> (rate, rate day); deals cluster on few days.
        self._memo: dict[tuple[str, date], tuple[Decimal, date] | None] = {}

    @classmethod
    def load(cls, currencies: Iterable[str] | None = None) -> "RateTable":
        qs = ExchangeRate.objects.order_by()
        if currencies is not None:
            qs = qs.filter(currency__in=list(currencies))
        return cls(qs.values_list("currency", "date", "rate"))

    def rate(self, currency: str, on: date) -> tuple[Decimal, date] | None:
        """The latest rate of ``currency`` on or before ``on`` and its day;
        None when there is none (and for the company currency, which needs none)."""
        key = (currency, on)
        if key in self._memo:
            return self._memo[key]
        dates = self._dates.get(currency)
        found = None
        if dates:
            i = bisect.bisect_right(dates, on) - 1
            if i >= 0:
                found = (self._rates[currency][i], dates[i])
        self._memo[key] = found
        return found

    def convert(self, amount: Decimal, currency: str, on: date) -> Conversion | None:
        if currency == self.company:
            return Conversion(amount, Decimal(1), None)
        found = self.rate(currency, on)
        if found is None:
            return None
        rate, day = found
        return Conversion((amount * rate).quantize(CENT, rounding=ROUND_HALF_EVEN), rate, day)


# ---------------------------------------------------------------- writes


def _rate_clean(value) -> Decimal:
    try:
        rate = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        raise ValidationError({"rate": [f"Not a number ({value!r})."]}) from None
    if not rate.is_finite() or rate <= 0:
        raise ValidationError({"rate": ["Must be a number above zero."]})
    quantized = rate.quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)
    if quantized <= 0:
        raise ValidationError({"rate": ["Too small: at most 10 decimal places are kept."]})
    return quantized


@transaction.atomic
def exchange_rate_upsert(*, currency: str, date: date, rate, source: str = "") -> tuple[ExchangeRate, bool]:
    """Set one currency's rate on one day (idempotent: the same values again
    change nothing and recompute nothing). A rate for the company currency
    itself is refused: it is 1 by definition."""
    code = currency_clean(currency)
    if code == company_currency():
        raise ValidationError({"currency": [f"{code} is the company currency; it needs no rate."]})
    value = _rate_clean(rate)
    existing = ExchangeRate.objects.select_for_update().filter(currency=code, date=date).first()
    if existing is not None and existing.rate == value:
        return existing, False
    obj, created = ExchangeRate.objects.update_or_create(
        currency=code, date=date, defaults={"rate": value, "source": source[:60]}
    )
    exchange_rates_changed(changes={code: (date, date)})
    return obj, created


@transaction.atomic
def exchange_rate_delete(*, rate: ExchangeRate) -> None:
    code, day = rate.currency, rate.date
    rate.delete()
    exchange_rates_changed(changes={code: (day, day)})


Changes = dict[str, tuple[date, date]]  # currency -> (first, last) day whose rate changed


def opportunities_moved_by_rates(changes: Changes) -> list[int]:
    """The deals the rate changes of each currency between its first and
    last changed day can move: of that currency, dated (close day when
    closed, creation day when open) from the first changed day up to the
    currency's next rate after the last (those at and after it keep theirs)."""
    if not changes:
        return []
    closed = (Q(stage__is_won=True) | Q(stage__is_lost=True)) & Q(closed_at__isnull=False)
    q = Q()
    for code, (first, last) in changes.items():
        start = datetime.combine(first, time.min, tzinfo=dt_timezone.utc)
        window_closed, window_open = Q(closed_at__gte=start), Q(created_at__gte=start)
        following = ExchangeRate.objects.filter(currency=code, date__gt=last).order_by("date").values_list("date", flat=True).first()
        if following is not None:
            end = datetime.combine(following, time.min, tzinfo=dt_timezone.utc)
            window_closed &= Q(closed_at__lt=end)
            window_open &= Q(created_at__lt=end)
        q |= Q(currency=code) & ((closed & window_closed) | (~closed & window_open))
    return list(Opportunity.objects.filter(q).order_by("id").values_list("id", flat=True))


def exchange_rates_changed(*, changes: Changes) -> None:
    """After commit, queue the recompute of the credits (and rollup) of the
    deals the changed rates move (``changes``: per currency the first and
    last day whose rate was added, changed or deleted). Called in the
    transaction that changed them, so a rollback queues nothing."""
    changes = dict(changes)

    def queue() -> None:
        ids = opportunities_moved_by_rates(changes)
        for i in range(0, len(ids), RECOMPUTE_BATCH):
            async_task("attribution.tasks.opportunities_attribute", ids[i:i + RECOMPUTE_BATCH], group="attribution",
                       cluster=bulk_cluster())

    transaction.on_commit(queue)


@transaction.atomic
def exchange_rates_import(*, rows: Iterable[dict], source: str = "csv import") -> dict[str, int]:
    """Upsert many rates (``currency``, ``date``, ``rate`` per row) in one
    transaction; all or nothing, each bad row named (the header is row 1).
    One recompute per currency over the days changed."""
    from django.utils.dateparse import parse_date

    errors: dict[str, list[str]] = {}
    parsed: dict[tuple[str, date], Decimal] = {}
    for n, row in enumerate(rows, start=2):
        problems = []
        try:
            code = currency_clean(str(row.get("currency", "")))
            if code == company_currency():
                problems.append(f"currency: {code} is the company currency; it needs no rate.")
        except ValidationError as exc:
            problems.extend(f"currency: {m}" for m in exc.message_dict["currency"])
            code = ""
        raw_day = row.get("date")
        try:
            day = raw_day if isinstance(raw_day, date) else parse_date(str(raw_day or ""))
        except ValueError:
            day = None
        if day is None:
            problems.append("date: Required, as YYYY-MM-DD.")
        try:
            value = _rate_clean(row.get("rate"))
        except ValidationError as exc:
            problems.extend(f"rate: {m}" for m in exc.message_dict["rate"])
            value = None
        if problems:
            errors[f"row {n}"] = problems
            continue
        parsed[(code, day)] = value
    if errors:
        raise ValidationError(errors)
    existing = {
        (c, d): r for c, d, r in ExchangeRate.objects.select_for_update().filter(
            currency__in={c for c, _d in parsed}, date__in={d for _c, d in parsed}
        ).values_list("currency", "date", "rate")
    }
    changed = {key: value for key, value in parsed.items() if existing.get(key) != value}
    ExchangeRate.objects.bulk_create(
        [ExchangeRate(currency=c, date=d, rate=r, source=source[:60]) for (c, d), r in changed.items()],
        update_conflicts=True, unique_fields=["currency", "date"], update_fields=["rate", "source", "updated_at"],
        batch_size=2000,
    )
    spans: Changes = {}
    for c, d in changed:
        first, last = spans.get(c, (d, d))
        spans[c] = (min(first, d), max(last, d))
    if spans:
        exchange_rates_changed(changes=spans)
    return {"rows": len(parsed), "changed": len(changed)}


# ---------------------------------------------------------------- fetch


def ecb_rates_parse(content: bytes, *, base: str, company: str) -> list[dict]:
    """Rates from an ECB euro foreign exchange reference rates file (the
    daily, 90-day or historical XML: ``<Cube time="YYYY-MM-DD">`` holding
    ``<Cube currency="USD" rate="1.05"/>``, units per one ``base``), as
    rows for ``exchange_rates_import``: per day, every currency of the file
    and the base itself in company-currency units. A day that does not
    quote the company currency (when it is not the base) is refused."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(content, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ValidationError({"file": [f"Not XML: {exc}."]}) from None
    rows: list[dict] = []
    days = [el for el in root.iter() if isinstance(el.tag, str) and el.tag.rsplit("}", 1)[-1] == "Cube" and el.get("time")]
    if not days:
        raise ValidationError({"file": ["No <Cube time=...> day in the file."]})
    for day_el in days:
        day = day_el.get("time")
        quotes: dict[str, Decimal] = {base: Decimal(1)}
        for el in day_el:
            if not isinstance(el.tag, str) or el.get("currency") is None:
                continue
            try:
                quotes[currency_clean(el.get("currency"))] = _rate_clean(el.get("rate"))
            except ValidationError as exc:
                raise ValidationError({"file": [f"{day} {el.get('currency')}: {'; '.join(exc.messages)}"]}) from None
        per_company = quotes.get(company)
        if per_company is None:
            raise ValidationError({"file": [f"{day}: no rate for the company currency {company}."]})
        for code, units_per_base in quotes.items():
            if code != company:
                # 1 code = (1 / units_per_base) base = per_company / units_per_base company units.
                rows.append({"currency": code, "date": day, "rate": per_company / units_per_base})
    return rows


def exchange_rates_fetch(*, url: str | None = None) -> dict[str, int]:
    """Fetch the configured rates file (``MARTECH_RATES_URL``) and upsert
    its rates; idempotent (unchanged rates recompute nothing). No URL: does
    nothing. A failed download or a bad file raises (the task is retried
    and the error is kept in django-q2's failed tasks)."""
    import requests

    cfg = settings.MARTECH_MONEY
    url = url if url is not None else cfg["RATES_URL"]
    if not url:
        return {"rows": 0, "changed": 0}
    response = requests.get(url, timeout=cfg["RATES_TIMEOUT"])
    response.raise_for_status()
    rows = ecb_rates_parse(response.content, base=cfg["RATES_BASE"], company=company_currency())
    return exchange_rates_import(rows=rows, source=url[:60])
