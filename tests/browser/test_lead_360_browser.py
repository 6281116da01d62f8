"""The lead list and the lead 360 page on a 1366x768 laptop screen, as a
Marketing Ops user (not a superuser): the list's key columns fit without a
horizontal scroll, with the navigation and filter sidebars open, and the 360
page shows the routed rep, the journey and its first email."""
from __future__ import annotations

from pathlib import Path

import pytest

from martech.scoring.services import segment_save
from martech.services.leads import lead_change_stage, lead_upsert
from nurture.models import Enrollment, Message, StepExecution, Workflow, WorkflowVersion
from routing.models import Assignment
from tests.browser.conftest import CHROMIUM, chromium_page
from tests.factories import EventFactory, UserFactory
from tests.routing.factories import RepFactory, TeamFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture
def laptop_page():
    with chromium_page(LAPTOP) as page:
        yield page


@pytest.fixture
def leads(live_server):
    """Made before the browser starts (see test_admin_browser.grace)."""
    UserFactory(username="mops", groups=["Marketing Ops"])
    rep = RepFactory(team=TeamFactory(name="Inbound EMEA"), name="Annabelle Representative-Longname", user=None)
    definition = {"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Your ebook", "body": "Here it is", "next": "w1"},
        "w1": {"type": "wait", "days": 5, "next": "end"}, "end": {"type": "end"}}}
    wf = Workflow.objects.create(name="Ebook drip", status="active", definition=definition)
    version = WorkflowVersion.objects.create(workflow=wf, number=1, definition=definition)
    segment_save(name="Germany", condition='country = "DE"')
    first = None
    for i in range(12):
        # Long values are the ones that widen a table.
        lead, _ = lead_upsert(data={
            "email": f"maximilian.alexander.vandenberg-{i}@a-rather-long-company-domain.example",
            "first_name": "Maximilian Alexander", "last_name": f"van den Berg-Oppenheimer {i}",
            "company_name": "International Business Machines Consulting Group", "country": "DE"}, source="form:ebook")
        Assignment.objects.create(lead=lead, status="assigned", rep=rep, team=rep.team, trigger="new_lead",
                                  reason="new lead", rule_name="EMEA", method="round_robin")
        first = first or lead
    EventFactory(lead=first)
    lead_change_stage(lead=first, to_stage="mql", reason="downloaded the ebook", source="scoring")
    enrollment = Enrollment.objects.create(workflow=wf, version=version, lead=first, step="w1", seq=1)
    execution = StepExecution.objects.create(enrollment=enrollment, workflow=wf, step="e1", step_type="send_email",
                                             key="browser-e1", outcome="sent")
    Message.objects.create(key="browser-m1", execution=execution, enrollment=enrollment, lead=first, workflow=wf,
                           step="e1", channel="email", to=first.email, subject="Your ebook", status="sent")
    return first


def test_lead_list_fits_a_laptop_screen_and_the_360_page(live_server, leads, laptop_page, screenshots):
    page = laptop_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "mops")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/martech/lead/")
    page.locator("#result_list").wait_for()
    assert page.locator("#nav-sidebar").is_visible() and page.locator("#changelist-filter").is_visible()
    page.screenshot(path=str(screenshots / "lead360_list_1366.png"))
    widths = page.evaluate("""() => ({
        doc: document.documentElement.scrollWidth, view: document.documentElement.clientWidth,
        table: document.querySelector('#result_list').getBoundingClientRect().right,
        filter: document.querySelector('#changelist-filter').getBoundingClientRect().left,
        wrapper: (() => { const r = document.querySelector('.results');
                          return r ? r.scrollWidth - r.clientWidth : 0; })(),
    })""")
    assert widths["doc"] <= widths["view"], widths  # no horizontal scroll on the page
    assert widths["wrapper"] <= 0, widths  # nor inside the results box
    assert widths["table"] <= widths["filter"], widths  # the table does not run under the filters
    # The person's cell stays readable: an email on at most two lines.
    lead_cell = page.locator("#result_list th.field-lead_cell").first.bounding_box()
    assert lead_cell["width"] >= 180, lead_cell
    headers = page.locator("#result_list thead th").all_inner_texts()
    for column in ("Lead", "Stage", "Score", "Owner / rep", "Country", "Created"):
        assert any(column.lower() in h.lower() for h in headers), (column, headers)
    # The rep without a user account is the owner shown.
    assert page.locator("#result_list td.field-owner_or_rep").first.inner_text() == "Annabelle Representative-Longname"
    for name in ("By owner / rep", "By segment", "By score"):
        assert page.locator("#changelist-filter").get_by_text(name).count() >= 1, name

    page.goto(f"{live_server.url}/admin/martech/lead/{leads.pk}/360/")
    page.locator("#lead360-journeys").wait_for()
    facts = page.locator("#lead360-facts").inner_text()
    assert "Annabelle Representative-Longname (Inbound EMEA)" in facts
    journeys = page.locator("#lead360-journeys").inner_text()
    assert "Ebook drip" in journeys and "Wait 5 days" in journeys
    assert "Your ebook" in page.locator("#lead360-messages").inner_text()
    assert "downloaded the ebook" in page.locator("#lead360-stages").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.screenshot(path=str(screenshots / "lead360_page_1366.png"), full_page=True)
