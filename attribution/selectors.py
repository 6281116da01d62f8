"""Reads behind the attribution reports (API and admin dashboards share them).

Dates: revenue and conversions count won opportunities by their close date;
pipeline and opportunity counts count opportunities by their creation date.
``start`` and ``end`` are inclusive days; ``month`` groups use the same dates.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncMonth

from attribution.models import AttributionCredit, CampaignSpend
from martech.models import Campaign

GROUPS = ("channel", "campaign", "month")


def _day_range(field: str, start: date | None, end: date | None) -> Q:
    q = Q()
    # Days are UTC days (as stored), which also keeps date.min/date.max convertible.
    tz = dt_timezone.utc
    if start:
        q &= Q(**{f"{field}__gte": datetime.combine(start, time.min, tzinfo=tz)})
    if end and end < date.max:  # date.max + 1 day would overflow
        q &= Q(**{f"{field}__lt": datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz)})
    return q


def _key(group_by: str, date_field: str):
    if group_by == "channel":
        return {"g": F("channel")}
    if group_by == "campaign":
        # By id: campaign names are not unique.
        return {"g": F("campaign_id")}
    return {"g": TruncMonth(date_field)}


def _opportunity_count(group_by: str, *, filtered: bool):
    """Distinct opportunities per group. Each opportunity marks its first
    credit row per channel and per campaign (and overall, which serves the
    month, as an opportunity has one creation month), so counting marked rows
    is exact and avoids sorting the range for COUNT(DISTINCT). A channel or
    campaign filter can hide the marked row, so filtered reports count
    distinct ids instead."""
    if filtered:
        return Count("opportunity", distinct=True)
    flag = {"channel": "first_of_channel", "campaign": "first_of_campaign", "month": "first_of_opportunity"}[group_by]
    return Count("id", filter=Q(**{flag: True}))


def _label(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m")
    return value if value is not None else "(none)"


def attribution_report(
    *,
    model: str,
    group_by: str,
    start: date | None = None,
    end: date | None = None,
    channel: str | None = None,
    campaign_id: int | None = None,
) -> list[dict]:
    """One row per group: attributed revenue, conversions (fractional: the
    weights of won deals), pipeline, opportunity count, and spend with ROI,
    ROAS and CPA where spend can be matched (channel, campaign, month)."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    base = AttributionCredit.objects.filter(model=model)
    if channel:
        base = base.filter(channel=channel)
    if campaign_id:
        base = base.filter(campaign_id=campaign_id)
    rows: dict[str, dict] = defaultdict(lambda: {
        "attributed_revenue": Decimal("0.00"), "attributed_conversions": 0.0,
        "attributed_pipeline": Decimal("0.00"), "opportunity_count": 0,
    })
    won = (
        base.filter(_day_range("opportunity_closed_at", start, end), is_won=True)
        .values(**_key(group_by, "opportunity_closed_at"))
        .annotate(revenue=Sum("credit"), conversions=Sum("weight"))
        .order_by()
    )
    for r in won:
        row = rows[_label(r["g"])]
        row["attributed_revenue"] = r["revenue"] or Decimal("0.00")
        row["attributed_conversions"] = r["conversions"] or 0.0
    created = (
        base.filter(_day_range("opportunity_created_at", start, end))
        .values(**_key(group_by, "opportunity_created_at"))
        .annotate(pipeline=Sum("credit"), opportunities=_opportunity_count(group_by, filtered=bool(channel or campaign_id)))
        .order_by()
    )
    for r in created:
        row = rows[_label(r["g"])]
        row["attributed_pipeline"] = r["pipeline"] or Decimal("0.00")
        row["opportunity_count"] = r["opportunities"]

    spend_q = CampaignSpend.objects.all()
    if start:
        spend_q = spend_q.filter(date__gte=start)
    if end:
        spend_q = spend_q.filter(date__lte=end)
    if channel:
        spend_q = spend_q.filter(campaign__channel=channel)
    if campaign_id:
        spend_q = spend_q.filter(campaign_id=campaign_id)
    spend_key = {"channel": F("campaign__channel"), "campaign": F("campaign_id"), "month": TruncMonth("date")}[group_by]
    spend = {_label(r["g"]): r["s"] for r in spend_q.values(g=spend_key).annotate(s=Sum("amount")).order_by()}
    for g in spend:
        rows[g]  # a group with spend but no revenue is still a row (ROI -100%)

    names = {}
    if group_by == "campaign":
        names = dict(Campaign.objects.filter(pk__in=[g for g in rows if g != "(none)"]).values_list("pk", "name"))
    out = []
    for g in sorted(rows, key=str):
        row = rows[g]
        cost = spend.get(g)
        revenue = row["attributed_revenue"]
        conversions = row["attributed_conversions"]
        out.append({
            "group": names.get(g, g) if group_by == "campaign" else g,
            **({"campaign_id": g if g != "(none)" else None} if group_by == "campaign" else {}),
            **row,
            "attributed_conversions": round(conversions, 6),
            "spend": cost,
            "roas": round(float(revenue / cost), 4) if cost else None,
            "roi": round(float((revenue - cost) / cost), 4) if cost else None,
            "cpa": (cost / Decimal(str(conversions))).quantize(Decimal("0.01")) if cost and conversions else None,
        })
    return out


def attribution_compare(*, group_by: str, start: date | None = None, end: date | None = None, models: list[str]) -> list[dict]:
    """Attributed revenue per group under every model, side by side."""
    table: dict[str, dict] = defaultdict(dict)
    for model in models:
        for row in attribution_report(model=model, group_by=group_by, start=start, end=end):
            table[str(row.get("campaign_id") or row["group"]) if group_by == "campaign" else row["group"]][model] = row["attributed_revenue"]
    return [{"group": g, "revenue": {m: table[g].get(m, Decimal("0.00")) for m in models}} for g in sorted(table)]
