"""Reads behind the attribution reports (API and admin dashboards share them).

Dates: revenue and conversions count won opportunities by their close date;
pipeline and opportunity counts count opportunities by their creation date.
``start`` and ``end`` are inclusive days; ``month`` groups use the same dates.

Money: amounts are in the company currency (``MARTECH_COMPANY_CURRENCY``),
converted per deal at the rate of its close day (creation day while open)
and per day of spend at that day's rate (attribution.money), with the first
and last rate dates used; or, given ``currency``, only the deals and spend
in that currency, unconverted. What has no rate is left out of the company
totals and named per row (``unconverted_currencies``); ROI, ROAS and CPA
are only given where nothing in the row was left out.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Count, F, Max, Min, Q, Sum
from django.db.models.functions import TruncMonth

from attribution.models import AttributionRollup, CampaignSpend, Touchpoint
from attribution.money import RateTable, company_currency
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


def _date_range(field: str, start: date | None, end: date | None) -> Q:
    q = Q()
    if start:
        q &= Q(**{f"{field}__gte": start})
    if end:
        q &= Q(**{f"{field}__lte": end})
    return q


def _label(value) -> str:
    # Months come as datetimes from the credits and as dates from spend (a DateField): one label for both.
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m")
    return value if value is not None else "(none)"


def _count_flag(group_by: str, channel: str | None, campaign_id: int | None) -> str:
    """Which of the rollup's first-row counts counts each opportunity once
    per group under these filters. Every opportunity has exactly one first
    row per channel, per campaign and per (channel, campaign) pair, all on
    its creation day, so summing the count over days and rows is exact: the
    group's own flag when nothing narrows it, the pair's when a filter on the
    other dimension does."""
    if channel and campaign_id:
        return "first_of_channel_campaign"
    if group_by == "channel":
        return "first_of_channel_campaign" if campaign_id else "first_of_channel"
    if group_by == "campaign":
        return "first_of_channel_campaign" if channel else "first_of_campaign"
    return "first_of_channel" if channel else "first_of_campaign" if campaign_id else "first_of_opportunity"


def _rollup_key(group_by: str):
    return {"channel": F("channel"), "campaign": F("campaign_id"), "month": TruncMonth("day")}[group_by]


def _attributed(*, model, group_by, start, end, channel, campaign_id, currency):
    """(group, deals' currency, revenue, conversions, None, None, money) rows
    for won deals by close day and (group, currency, None, None, pipeline,
    opportunity count, money) rows for all deals by creation day: two
    aggregates over the rollup. Amounts are the company currency's, or the
    deals' own when ``currency`` filters to one; ``money`` is (unconverted,
    first rate date, last rate date)."""
    base = AttributionRollup.objects.filter(_date_range("day", start, end), model=model)
    if channel:
        base = base.filter(channel=channel)
    if campaign_id:
        base = base.filter(campaign_id=campaign_id)
    if currency:
        base = base.filter(currency=currency)
    amount = "credit" if currency else "company_credit"
    money = dict(unconverted=Sum("unconverted"), first=Min("rate_date_first"), last=Max("rate_date_last"))
    key = _rollup_key(group_by)
    won = base.filter(basis=AttributionRollup.WON).values(g=key, cur=F("currency")).annotate(
        revenue=Sum(amount), conversions=Sum("weight"), **money)
    for r in won.order_by():
        yield r["g"], r["cur"], r["revenue"], r["conversions"], None, None, (r["unconverted"], r["first"], r["last"])
    flag = _count_flag(group_by, channel, campaign_id)
    created = base.filter(basis=AttributionRollup.CREATED).values(g=key, cur=F("currency")).annotate(
        pipeline=Sum(amount), opportunities=Sum(flag), **money)
    for r in created.order_by():
        yield r["g"], r["cur"], None, None, r["pipeline"], r["opportunities"], (r["unconverted"], r["first"], r["last"])


def _money_note(row: dict, cur: str, unconverted, first: date | None, last: date | None, *, converting: bool) -> None:
    """Fold one currency's rate dates and unconverted amount into a report
    row (nothing when the row shows one currency's amounts as they are)."""
    if not converting:
        return
    if unconverted:
        row["_unconverted"].add(cur)
    if first is not None:
        row["rate_date_first"] = min(first, row["rate_date_first"] or first)
    if last is not None:
        row["rate_date_last"] = max(last, row["rate_date_last"] or last)


def _spend(*, group_by, start, end, channel, campaign_id, currency) -> tuple[dict, dict]:
    """Spend per group, and the groups' (unconverted currencies, first and
    last rate date): in ``currency`` only, or each day's spend converted at
    that day's rate."""
    qs = CampaignSpend.objects.filter(_date_range("date", start, end))
    if channel:
        qs = qs.filter(campaign__channel=channel)
    if campaign_id:
        qs = qs.filter(campaign_id=campaign_id)
    key = {"channel": F("campaign__channel"), "campaign": F("campaign_id"), "month": TruncMonth("date")}[group_by]
    if currency:
        return {_label(r["g"]): r["s"] for r in qs.filter(currency=currency).values(g=key).annotate(s=Sum("amount")).order_by()}, {}
    days = list(qs.values(g=key, cur=F("currency"), day=F("date")).annotate(s=Sum("amount")).order_by())
    rates = RateTable.load({r["cur"] for r in days})
    spend: dict[str, Decimal] = {}
    notes: dict[str, dict] = defaultdict(lambda: {"_unconverted": set(), "rate_date_first": None, "rate_date_last": None})
    for r in days:
        g = _label(r["g"])
        converted = rates.convert(r["s"], r["cur"], r["day"])
        spend.setdefault(g, Decimal("0.00"))
        if converted is None:
            notes[g]["_unconverted"].add(r["cur"])
            continue
        spend[g] += converted.amount
        _money_note(notes[g], r["cur"], None, converted.rate_date, converted.rate_date, converting=True)
    return spend, notes


def _new_leads(*, group_by, start, end, channel, campaign_id) -> dict[str, int]:
    """Leads created per group: their lead-creation touches (the last touch
    at or before the lead's creation) by channel, campaign and UTC month of
    the touch, in [start, end]. Reads the partial index touch_lead_creation_idx."""
    qs = Touchpoint.objects.filter(_day_range("occurred_at", start, end), is_lead_creation=True)
    if channel:
        qs = qs.filter(channel=channel)
    if campaign_id:
        qs = qs.filter(campaign_id=campaign_id)
    key = {"channel": F("channel"), "campaign": F("campaign_id"), "month": TruncMonth("occurred_at", tzinfo=dt_timezone.utc)}[group_by]
    return {_label(r["g"]): r["n"] for r in qs.values(g=key).annotate(n=Count("id")).order_by()}


def attribution_report(
    *,
    model: str,
    group_by: str,
    start: date | None = None,
    end: date | None = None,
    channel: str | None = None,
    campaign_id: int | None = None,
    currency: str | None = None,
) -> list[dict]:
    """One row per group: attributed revenue, conversions (fractional: the
    weights of won deals), pipeline, opportunity count (for a campaign: the
    deals it influenced, i.e. touched, created in the range), new leads, and
    spend with ROI, ROAS, CPA and cost per lead where spend can be matched
    (channel, campaign, month). Money as the module docstring says: each row
    names its ``currency`` and the rate dates used."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    converting = not currency
    rows: dict[str, dict] = defaultdict(lambda: {
        "attributed_revenue": Decimal("0.00"), "attributed_conversions": 0.0,
        "attributed_pipeline": Decimal("0.00"), "opportunity_count": 0,
        "_unconverted": set(), "rate_date_first": None, "rate_date_last": None,
    })
    for g, cur, revenue, conversions, pipeline, opportunities, money in _attributed(
        model=model, group_by=group_by, start=start, end=end, channel=channel, campaign_id=campaign_id, currency=currency
    ):
        row = rows[_label(g)]
        if revenue is not None or conversions is not None:
            row["attributed_revenue"] += revenue or 0
            row["attributed_conversions"] += conversions or 0.0
        if pipeline is not None or opportunities is not None:
            row["attributed_pipeline"] += pipeline or 0
            row["opportunity_count"] += opportunities or 0
        _money_note(row, cur, *money, converting=converting)

    spend, spend_notes = _spend(
        group_by=group_by, start=start, end=end, channel=channel, campaign_id=campaign_id, currency=currency
    )
    for g in spend:
        row = rows[g]  # a group with spend but no revenue is still a row (ROI -100%)
        note = spend_notes.get(g)
        if note:
            row["_unconverted"] |= note["_unconverted"]
            _money_note(row, "", None, note["rate_date_first"], note["rate_date_last"], converting=converting)

    leads = _new_leads(group_by=group_by, start=start, end=end, channel=channel, campaign_id=campaign_id)
    for g in leads:
        rows[g]

    names = {}
    if group_by == "campaign":
        names = dict(Campaign.objects.filter(pk__in=[g for g in rows if g != "(none)"]).values_list("pk", "name"))
    out = []
    shown = currency or company_currency()
    for g in sorted(rows, key=str):
        row = rows[g]
        unconverted = sorted(row.pop("_unconverted"))
        # ROI, ROAS and CPA only over converted amounts: a row missing a rate has none.
        cost = spend.get(g)
        ratios = bool(cost) and not unconverted
        revenue = row["attributed_revenue"]
        conversions = row["attributed_conversions"]
        out.append({
            "group": names.get(g, g) if group_by == "campaign" else g,
            **({"campaign_id": g if g != "(none)" else None} if group_by == "campaign" else {}),
            "currency": shown,
            **row,
            "attributed_conversions": round(conversions, 6),
            "spend": cost,
            "roas": round(float(revenue / cost), 4) if ratios else None,
            "roi": round(float((revenue - cost) / cost), 4) if ratios else None,
            "cpa": (cost / Decimal(str(conversions))).quantize(Decimal("0.01")) if ratios and conversions else None,
            "new_leads": leads.get(g, 0),
            "cost_per_lead": (cost / leads[g]).quantize(Decimal("0.01")) if ratios and leads.get(g) else None,
            "unconverted_currencies": ",".join(unconverted),
        })
    return out


def money_summary(rows: list[dict], *, currency: str | None) -> dict:
    """What a report's rows say about its money, for the response head: the
    currency shown, whether amounts were converted, the first and last rate
    dates used and the currencies left out for want of a rate."""
    firsts = [r["rate_date_first"] for r in rows if r.get("rate_date_first")]
    lasts = [r["rate_date_last"] for r in rows if r.get("rate_date_last")]
    missing = sorted({c for r in rows for c in (r.get("unconverted_currencies") or "").split(",") if c})
    return {
        "currency": currency or company_currency(), "converted": not currency,
        "rate_date_first": min(firsts) if firsts else None, "rate_date_last": max(lasts) if lasts else None,
        "unconverted_currencies": missing,
    }


def attribution_compare(*, group_by: str, start: date | None = None, end: date | None = None, models: list[str],
                        currency: str | None = None) -> list[dict]:
    """Attributed revenue per group under every model, side by side: one
    aggregate over the rollup's won rows, grouped by model, group and the
    deals' currency. In the company currency (or only ``currency``'s deals),
    each row with its rate dates and unconverted currencies."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    key = _rollup_key(group_by)
    table: dict[str, dict] = defaultdict(dict)
    notes: dict[str, dict] = defaultdict(lambda: {"_unconverted": set(), "rate_date_first": None, "rate_date_last": None})
    won = AttributionRollup.objects.filter(_date_range("day", start, end), model__in=models, basis=AttributionRollup.WON)
    if currency:
        won = won.filter(currency=currency)
    for r in won.values("model", g=key, cur=F("currency")).annotate(
        revenue=Sum("credit" if currency else "company_credit"), unconverted=Sum("unconverted"),
        first=Min("rate_date_first"), last=Max("rate_date_last"),
    ).order_by():
        g = _label(r["g"])
        table[g][r["model"]] = table[g].get(r["model"], Decimal("0.00")) + r["revenue"]
        _money_note(notes[g], r["cur"], r["unconverted"], r["first"], r["last"], converting=not currency)
    names = {}
    if group_by == "campaign":
        names = dict(Campaign.objects.filter(pk__in=[g for g in table if g != "(none)"]).values_list("pk", "name"))
    rows = []
    for g in sorted(table, key=str):
        row = {"group": names.get(g, g) if group_by == "campaign" else g}
        if group_by == "campaign":
            row["campaign_id"] = g if g != "(none)" else None
        row["currency"] = currency or company_currency()
        row["revenue"] = {m: table[g].get(m, Decimal("0.00")) for m in models}
        note = notes[g]
        row["rate_date_first"], row["rate_date_last"] = note["rate_date_first"], note["rate_date_last"]
        row["unconverted_currencies"] = ",".join(sorted(note["_unconverted"]))
        rows.append(row)
    return rows


def _days(seconds: float) -> float:
    return round(seconds / 86400, 2)


def _median(values: list[float]) -> float | None:
    import statistics

    return _days(statistics.median(values)) if values else None


def pipeline_report(*, start: date | None = None, end: date | None = None) -> dict:
    """Pipeline analytics over the opportunities created in [start, end]
    (UTC days), from the stage history:

    - ``stages``: per open stage in order, how many deals reached it (entered
      it or any later stage; a won deal reached every stage), the conversion
      rate to the next stage, and the average and median days spent in it
      (from entering it to the next change; a deal still in it is not timed).
    - ``win_rate_by_source``: won / (won + lost) per opportunity source, with
      the won amount and average deal size.
    - ``average_deal_size`` (won deals), ``weighted_forecast`` (open deals'
      amount x probability: the deal's own, else its stage's) and
      ``velocity_days`` (average days from creation to close of won deals).

    Money in the company currency (``currency``), at the close day's rate
    (the creation day's for open deals); deals whose currency has no rate
    are counted in win rates but left out of the sums, and their currencies
    named in ``unconverted_currencies``.
    """
    from attribution.models import Opportunity, OpportunityStage, OpportunityStageChange

    opps = Opportunity.objects.filter(_day_range("created_at", start, end))
    stage_rows = list(OpportunityStage.objects.order_by("pipeline_id", "order").values("id", "key", "name", "order", "is_won", "is_lost", "pipeline_id"))
    by_id = {s["id"]: s for s in stage_rows}
    changes: dict[int, list] = defaultdict(list)
    for opp_id, to_id, at in (
        OpportunityStageChange.objects.filter(opportunity__in=opps).order_by("opportunity_id", "changed_at", "id")
        .values_list("opportunity_id", "to_stage_id", "changed_at").iterator(chunk_size=5000)
    ):
        changes[opp_id].append((to_id, at))
    reached: dict[int, int] = defaultdict(int)
    durations: dict[int, list[float]] = defaultdict(list)
    for history in changes.values():
        top = -1
        pipeline = by_id[history[0][0]]["pipeline_id"]
        for k, (to_id, at) in enumerate(history):
            stage = by_id[to_id]
            if stage["is_won"]:
                top = max(top, max(s["order"] for s in stage_rows if s["pipeline_id"] == pipeline))
            elif not stage["is_lost"]:
                top = max(top, stage["order"])
            if k + 1 < len(history) and not stage["is_won"] and not stage["is_lost"]:
                durations[to_id].append((history[k + 1][1] - at).total_seconds())
        for s in stage_rows:
            if s["pipeline_id"] == pipeline and not s["is_lost"] and not s["is_won"] and s["order"] <= top:
                reached[s["id"]] += 1
    open_stages = [s for s in stage_rows if not s["is_won"] and not s["is_lost"]]
    stages = []
    for i, s in enumerate(open_stages):
        nxt = open_stages[i + 1] if i + 1 < len(open_stages) and open_stages[i + 1]["pipeline_id"] == s["pipeline_id"] else None
        won_id = next((w["id"] for w in stage_rows if w["pipeline_id"] == s["pipeline_id"] and w["is_won"]), None)
        next_reached = reached[nxt["id"]] if nxt else sum(1 for h in changes.values() if any(t == won_id for t, _ in h))
        d = durations.get(s["id"], [])
        stages.append({
            "stage": s["key"], "name": s["name"], "reached": reached[s["id"]],
            "conversion_rate": round(next_reached / reached[s["id"]], 4) if reached[s["id"]] else None,
            "average_days": _days(sum(d) / len(d)) if d else None, "median_days": _median(d),
        })
    # Win rate and deal size by source; money in the company currency (at the close day's rate, the
    # creation day's for open deals); deals without a rate are counted but not summed, and named.
    rates = RateTable.load()
    missing: set[str] = set()

    def company(amount: Decimal, cur: str, at: datetime) -> Decimal | None:
        converted = rates.convert(amount, cur, at.astimezone(dt_timezone.utc).date())
        if converted is None:
            missing.add(cur)
        return converted.amount if converted else None

    by_source: dict[str, dict] = defaultdict(lambda: {"won": 0, "lost": 0, "amounts": []})
    won_amounts: list[Decimal] = []
    cycle: list[float] = []
    closed_rows = opps.filter(Q(stage__is_won=True) | Q(stage__is_lost=True)).values_list(
        "source", "stage__is_won", "amount", "currency", "created_at", "closed_at")
    for source, won, amount, cur, created, closed in closed_rows:
        row = by_source[source or "(none)"]
        row["won" if won else "lost"] += 1
        if won:
            value = company(amount, cur, closed or created)
            if value is not None:
                row["amounts"].append(value)
                won_amounts.append(value)
            if closed:
                cycle.append((closed - created).total_seconds())
    forecast = Decimal("0")
    for amount, cur, created, own, stage_p in opps.filter(stage__is_won=False, stage__is_lost=False).values_list(
        "amount", "currency", "created_at", "probability", "stage__probability"
    ):
        value = company(amount, cur, created)
        if value is not None:
            forecast += value * (own if own is not None else stage_p) / 100

    def mean(values: list[Decimal]) -> Decimal | None:
        return (sum(values) / len(values)).quantize(Decimal("0.01")) if values else None

    return {
        "currency": company_currency(),
        "unconverted_currencies": sorted(missing),
        "stages": stages,
        "win_rate_by_source": [
            {"source": k, "won": v["won"], "lost": v["lost"], "win_rate": round(v["won"] / (v["won"] + v["lost"]), 4),
             "won_amount": sum(v["amounts"], Decimal("0.00")), "average_deal_size": mean(v["amounts"])}
            for k, v in sorted(by_source.items())
        ],
        "average_deal_size": mean(won_amounts),
        "weighted_forecast": forecast.quantize(Decimal("0.01")),
        "velocity_days": _days(sum(cycle) / len(cycle)) if cycle else None,
    }


def lifecycle_funnel(*, start: date | None = None, end: date | None = None) -> list[dict]:
    """Per lifecycle stage in order: leads that reached it (entered it or a
    later stage) through a transition in [start, end], the conversion rate to
    the next stage and the median days from entering it to entering the next."""
    from martech.models import LifecycleStage, StageTransition

    stages = list(LifecycleStage.objects.filter(is_active=True).order_by("order").values("id", "key", "order"))
    order = {s["id"]: s["order"] for s in stages}
    entered: dict[int, dict[int, datetime]] = defaultdict(dict)  # lead -> order -> first entry
    qs = StageTransition.objects.filter(_day_range("changed_at", start, end)).order_by("lead_id", "changed_at", "id")
    for lead_id, to_id, at in qs.values_list("lead_id", "to_stage_id", "changed_at").iterator(chunk_size=5000):
        if to_id in order:
            entered[lead_id].setdefault(order[to_id], at)
    rows = []
    for i, s in enumerate(stages):
        reached = sum(1 for e in entered.values() if max(e) >= s["order"])
        nxt = stages[i + 1] if i + 1 < len(stages) else None
        next_reached = sum(1 for e in entered.values() if nxt and max(e) >= nxt["order"])
        gaps = [
            (e[nxt["order"]] - e[s["order"]]).total_seconds()
            for e in entered.values() if nxt and s["order"] in e and nxt["order"] in e and e[nxt["order"]] >= e[s["order"]]
        ]
        rows.append({
            "stage": s["key"], "reached": reached,
            "conversion_rate": round(next_reached / reached, 4) if nxt and reached else None,
            "median_days_to_next": _median(gaps),
        })
    return rows


# --- The lead 360 page (martech offers the place) -----------------------------

LEAD_OPPORTUNITIES = 50


def lead_opportunities(*, lead, user) -> dict:
    """The lead's opportunities (its contact roles) and, for a user who may
    view credits, the revenue credit each attribution model gives the
    lead's own touches, per opportunity. Two queries, three with credits.
    An opportunity the lead's touches earn credit on without a contact role
    (credits follow the account's people) is listed too."""
    from attribution.models import AttributionCredit, AttributionModel, Opportunity, OpportunityContactRole

    roles = {r.opportunity_id: r for r in OpportunityContactRole.objects.filter(lead=lead)
             .order_by("-opportunity__created_at", "-opportunity_id")[:LEAD_OPPORTUNITIES]}
    credit: dict[int, list[tuple[str, Decimal, str]]] = defaultdict(list)
    show_credit = user is not None and user.has_perm("attribution.view_attributioncredit")
    if show_credit:
        labels = dict(AttributionModel.choices)
        rows = (AttributionCredit.objects.filter(touchpoint__lead=lead).values("opportunity_id", "model", "currency")
                .annotate(total=Sum("credit")).order_by("opportunity_id", "model"))
        for row in rows:
            credit[row["opportunity_id"]].append((labels.get(row["model"], row["model"]), row["total"], row["currency"]))
    ids = list(roles) + [pk for pk in credit if pk not in roles][:LEAD_OPPORTUNITIES]
    opportunities = list(Opportunity.objects.filter(pk__in=ids).select_related("stage", "pipeline", "owner")
                         .order_by("-created_at", "-id"))
    out = [{"o": o, "role": roles.get(o.pk), "credit": credit.get(o.pk, [])} for o in opportunities]
    return {"rows": out, "show_credit": show_credit, "capped": len(roles) >= LEAD_OPPORTUNITIES}


# --- Speed to lead ------------------------------------------------------------------
# From a lead's first form submission to each thing that should follow it in
# seconds (owner, owner in each connected CRM, first email) or within the
# rep's SLA (first touch). Reads every stage's own record: routing's
# assignments, the CRM push states, nurture's messages. This app is the last
# stage of the flow, the one that may read all the others.

SPEED_GROUPS = ("day", "source", "day_source")
SPEED_MAX_DAYS = 366


def _speed_stages(providers: set[str]) -> list[tuple[str, str]]:
    stages = [("owner", "Owner assigned")]
    stages += [(f"crm_{p}", f"Owner in {label}") for p, label in (("hubspot", "HubSpot"), ("salesforce", "Salesforce"))
               if p in providers]
    return stages + [("first_email", "First email sent"), ("rep_touch", "Rep's first touch")]


def _percentile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's
    percentile_cont): the median of 1, 2, 3, 10 is 2.5."""
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 3)


def speed_to_lead_timelines(*, start: date, end: date, source: str | None = None) -> list[dict]:
    """One row per lead whose first form submission fell on [start, end]
    (UTC days): when it came, its channel, and the first time each later
    stage happened at or after it (None when it has not yet). One query;
    each stage is a correlated subquery on an index of its table (events by
    lead and time, assignments by lead, push states by record, messages by
    lead and channel)."""
    from django.db.models import Exists, OuterRef, Subquery

    from martech.crm.models import PushState
    from martech.models import Event
    from nurture.models import Message
    from routing.models import Assignment

    form = OuterRef("occurred_at")
    lead = OuterRef("lead_id")
    earlier_form = Event.objects.filter(lead_id=lead, kind=Event.Kind.FORM).filter(
        Q(occurred_at__lt=form) | Q(occurred_at=form, pk__lt=OuterRef("pk")))
    assigned = (Assignment.objects.filter(lead_id=lead, status=Assignment.Status.ASSIGNED, assigned_at__gte=form)
                .order_by("assigned_at", "pk"))
    touched = Assignment.objects.filter(lead_id=lead, first_touch_at__gte=form).order_by("first_touch_at")
    emailed = (Message.objects.filter(lead_id=lead, channel=Message.Channel.EMAIL, status=Message.Status.SENT,
                                      sent_at__gte=form).order_by("sent_at"))

    def in_crm(provider: str):
        return Subquery(PushState.objects.filter(connection__provider=provider, object="contact", local_id=lead,
                                                 owner_pushed_at__gte=form)
                        .order_by("owner_pushed_at").values("owner_pushed_at")[:1])

    forms = (Event.objects.filter(_day_range("occurred_at", start, end), kind=Event.Kind.FORM, lead__isnull=False)
             .exclude(Exists(earlier_form)))
    if source:
        forms = forms.filter(channel=source)
    rows = forms.annotate(
        owner_at=Subquery(assigned.values("assigned_at")[:1]),
        sla_due_at=Subquery(assigned.values("sla_due_at")[:1]),
        crm_hubspot_at=in_crm("hubspot"),
        crm_salesforce_at=in_crm("salesforce"),
        first_email_at=Subquery(emailed.values("sent_at")[:1]),
        rep_touch_at=Subquery(touched.values("first_touch_at")[:1]),
    ).order_by("occurred_at", "pk").values_list(
        "lead_id", "occurred_at", "channel", "owner_at", "sla_due_at", "crm_hubspot_at", "crm_salesforce_at",
        "first_email_at", "rep_touch_at")
    keys = ("lead_id", "form_at", "source", "owner_at", "sla_due_at", "crm_hubspot_at", "crm_salesforce_at",
            "first_email_at", "rep_touch_at")
    return [dict(zip(keys, row)) for row in rows]


def speed_to_lead(*, start: date, end: date, group_by: str = "day", source: str | None = None,
                  now: datetime | None = None) -> dict:
    """The speed-to-lead report: per UTC day, per source (the channel of the
    form submission) or per both, how many leads came through a form, and
    for each stage how many reached it, the median and 95th percentile of
    the seconds from the form, and for the rep's first touch the share
    within the SLA (the routing SLA policy's deadline on the assignment:
    touched by it, breached, or still open). Two queries (the connected
    CRMs, the timelines). ``start``/``end`` are inclusive days, at most
    SPEED_MAX_DAYS apart; the caller validates them."""
    from django.core.exceptions import ValidationError
    from django.utils import timezone

    from martech.crm.models import Connection
    from martech.models import Channel

    if group_by not in SPEED_GROUPS:
        raise ValidationError({"group_by": [f"One of {', '.join(SPEED_GROUPS)}."]})
    if end < start:
        raise ValidationError({"end": ["end must not be before start."]})
    if (end - start).days >= SPEED_MAX_DAYS:
        raise ValidationError({"start": [f"At most {SPEED_MAX_DAYS} days from start to end."]})
    now = now or timezone.now()
    stages = _speed_stages(set(Connection.objects.values_list("provider", flat=True)))
    labels = dict(Channel.choices)
    groups: dict[tuple, dict] = {}
    total = _speed_group({})
    for row in speed_to_lead_timelines(start=start, end=end, source=source):
        day = row["form_at"].astimezone(dt_timezone.utc).date().isoformat()
        src = row["source"] or ""
        key = {"day": (day,), "source": (src,), "day_source": (day, src)}[group_by]
        if key not in groups:
            head = {"day": day} if group_by != "source" else {}
            if group_by != "day":
                head |= {"source": src, "source_label": labels.get(src, src or "Unknown")}
            groups[key] = _speed_group(head)
        for g in (groups[key], total):
            _speed_add(g, row, stages, now)
    return {
        "start": start.isoformat(), "end": end.isoformat(), "group_by": group_by,
        "stages": [{"key": k, "label": label} for k, label in stages],
        "results": [_speed_out(groups[k], stages) for k in sorted(groups)],
        "total": _speed_out(total, stages),
    }


def _speed_group(head: dict) -> dict:
    return {**head, "leads": 0, "_seconds": defaultdict(list), "_sla": {"within": 0, "breached": 0, "open": 0,
                                                                     "no_sla": 0}}


def _speed_add(group: dict, row: dict, stages: list[tuple[str, str]], now: datetime) -> None:
    group["leads"] += 1
    for key, _ in stages:
        at = row[f"{key}_at"]
        if at is not None:
            group["_seconds"][key].append((at - row["form_at"]).total_seconds())
    sla, due, touched = group["_sla"], row["sla_due_at"], row["rep_touch_at"]
    if due is None:
        sla["no_sla"] += 1
    elif touched is not None:
        sla["within" if touched <= due else "breached"] += 1
    else:
        sla["breached" if now > due else "open"] += 1


def _speed_out(group: dict, stages: list[tuple[str, str]]) -> dict:
    out = {k: v for k, v in group.items() if not k.startswith("_")}
    out["stages"] = {}
    for key, _ in stages:
        seconds = sorted(group["_seconds"][key])
        out["stages"][key] = {"reached": len(seconds), "p50_seconds": _percentile(seconds, 0.5),
                              "p95_seconds": _percentile(seconds, 0.95)}
    sla = group["_sla"]
    decided = sla["within"] + sla["breached"]
    out["sla"] = {"within": sla["within"], "breached": sla["breached"], "open": sla["open"],
                  "no_sla": sla["no_sla"], "share_within": round(sla["within"] / decided, 4) if decided else None}
    return out
