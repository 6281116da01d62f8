"""The pre-aggregated rollup the reports read: it must give exactly what the
credits give, stay right through incremental recomputes, and keep the report
API at a fixed, small number of queries."""
from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone as dt_tz
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from attribution import selectors
from attribution.computation import ALL_MODELS, attribution_compute, rollup_refresh
from attribution.models import AttributionRollup, Opportunity
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from attribution.touchpoints import touchpoints_rebuild
from tests.factories import CampaignFactory, EventFactory, LeadFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=dt_tz.utc)


def _deal(leads, *, amount, created, won_at=None, lost_at=None):
    opp, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal(amount), "created_at": created}, source="t")
    for i, lead in enumerate(leads):
        opportunity_set_contact(opportunity=opp, lead=lead, is_primary=i == 0)
    if won_at or lost_at:
        key = "closed_won" if won_at else "closed_lost"
        opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key=key), source="t", at=won_at or lost_at)
    return opp


@pytest.fixture
def world():
    """Deals over three months, campaigns spanning channels (a campaign's
    touches in two channels, so the first-row flags differ by filter)."""
    c1 = CampaignFactory(channel="paid_search")
    c2 = CampaignFactory(channel="email")
    plan = [
        [("paid_search", c1), ("email", c2), ("direct", None)],
        [("email", c2), ("email", c1), ("paid_search", c1)],
        [("display", None), ("paid_search", c2)],
        [("email", c1)],
        [("referral", None), ("email", c2), ("paid_search", c1), ("direct", None)],
    ]
    leads = []
    for i, touches in enumerate(plan):
        lead = LeadFactory()
        for k, (channel, campaign) in enumerate(touches):
            EventFactory(lead=lead, occurred_at=T0 + timedelta(days=3 * i + k), channel=channel, campaign=campaign, utm_source="x")
        leads.append(lead)
    touchpoints_rebuild(lead_ids=[lead.pk for lead in leads])
    deals = [
        _deal(leads[:2], amount="1000.01", created=T0 + timedelta(days=5), won_at=T0 + timedelta(days=20)),
        _deal([leads[2]], amount="333.33", created=T0 + timedelta(days=9), won_at=T0 + timedelta(days=45)),
        _deal([leads[3]], amount="500.00", created=T0 + timedelta(days=12), lost_at=T0 + timedelta(days=30)),
        _deal([leads[4], leads[0]], amount="2500.00", created=T0 + timedelta(days=14), won_at=T0 + timedelta(days=70)),
        _deal([leads[1]], amount="90.00", created=T0 + timedelta(days=40)),  # open
        _deal([LeadFactory()], amount="77.00", created=T0 + timedelta(days=2), won_at=T0 + timedelta(days=3)),  # no touches
    ]
    attribution_compute()
    return {"campaigns": (c1, c2), "deals": deals}


def _reference(*, model, group_by, start, end, channel, campaign_id) -> dict:
    """The report's numbers computed in Python straight from the credits:
    group -> (revenue, conversions, pipeline, distinct opportunities)."""
    from collections import defaultdict

    from attribution.models import AttributionCredit

    def in_range(at):
        day = at.astimezone(dt_tz.utc).date()
        return (start is None or day >= start) and (end is None or day <= end)

    def group(c, at):
        if group_by == "channel":
            return c.channel
        if group_by == "campaign":
            return c.campaign_id
        return at.astimezone(dt_tz.utc).strftime("%Y-%m")

    out = defaultdict(lambda: [Decimal("0.00"), 0.0, Decimal("0.00"), set()])
    for c in AttributionCredit.objects.filter(model=model):
        if (channel and c.channel != channel) or (campaign_id and c.campaign_id != campaign_id):
            continue
        if c.is_won and in_range(c.opportunity_closed_at):
            row = out[group(c, c.opportunity_closed_at)]
            row[0] += c.credit
            row[1] += c.weight
        if in_range(c.opportunity_created_at):
            row = out[group(c, c.opportunity_created_at)]
            row[2] += c.credit
            row[3].add(c.opportunity_id)
    return {g: (r[0], round(r[1], 6), r[2], len(r[3])) for g, r in out.items()}


def _reported(**kwargs) -> dict:
    rows = selectors.attribution_report(**kwargs)
    key = "campaign_id" if kwargs["group_by"] == "campaign" else "group"
    return {
        (None if r[key] == "(none)" else r[key]): (r["attributed_revenue"], pytest.approx(r["attributed_conversions"]), r["attributed_pipeline"], r["opportunity_count"])
        for r in rows
        # groups with spend only (no credits) are rows too; the reference has none
        if r["attributed_revenue"] or r["attributed_pipeline"] or r["opportunity_count"]
    }


def _filters(world):
    c1, c2 = world["campaigns"]
    ranges = [(None, None), (date(2026, 1, 15), date(2026, 2, 28)), (date(2026, 3, 1), None)]
    for (start, end), channel, campaign in itertools.product(ranges, [None, "email", "paid_search"], [None, c1.pk, c2.pk]):
        yield {"start": start, "end": end, "channel": channel, "campaign_id": campaign}


def test_rollup_reports_equal_the_credits_under_every_filter(world):
    for model in ("linear", "w_shaped", "markov", "time_decay", "first_touch", "last_non_direct"):
        for group_by in selectors.GROUPS:
            for f in _filters(world):
                assert _reported(model=model, group_by=group_by, **f) == _reference(model=model, group_by=group_by, **f), (model, group_by, f)
    # and something is being compared: revenue and counts are not all zero
    rows = selectors.attribution_report(model="linear", group_by="channel")
    assert sum(r["attributed_revenue"] for r in rows) == Decimal("3910.34")
    assert max(r["opportunity_count"] for r in rows) >= 3


def _rollup_snapshot():
    fields = ("model", "basis", "day", "channel", "campaign_id", "credit", "weight", "first_of_opportunity",
              "first_of_channel", "first_of_campaign", "first_of_channel_campaign")
    # weights are float sums: the order of addition may differ in the last bits
    return sorted(((*r[:6], round(r[6], 9), *r[7:]) for r in AttributionRollup.objects.values_list(*fields)), key=str)


def test_full_run_rollup_summed_in_python_equals_the_sql_aggregate(world):
    """A full run sums the rollup while streaming the credits; rollup_refresh
    aggregates the table in SQL: the same rows either way."""
    streamed = _rollup_snapshot()
    assert len(streamed) > 20
    rollup_refresh(models=list(ALL_MODELS))
    assert _rollup_snapshot() == streamed


def test_incremental_recompute_keeps_the_rollup_equal_to_a_full_rebuild(world):
    deal = world["deals"][0]
    # moves the deal's amount, its creation day and its close into another month
    opportunity_upsert(data={"amount": Decimal("640.00"), "created_at": T0 + timedelta(days=7)}, source="t", opportunity=deal)
    Opportunity.objects.filter(pk=deal.pk).update(closed_at=T0 + timedelta(days=50))
    attribution_compute(opportunity_ids=[deal.pk])
    fields = ("model", "basis", "day", "channel", "campaign_id", "credit", "weight", "first_of_opportunity", "first_of_channel", "first_of_campaign", "first_of_channel_campaign")

    def snapshot():
        return sorted(AttributionRollup.objects.values_list(*fields), key=str)

    incremental = snapshot()
    rollup_refresh(models=list(ALL_MODELS))
    assert incremental == snapshot()
    # the old close day has no won row of that deal any more
    won_days = {d for m, b, d, *_ in incremental if m == "linear" and b == "won"}
    assert (T0 + timedelta(days=20)).date() not in won_days and (T0 + timedelta(days=50)).date() in won_days


def test_report_and_compare_api_query_counts(world, client, superuser):
    """A fixed number of queries whatever the data: session and permission
    lookups, two rollup aggregates, spend, new leads, campaign names."""
    client.force_login(superuser)

    def count(path, params):
        with CaptureQueriesContext(connection) as ctx:
            r = client.get(f"/api/v1/attribution/{path}", params)
        assert r.status_code == 200, r.content
        return len(ctx.captured_queries), [q["sql"] for q in ctx.captured_queries]

    n_channel, sql = count("report", {"model": "linear", "group_by": "channel", "start": "2026-01-01", "end": "2026-12-31"})
    assert sum("attribution_attributionrollup" in q for q in sql) == 2
    # filtered reports too read only the rollup
    _, sql = count("report", {"model": "linear", "group_by": "campaign", "channel": "email", "campaign": world["campaigns"][0].pk})
    assert sum("attribution_attributionrollup" in q for q in sql) == 2
    assert not any("attribution_attributioncredit" in q for q in sql)
    n_campaign, sql = count("report", {"model": "linear", "group_by": "campaign"})
    assert n_campaign == n_channel + 1  # + the campaign names
    n_compare, sql = count("compare", {"group_by": "channel"})
    assert sum("attribution_attributionrollup" in q for q in sql) == 1  # every model in one aggregate
    assert n_compare == n_channel - 3  # one rollup aggregate, no spend, no new leads
    # more data, same count
    _deal([LeadFactory()], amount="5.00", created=T0, won_at=T0 + timedelta(days=1))
    attribution_compute()
    assert count("report", {"model": "linear", "group_by": "channel", "start": "2026-01-01", "end": "2026-12-31"})[0] == n_channel
