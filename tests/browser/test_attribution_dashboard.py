"""The attribution dashboard in a real browser: an analyst logs in, opens it,
and every chart shows what the public API returns for the same filters
(read back from the Chart.js objects on the page). Debian's /usr/bin/chromium
through Playwright, as tests/browser/test_admin_browser.py."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone as dt_tz
from decimal import Decimal
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from attribution.computation import attribution_compute
from attribution.forecast import forecast_snapshot_take
from attribution.money import exchange_rate_upsert
from attribution.models import AttributionModel
from martech.models import Channel, LifecycleStage
from attribution.services import (
    campaign_spend_upsert, opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for,
)
from attribution.touchpoints import touchpoints_rebuild
from martech.services.leads import lead_change_stage, lead_upsert
from tests.browser.conftest import CHROMIUM
from tests.factories import CampaignFactory, EventFactory, UserFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

T0 = datetime(2026, 2, 2, 10, 0, tzinfo=dt_tz.utc)


@pytest.fixture
def data(live_server):
    """Two campaigns with spend, four leads touched by them, three deals (two
    won, one open) moved through stages, computed under every model. Made
    before the browser starts (see test_admin_browser.grace)."""
    analyst = UserFactory(username="ana", groups=["Analyst"], is_staff=True)
    search = CampaignFactory(name="Search Q1", channel="paid_search", utm_campaign="search-q1")
    mail = CampaignFactory(name="Newsletter", channel="email", utm_campaign="newsletter")
    for day in range(3):
        campaign_spend_upsert(campaign=search, date=(T0 + timedelta(days=day)).date(), amount=Decimal("100.00"))
    campaign_spend_upsert(campaign=mail, date=T0.date(), amount=Decimal("40.00"))
    leads = []
    for i in range(4):
        lead, _ = lead_upsert(data={"email": f"buyer{i}@acme.example"}, source="t")
        EventFactory(lead=lead, occurred_at=T0 - timedelta(days=10 - i), channel="paid_search", campaign=search, utm_source="g")
        EventFactory(lead=lead, occurred_at=T0 - timedelta(days=5 - i), channel="email", campaign=mail, utm_source="nl")
        if i < 3:
            lead_change_stage(lead=lead, to_stage="mql", reason="score", source="t")
        if i < 2:
            lead_change_stage(lead=lead, to_stage="sql", reason="accepted", source="t")
        leads.append(lead)
    touchpoints_rebuild(lead_ids=[lead.pk for lead in leads])
    for n, (amount, won) in enumerate([("5000.00", True), ("1500.00", True), ("800.00", False)]):
        opp, _ = opportunity_upsert(data={"name": f"Deal {n}", "amount": Decimal(amount), "created_at": T0}, source="t")
        opportunity_set_contact(opportunity=opp, lead=leads[n], is_primary=True)
        opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="qualification"), source="t", at=T0 + timedelta(days=2 + n))
        if won:
            opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="t", at=T0 + timedelta(days=9))
    # An open deal in euros expected in March (1,000 EUR at 1.10, 50%), and the forecast as it stood on 20 February.
    exchange_rate_upsert(currency="EUR", date=date(2026, 1, 1), rate="1.10", source="t")
    opp, _ = opportunity_upsert(data={"name": "Deal EUR", "amount": Decimal("1000.00"), "currency": "EUR", "created_at": T0,
                                      "stage": "proposal", "source": "email", "expected_close_date": date(2026, 3, 10)}, source="t")
    opportunity_set_contact(opportunity=opp, lead=leads[3], is_primary=True)
    forecast_snapshot_take(on=date(2026, 2, 20))
    attribution_compute()

    api = APIClient()
    api.force_login(analyst)
    expected = {}
    for name, path, params in [
        ("channel", "report", {"model": "linear", "group_by": "channel"}),
        ("campaign", "report", {"model": "linear", "group_by": "campaign"}),
        ("month", "report", {"model": "linear", "group_by": "month"}),
        ("compare", "compare", {"group_by": "channel"}),
        ("pipeline", "pipeline", {}),
        ("forecast", "forecast", {}),
        ("accuracy", "forecast/accuracy", {}),
    ]:
        r = api.get(f"/api/v1/attribution/{path}", params)
        assert r.status_code == 200, r.content
        expected[name] = r.json()
    return expected


def _chart_data(page) -> dict:
    return page.evaluate("""() => Object.fromEntries(Object.entries(window.attributionCharts).map(([id, c]) => [id, {
        labels: c.data.labels, datasets: c.data.datasets.map((d) => ({label: d.label, data: d.data})),
        drawn: c.canvas.width > 0 && c.canvas.height > 0,
    }]))""")



# The dashboard loads its charts with parallel API requests: on SQLite the
# live server answers them one at a time (tests/browser/conftest.py).
def test_analyst_sees_every_chart_with_the_api_numbers(live_server, data, browser_page, screenshots):
    page = browser_page
    failed = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "ana")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/attribution/attributioncredit/dashboard/")
    page.wait_for_selector("body[data-attribution-loaded='1']")
    assert page.inner_text("#att-status") == ""
    # Chart.js came from our static files, nothing from another host.
    scripts = page.eval_on_selector_all("script[src]", "els => els.map((e) => e.src)")
    assert any(s.endswith("/static/attribution/vendor/chart.umd.js") for s in scripts)
    assert all(s.startswith(live_server.url) for s in scripts)
    assert failed == []
    charts = _chart_data(page)
    page.screenshot(path=str(screenshots / "attribution_dashboard.png"), full_page=True)

    assert set(charts) == {
        "chart-channel", "chart-compare", "chart-spend", "chart-month", "chart-funnel", "chart-velocity",
        "chart-forecast-month", "chart-forecast-source", "chart-accuracy", "chart-source",
    }
    assert all(c["drawn"] for c in charts.values())

    ch = data["channel"]["results"]
    # codes shown by their labels
    assert [r["group"] for r in ch] == ["email", "paid_search"]
    assert charts["chart-channel"]["labels"] == ["Email", "Paid search"]
    assert charts["chart-channel"]["datasets"][0]["data"] == [float(r["attributed_revenue"]) for r in ch]
    # the linear model splits each won deal over its two touches: 6500 in all, half each
    assert sum(charts["chart-channel"]["datasets"][0]["data"]) == 6500.0

    cmp = data["compare"]["results"]
    assert charts["chart-compare"]["labels"] == [Channel(r["group"]).label for r in cmp]
    assert [d["label"] for d in charts["chart-compare"]["datasets"]] == [AttributionModel(m).label for m in cmp[0]["revenue"]]
    # every model its own colour, and a table of the same numbers under the chart
    colours = page.evaluate("window.attributionCharts['chart-compare'].data.datasets.map((d) => d.borderColor)")
    assert len(set(colours)) == len(colours) == len(AttributionModel.choices)
    assert page.locator("#chart-compare-table tbody tr").count() == len(cmp)
    for code, d in zip(cmp[0]["revenue"], charts["chart-compare"]["datasets"]):
        assert d["data"] == [float(r["revenue"][code]) for r in cmp]
        assert sum(d["data"]) == 6500.0  # every model credits all the closed-won revenue

    cam = data["campaign"]["results"]
    spend, revenue = charts["chart-spend"]["datasets"]
    assert charts["chart-spend"]["labels"] == [r["group"] for r in cam] == ["Search Q1", "Newsletter"]
    assert spend["data"] == [float(r["spend"] or 0) for r in cam] == [300.0, 40.0]
    assert revenue["data"] == [float(r["attributed_revenue"]) for r in cam]

    mon = data["month"]["results"]
    # January: the leads were created (new leads only); February: the deals and the spend, in one row
    assert charts["chart-month"]["labels"] == [r["group"] for r in mon] == ["2026-01", "2026-02"]
    assert [(r["new_leads"], r["spend"], r["attributed_revenue"]) for r in mon] == [(4, None, "0.00"), (0, "340.00", "6500.00")]
    assert charts["chart-month"]["datasets"][0]["data"] == [float(r["attributed_revenue"]) for r in mon]

    funnel = data["pipeline"]["lifecycle_funnel"]
    stage_names = dict(LifecycleStage.objects.values_list("key", "name"))
    assert charts["chart-funnel"]["labels"] == [stage_names[r["stage"]] for r in funnel]
    assert charts["chart-funnel"]["datasets"][0]["data"] == [r["reached"] for r in funnel]
    reached = dict(zip(charts["chart-funnel"]["labels"], charts["chart-funnel"]["datasets"][0]["data"]))
    assert (reached[stage_names["mql"]], reached[stage_names["sql"]]) == (3, 2)  # three moved to MQL, two of them on to SQL

    stages = data["pipeline"]["stages"]
    avg, median = charts["chart-velocity"]["datasets"]
    assert charts["chart-velocity"]["labels"] == [r["name"] for r in stages]
    assert avg["data"] == [r["average_days"] for r in stages]
    assert median["data"] == [r["median_days"] for r in stages]
    # every deal spent 2, 3, 4 days in prospecting before qualification
    assert avg["data"][0] == 3.0
    assert data["pipeline"]["velocity_days"] == 9.0
    assert page.inner_text("#att-velocity") == "9 days from creation to close won"

    # Money: the currency and the rate dates used are said above the charts.
    assert page.inner_text("#att-money") == (
        "Amounts in USD, converted at each deal's close-day rate (creation day while open); rates dated 2026-01-01 to 2026-01-01."
    )

    fc = data["forecast"]
    assert [r["month"] for r in fc["by_month"]] == charts["chart-forecast-month"]["labels"] == ["2026-03", "(unscheduled)"]
    weighted, commit, open_pipeline = charts["chart-forecast-month"]["datasets"]
    assert weighted["data"] == [float(r["weighted"]) for r in fc["by_month"]] == [550.0, 160.0]  # 1,100 x 50%; 800 x 20%
    assert commit["data"] == [0.0, 0.0] and open_pipeline["data"] == [1100.0, 800.0]
    assert weighted["label"] == "Weighted, USD"
    assert charts["chart-forecast-source"]["labels"] == ["(none)", "Email"]
    assert page.locator("#chart-forecast-month-table tbody tr").count() == 2

    acc = data["accuracy"]["results"]
    assert [(r["month"], r["forecast_taken_on"], r["weighted"], r["actual"]) for r in acc] == [("2026-03", "2026-02-20", "550.00", "0.00")]
    assert charts["chart-accuracy"]["labels"] == ["2026-03 (forecast of 2026-02-20)"]
    assert [d["data"] for d in charts["chart-accuracy"]["datasets"]] == [[550.0], [0.0], [0.0]]

    size, rate = charts["chart-source"]["datasets"]
    assert charts["chart-source"]["labels"] == ["(none)"]
    assert (size["data"], rate["data"]) == ([3250.0], [100.0])
    colours = page.evaluate("window.attributionCharts['chart-source'].data.datasets.map((d) => d.borderColor)")
    assert len(set(colours)) == 2
