"""The journey builder in a real browser (Debian chromium via Playwright): a
Marketing Ops user who is not a superuser builds the ebook drip (a form
trigger, three emails with waits between them, a goal) through the forms,
typing no JSON, sees it drawn, and publishes it."""
from __future__ import annotations

import os

import pytest

from nurture.models import Workflow
from tests.browser.conftest import CHROMIUM
from tests.factories import FormFactory, UserFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture
def builder_setup(live_server):
    """Built before the browser starts (see test_admin_browser.grace)."""
    user = UserFactory(username="mops-browser", groups=["Marketing Ops"])
    assert not user.is_superuser
    FormFactory(key="ebook", name="Ebook download")


def _add_step(page, step_type: str, fields: dict[str, str], selects: dict[str, str] | None = None) -> None:
    """Pick the step type on the workflow page (the position defaults to
    after the last step), fill its form and add it."""
    page.select_option("#journey-add-type", step_type)
    page.click("#journey-add input[type=submit]")
    page.wait_for_selector("#step-form")
    for name, value in fields.items():
        page.fill(f"#id_{name}", value)
    for name, value in (selects or {}).items():
        page.select_option(f"#id_{name}", value)
    page.click("#step-form input[type=submit]")
    page.wait_for_selector("#journey")
    page.wait_for_selector(".messagelist .success")


def test_marketing_ops_builds_the_ebook_drip_without_json_and_publishes(live_server, builder_setup, browser_page, screenshots):
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "mops-browser")
    page.fill("#id_password", "pw-Secret-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/nurture/workflow/add/")
    assert page.locator("#id_definition").count() == 0 and page.locator("#id_status").count() == 0
    page.fill("#id_name", "Ebook drip")
    page.select_option("#id_trigger", "form")
    page.select_option("#id_trigger_form", label="Ebook download (ebook)")
    page.select_option("#id_goal_event", "demo_requested")
    page.screenshot(path=str(screenshots / "journey_builder_settings.png"), full_page=True)
    page.click("input[name=_continue]")
    page.wait_for_selector("#journey")

    _add_step(page, "send_email", {"subject": "Your ebook, {{first_name|there}}", "body": "Here is your copy."})
    _add_step(page, "wait", {"amount": "5"}, {"unit": "days"})
    _add_step(page, "send_email", {"subject": "Three ideas from the ebook", "body": "Chapter two in practice."})
    _add_step(page, "wait", {"amount": "9"}, {"unit": "days"})
    _add_step(page, "send_email", {"subject": "Ready to see it live?", "body": "Book a demo."})

    diagram = page.locator("#journey svg.nurture-diagram")
    assert diagram.locator("g.nurture-node").count() == 6  # three emails, two waits, the end
    assert diagram.locator("path.nurture-edge").count() == 5
    assert "5 days" in diagram.text_content() and "Ready to see it live?" in diagram.text_content()
    page.locator("#journey").screenshot(path=str(screenshots / "journey_builder_diagram.png"))

    # Fix the second wait from its box in the diagram.
    page.locator('#journey g.nurture-node[data-step="wait2"]').click()
    page.wait_for_selector("#step-form")
    page.fill("#id_amount", "7")
    page.click("#step-form input[type=submit]")
    page.wait_for_selector(".messagelist .success")

    page.click("#journey-publish")
    page.wait_for_selector(".messagelist .success")
    assert "Published version 1; the journey is active." in page.locator(".messagelist").inner_text()
    assert "Status: Active" in page.locator(".journey-status").inner_text()
    page.screenshot(path=str(screenshots / "journey_builder_published.png"), full_page=True)

    wf = Workflow.objects.get(name="Ebook drip")
    assert wf.status == "active" and wf.current_version.number == 1 and not wf.has_draft_changes
    assert wf.trigger_config == {"form": "ebook"} and wf.goal_event == "demo_requested"
    steps, key, chain = wf.current_version.definition["steps"], wf.current_version.definition["start"], []
    while key:
        chain.append((steps[key]["type"], steps[key].get("subject") or steps[key].get("days")))
        key = steps[key].get("next")
    assert chain == [("send_email", "Your ebook, {{first_name|there}}"), ("wait", 5),
                     ("send_email", "Three ideas from the ebook"), ("wait", 7),
                     ("send_email", "Ready to see it live?"), ("end", None)]
