"""The admin in a real browser: log in, find a lead by email, open it and see
its timeline. Drives Debian's /usr/bin/chromium headless through Playwright
(no downloaded browser)."""
from __future__ import annotations

from pathlib import Path

import pytest

from martech.services.leads import lead_change_stage, lead_upsert
from tests.browser.conftest import CHROMIUM
from tests.factories import EventFactory, UserFactory

pytestmark = [
    pytest.mark.browser,
    # The live server answers from another thread, so the data must be
    # committed; serialized_rollback restores the seeded reference data
    # (stages, event catalog, roles) after the flush, for the tests that follow.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def grace(live_server):
    """Data made before the browser starts: Playwright's sync API runs in a
    greenlet with its own context, where the ORM would open (and leave open)
    a second connection."""
    UserFactory(username="ops", is_superuser=True)
    lead, _ = lead_upsert(
        data={"email": "grace@acme.example", "first_name": "Grace", "last_name": "Hopper", "company_name": "Acme"},
        source="form:demo",
    )
    EventFactory(lead=lead, properties={"url": "https://acme.example/pricing"})
    lead_change_stage(lead=lead, to_stage="mql", reason="visited pricing twice", source="scoring")
    for i in range(3):  # others in the list, so the search has to find her
        lead_upsert(data={"email": f"other{i}@acme.example"}, source="t")
    return lead


def test_find_a_lead_by_email_and_read_its_timeline(live_server, grace, browser_page, screenshots):
    lead = grace
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/martech/lead/")
    page.fill("#searchbar", "grace@acme.example")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**/admin/martech/lead/?q=grace%40acme.example")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    page.screenshot(path=str(screenshots / "h3_admin_lead_search.png"), full_page=True)

    rows.first.locator("th a").click()
    page.wait_for_url(f"**/admin/martech/lead/{lead.pk}/change/**")
    timeline = page.locator("table.martech-timeline")
    timeline.wait_for()
    text = timeline.inner_text()
    assert "Page viewed" in text and "page_view" not in text  # the event type by its catalog label
    assert "Stage: Lead → Marketing qualified lead (MQL)" in text
    assert "visited pricing twice" in text
    assert page.locator(".martech-badge-event").count() == 1
    assert page.locator(".martech-badge-stage").count() == 2  # created as Lead, then MQL
    page.screenshot(path=str(screenshots / "h3_admin_lead_change.png"), full_page=True)
