"""Pipeline forecast: what the open deals are expected to bring, when, and
how well past forecasts matched what closed.

Per open deal (not in a won or lost stage):

- win probability: the deal's own ``probability`` if set, else its stage's;
- expected close date: the deal's own ``expected_close_date`` if set, else
  the day it entered its current stage plus the stage's ``days_to_close``;
  neither: *unscheduled* (listed apart, in no month);
- amount in the company currency at the rate of its creation day
  (attribution.money); a deal whose currency has no rate then is counted in
  ``unconverted_deals`` and left out of the sums (never taken at 1:1).

The **weighted** forecast sums amount x probability; the **commit** forecast
sums the whole amount of the deals whose probability is at least
``MARTECH_FORECAST_COMMIT_PROBABILITY`` (default 90). A daily task takes a
snapshot of the forecast per expected close month and source
(``ForecastSnapshot``); **accuracy** compares, for each finished month, the
forecast of the last snapshot taken before that month began with the
revenue actually won in it (won deals by close day, converted at the close
day's rate).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.db.models import F, OuterRef, Subquery, Sum
from django.utils import timezone

from attribution.models import ForecastSnapshot, Opportunity, OpportunityStageChange
from attribution.money import CENT, RateTable, company_currency, utc_day
from martech.db import run_in_transaction

UNSCHEDULED = "(unscheduled)"
ZERO = Decimal("0.00")


def _month(day: date | None) -> date | None:
    return day.replace(day=1) if day else None


def _month_label(month: date | None) -> str:
    return month.strftime("%Y-%m") if month else UNSCHEDULED


def _commit_threshold() -> Decimal:
    return Decimal(settings.MARTECH_MONEY["COMMIT_PROBABILITY"])


def open_deals(*, source: str | None = None, currency: str | None = None, rates: RateTable | None = None) -> list[dict]:
    """The open deals with their forecast terms: id, source, currency,
    amount (company currency, or the deal's own when ``currency`` filters),
    None when unconverted), rate_date, probability, expected_close, commit.
    One query for the deals (the stage entry by subquery) and one for the rates."""
    entered = OpportunityStageChange.objects.filter(
        opportunity=OuterRef("pk"), to_stage=OuterRef("stage_id")
    ).order_by("-changed_at", "-id").values("changed_at")[:1]
    qs = Opportunity.objects.filter(stage__is_won=False, stage__is_lost=False).order_by("id")
    if source is not None:
        qs = qs.filter(source=source)
    if currency:
        qs = qs.filter(currency=currency)
    rows = list(qs.values(
        "id", "source", "currency", "amount", "created_at", "expected_close_date", "probability",
        "stage__probability", "stage__days_to_close", entered_at=Subquery(entered),
    ))
    rates = rates or (None if currency else RateTable.load({r["currency"] for r in rows}))
    threshold = _commit_threshold()
    deals = []
    for r in rows:
        probability = r["probability"] if r["probability"] is not None else r["stage__probability"]
        expected = r["expected_close_date"]
        if expected is None and r["stage__days_to_close"] is not None:
            expected = utc_day(r["entered_at"] or r["created_at"]) + timedelta(days=r["stage__days_to_close"])
        if currency:
            amount, rate_date = r["amount"], None
        else:
            converted = rates.convert(r["amount"], r["currency"], utc_day(r["created_at"]))
            amount, rate_date = (converted.amount, converted.rate_date) if converted else (None, None)
        deals.append({
            "id": r["id"], "source": r["source"], "currency": r["currency"], "amount": amount, "rate_date": rate_date,
            "probability": probability, "expected_close": expected, "commit": probability >= threshold,
        })
    return deals


def _empty() -> dict:
    return {"open_deals": 0, "pipeline": ZERO, "weighted": Decimal("0"), "commit": ZERO, "unconverted_deals": 0}


def _add(group: dict, deal: dict) -> None:
    group["open_deals"] += 1
    if deal["amount"] is None:
        group["unconverted_deals"] += 1
        return
    group["pipeline"] += deal["amount"]
    group["weighted"] += deal["amount"] * deal["probability"] / 100
    if deal["commit"]:
        group["commit"] += deal["amount"]


def _done(group: dict) -> dict:
    return {**group, "weighted": group["weighted"].quantize(CENT, rounding=ROUND_HALF_EVEN)}


def _grouped(deals: list[dict]) -> dict[tuple[date | None, str], dict]:
    groups: dict[tuple[date | None, str], dict] = defaultdict(_empty)
    for deal in deals:
        _add(groups[(_month(deal["expected_close"]), deal["source"] or "")], deal)
    return groups


def forecast_report(*, source: str | None = None, currency: str | None = None,
                    start: date | None = None, end: date | None = None) -> dict:
    """The open pipeline's forecast by expected close month and by source
    (weighted and commit), in the company currency (or only ``currency``'s
    deals, unconverted). ``start``/``end`` keep the months they fall in
    (unscheduled deals are kept only without a range)."""
    deals = open_deals(source=source, currency=currency)
    if start or end:
        lo, hi = _month(start) or date.min, _month(end) or date.max
        deals = [d for d in deals if d["expected_close"] and lo <= _month(d["expected_close"]) <= hi]
    by_month: dict[date | None, dict] = defaultdict(_empty)
    by_source: dict[str, dict] = defaultdict(_empty)
    total = _empty()
    missing: set[str] = set()
    for deal in deals:
        _add(by_month[_month(deal["expected_close"])], deal)
        _add(by_source[deal["source"] or "(none)"], deal)
        _add(total, deal)
        if deal["amount"] is None:
            missing.add(deal["currency"])
    rate_dates = [d["rate_date"] for d in deals if d["rate_date"]]
    months = sorted(by_month, key=lambda m: (m is None, m or date.min))
    return {
        "currency": currency or company_currency(), "converted": not currency,
        "commit_probability": int(_commit_threshold()),
        "rate_date_first": min(rate_dates) if rate_dates else None,
        "rate_date_last": max(rate_dates) if rate_dates else None,
        "unconverted_currencies": sorted(missing),
        "total": _done(total),
        "by_month": [{"month": _month_label(m), **_done(by_month[m])} for m in months],
        "by_source": [{"source": s, **_done(by_source[s])} for s in sorted(by_source)],
    }


def forecast_snapshot_take(*, on: date | None = None) -> dict[str, int]:
    """Record today's (``on``'s) forecast per expected close month and
    source. Idempotent: a second run the same day replaces that day's rows."""
    on = on or timezone.now().date()

    def take() -> int:
        groups = _grouped(open_deals())
        ForecastSnapshot.objects.filter(taken_on=on).delete()
        ForecastSnapshot.objects.bulk_create([
            ForecastSnapshot(taken_on=on, month=month, source=source, currency=company_currency(), **_done(g))
            for (month, source), g in groups.items()
        ])
        return len(groups)

    return {"rows": run_in_transaction(take)}


def _month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime.combine(month, time.min, tzinfo=dt_timezone.utc)
    nxt = (month + timedelta(days=32)).replace(day=1)
    return start, datetime.combine(nxt, time.min, tzinfo=dt_timezone.utc)


def forecast_accuracy(*, start: date | None = None, end: date | None = None, source: str | None = None,
                      taken_on: date | None = None) -> dict:
    """For each finished expected-close month in [start, end]: the forecast
    (weighted, commit) of the last snapshot taken before the month began (or
    of the snapshot of ``taken_on``), against the revenue won in that month;
    the errors are (forecast - actual) / actual. In the company currency."""
    this_month = _month(timezone.now().date())
    snaps = ForecastSnapshot.objects.filter(month__isnull=False, month__lt=this_month, currency=company_currency())
    if source is not None:
        snaps = snaps.filter(source=source)
    if start:
        snaps = snaps.filter(month__gte=_month(start))
    if end:
        snaps = snaps.filter(month__lte=end)
    # The default: only snapshots taken before their month began (a forecast, not a count of what already closed).
    snaps = snaps.filter(taken_on=taken_on) if taken_on else snaps.filter(taken_on__lt=F("month"))
    grouped = (
        snaps.values("taken_on", "month").annotate(weighted=Sum("weighted"), commit=Sum("commit"), deals=Sum("open_deals"))
        .order_by("month", "taken_on")
    )
    chosen: dict[date, dict] = {}
    for r in grouped:
        chosen[r["month"]] = r  # ordered by taken_on: the last one stays
    if not chosen:
        return {"currency": company_currency(), "results": []}
    first, last = min(chosen), max(chosen)
    won = Opportunity.objects.filter(
        stage__is_won=True, closed_at__gte=_month_bounds(first)[0], closed_at__lt=_month_bounds(last)[1]
    )
    if source is not None:
        won = won.filter(source=source)
    won_rows = list(won.values_list("amount", "currency", "closed_at"))
    rates = RateTable.load({c for _a, c, _d in won_rows})
    actual: dict[date, Decimal] = defaultdict(lambda: ZERO)
    unconverted: dict[date, int] = defaultdict(int)
    for amount, cur, closed_at in won_rows:
        day = utc_day(closed_at)
        converted = rates.convert(amount, cur, day)
        if converted is None:
            unconverted[_month(day)] += 1
        else:
            actual[_month(day)] += converted.amount
    results = []
    for month in sorted(chosen):
        r, got = chosen[month], actual[month]
        results.append({
            "month": _month_label(month), "forecast_taken_on": r["taken_on"], "open_deals": r["deals"],
            "weighted": r["weighted"], "commit": r["commit"], "actual": got,
            "weighted_error": round(float((r["weighted"] - got) / got), 4) if got else None,
            "commit_error": round(float((r["commit"] - got) / got), 4) if got else None,
            "unconverted_deals": unconverted[month],
        })
    return {"currency": company_currency(), "results": results}
