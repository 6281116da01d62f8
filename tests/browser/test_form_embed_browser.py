"""A form embedded on another website, in a real browser: a page served from
another origin carries the admin's embed snippet; the visitor fills it in and
lands on the thank-you page; the lead exists with its consent evidence (the
exact wording and the embedding page); the browser reports no CORS refusal,
neither for the form post nor for a script's JSON call to the capture
endpoint. Debian's /usr/bin/chromium through Playwright, as
tests/browser/test_admin_browser.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from martech.hosted import form_embed_snippet
from martech.models import ConsentRecord, Event, Lead
from tests.browser.test_admin_browser import CHROMIUM, SCREENSHOTS, browser_page  # noqa: F401 (fixture)
from tests.factories import FormFactory, form_field

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

CONSENT = "Yes, Acme may email me about products and events. I can unsubscribe at any time."
THANKS = "Thanks! A colleague will write to you today."


@pytest.fixture
def contact_page(live_server, other_site):
    """The customer's site with the snippet pasted into its contact page.
    Made before the browser starts (see test_admin_browser.grace)."""
    site = other_site()  # started first: its origin goes into the form's allowed list
    form = FormFactory(
        key="contact-us",
        name="Contact us",
        fields=[
            form_field("work_email", "email", label="Work email", required=True),
            form_field("first_name", "first_name", label="First name", required=True),
            form_field("size", "properties.team_size", type="select", label="Team size",
                       choices=[["1-10", "1 to 10"], ["11+", "11 or more"]]),
            form_field("message", "properties.message", type="textarea", label="Message"),
        ],
        consent_field="consent",
        consent_text=CONSENT,
        thank_you_message=THANKS,
        allowed_origins=[site.url],
    )
    snippet = form_embed_snippet(form, base_url=live_server.url)
    return site.add(
        "contact.html",
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Acme: contact</title>"
        "<link rel=icon href=\"data:,\"></head>"
        f"<body><h1>Talk to Acme</h1><div id=contact>{snippet}</div></body></html>",
    )


def test_visitor_submits_the_embedded_form_and_lands_on_the_thank_you_page(live_server, contact_page, browser_page):
    page = browser_page
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("requestfailed", lambda req: problems.append(f"{req.url}: {req.failure}"))

    page.goto(contact_page)
    # A script on the customer's page calls the endpoint with JSON: a preflight, then the post.
    answer = page.evaluate(
        """async (url) => {
            const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({work_email: "script@acme.example", first_name: "Sam"})});
            return {status: r.status, body: await r.json()};
        }""",
        f"{live_server.url}/api/v1/capture/contact-us",
    )
    assert answer == {"status": 202, "body": {"status": "received"}}

    form = page.locator("form[data-martech-form=contact-us]")
    # The honeypot is in the markup (bots fill it) but off the screen, out of the tab order.
    trap = form.locator("input[name=website]").bounding_box()
    assert trap["x"] + trap["width"] <= 0
    page.get_by_label("Work email").fill("visitor@acme.example")
    page.get_by_label("First name").fill("Vera")
    page.get_by_label("Team size").select_option("11+")
    page.get_by_label("Message").fill("Routing for 40 reps, please.")
    page.get_by_label(CONSENT).check()
    with page.expect_navigation():
        form.get_by_role("button", name="Submit").click()
    page.screenshot(path=str(SCREENSHOTS / "form_embed_thanks.png"))

    assert page.url == f"{live_server.url}/f/contact-us/thanks"
    assert page.locator(".mt-thanks").inner_text() == THANKS
    assert problems == [], problems  # no CORS refusal, no script error, no failed request

    lead = Lead.objects.get(email="visitor@acme.example")
    assert (lead.first_name, lead.properties) == ("Vera", {"team_size": "11+", "message": "Routing for 40 reps, please."})
    consent = ConsentRecord.objects.get(lead=lead)
    assert consent.status == "granted"
    assert consent.evidence["text"] == CONSENT
    assert consent.evidence["page_url"] == contact_page  # filled by embed.js from the embedding page
    assert Event.objects.get(lead=lead).properties["page_url"] == contact_page
    assert Lead.objects.filter(email="script@acme.example").exists()
