"""The speed-to-lead page in a real browser: a Sales Ops user (not a
superuser) opens it from the Dashboards navigation and both charts show what
the API returns, each stage in its own colour, with the numbers in a table
beside the chart. Debian's /usr/bin/chromium through Playwright."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import Event, EventType
from routing.models import Assignment
from tests.browser.conftest import CHROMIUM
from tests.factories import EventFactory, LeadFactory, UserFactory

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def data(live_server):
    """Three leads over two days and two sources, made before the browser
    starts; the API's answers for the page's two requests."""
    user = UserFactory(username="sally", groups=["Sales Ops"])
    form = EventType.objects.get(name="form_submitted")
    day = timezone.now().replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=2)
    for n, (channel, days, owner_s, touch_h) in enumerate([("paid_search", 0, 2, 1), ("paid_search", 0, 6, 6),
                                                            ("direct", 1, 3, None)]):
        lead = LeadFactory()
        at = day + timedelta(days=days, minutes=n)
        EventFactory(lead=lead, event_type=form, kind=Event.Kind.FORM, occurred_at=at, channel=channel,
                     properties={"form": "demo-request"})
        Assignment.objects.create(lead=lead, status=Assignment.Status.ASSIGNED, trigger="new_lead",
                                  assigned_at=at + timedelta(seconds=owner_s), sla_due_at=at + timedelta(hours=4),
                                  first_touch_at=at + timedelta(hours=touch_h) if touch_h else None)
    api = APIClient()
    api.force_login(user)
    return {g: api.get("/api/v1/speed-to-lead", {"group_by": g}).json() for g in ("day", "source")}


def _charts(page) -> dict:
    return page.evaluate("""() => Object.fromEntries(Object.entries(window.speedToLeadCharts).map(([id, c]) => [id, {
        labels: c.data.labels, colours: c.data.datasets.map((d) => d.borderColor),
        datasets: c.data.datasets.map((d) => ({label: d.label, seconds: d.seconds})),
        drawn: c.canvas.width > 0 && c.canvas.height > 0,
    }]))""")


# Two parallel API requests: see test_attribution_dashboard (SQLite's live server hangs on them).
@pytest.mark.postgres_only
def test_sales_ops_sees_both_charts_with_the_api_numbers(live_server, data, browser_page, screenshots):
    page = browser_page
    failed = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "sally")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    page.click("text=Speed to lead")
    page.wait_for_selector("body[data-speed-loaded='1']")
    assert page.inner_text("#stl-status") == "" and failed == []
    scripts = page.eval_on_selector_all("script[src]", "els => els.map((e) => e.src)")
    assert all(s.startswith(live_server.url) for s in scripts)  # Chart.js is ours, no CDN
    page.screenshot(path=str(screenshots / "speed_to_lead.png"), full_page=True)

    charts = _charts(page)
    assert set(charts) == {"chart-day", "chart-source"} and all(c["drawn"] for c in charts.values())
    stages = data["day"]["stages"]
    for chart in charts.values():
        assert [d["label"] for d in chart["datasets"]] == [f"{s['label']} (median)" for s in stages]
        assert len(set(chart["colours"])) == len(stages)  # every stage its own colour
    days = data["day"]["results"]
    assert charts["chart-day"]["labels"] == [r["day"] for r in days]
    owner = charts["chart-day"]["datasets"][0]["seconds"]
    assert owner == [r["stages"]["owner"]["p50_seconds"] for r in days] == [4.0, 3.0]
    sources = data["source"]["results"]
    assert charts["chart-source"]["labels"] == [r["source_label"] for r in sources]
    assert sorted(charts["chart-source"]["labels"]) == ["Direct", "Paid search"]
    # The numbers beside each chart: a row per day / source, the SLA share in it.
    assert page.locator("#chart-day-table tbody tr").count() == 2
    first_day = page.locator("#chart-day-table tbody tr").first.inner_text()
    assert "4 s" in first_day and "50%" in first_day  # median of 2 s and 6 s; one touch of two within 4 h
    assert "3 leads" in page.inner_text("#stl-total")
