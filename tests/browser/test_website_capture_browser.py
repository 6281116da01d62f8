"""Capture from a real website, in a real browser (Debian's /usr/bin/chromium
through Playwright, as tests/browser/test_admin_browser.py).

A customer's site on another origin (its own port) carries the tracker
snippet on every page and the form's embed snippet on its pricing page. A
visitor views two pages with UTMs, a script on the page calls the capture
endpoint with JSON (a CORS preflight), the visitor submits the embedded form
and lands on the thank-you page. The lead then has the first page view's
source as its original source and first touch, the consent evidence (the
exact wording and the embedding page) and both page views; the browser
reported no CORS refusal, script error or failed request. Browsers that send
Global Privacy Control or Do Not Track to a website that respects them get no
cookie and send nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from martech.hosted import form_embed_snippet
from martech.models import ConsentRecord, Event, Lead
from martech.services.tracker import tracker_snippet
from tests.browser.conftest import CHROMIUM
from tests.factories import FormFactory, WebsiteFactory, form_field

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

CONSENT = "Yes, Acme may email me about products and events. I can unsubscribe at any time."
THANKS = "Thanks! A colleague will write to you today."
HOME = "index.html?utm_source=google&utm_medium=cpc&utm_campaign=spring"
PRICING = "pricing.html?utm_source=newsletter&utm_medium=email&utm_campaign=march"
PRIVACY_SIGNALS = [
    "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})",
    "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})",
]


@pytest.fixture
def customer_site(live_server, other_site):
    """The customer's site with both snippets pasted in. Made before the
    browser starts (see test_admin_browser.grace)."""
    site = other_site()  # started first: its origin goes into the allowed lists
    website = WebsiteFactory(name="Acme site", allowed_origins=[site.url], track_events=[])
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
    tracker = tracker_snippet(website=website, base_url=live_server.url)
    embed = form_embed_snippet(form, base_url=live_server.url)

    def page(title: str, body: str) -> str:
        return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
                f"<link rel=icon href=\"data:,\">{tracker}</head><body>{body}</body></html>")

    site.add("index.html", page("Acme", "<h1>Acme</h1><a href=pricing.html>Pricing</a>"))
    site.add("pricing.html", page("Pricing", f"<h1>Pricing</h1><div id=contact>{embed}</div>"))
    return {"site": site, "website": website}


def _tracker_call(request) -> bool:
    return request.url.endswith("/api/v1/t") and request.method == "POST"


def test_visitor_journey_from_utm_page_views_to_the_embedded_form(live_server, customer_site, browser_page, screenshots):
    page, site = browser_page, customer_site["site"]
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    answered: list = []  # requests the server answered (their status line arrived)
    page.on("response", lambda resp: answered.append(resp.request))
    # A keepalive request (the tracker's) the server has answered is reported
    # aborted when its page goes away before the body is read: not a failure.
    page.on("requestfailed", lambda req: None if req in answered else problems.append(f"{req.url}: {req.failure}"))

    # Two page views with UTMs, sent by the tracker cross-origin (text/plain, no preflight).
    with page.expect_response(lambda r: _tracker_call(r.request)) as first:
        page.goto(f"{site.url}/{HOME}")
    assert first.value.status == 200, first.value.text()
    assert first.value.headers["access-control-allow-origin"] == site.url
    assert json.loads(first.value.request.post_data)["key"] == customer_site["website"].key
    anonymous_id = page.evaluate("window.martech.anonymousId()")
    cookies = {c["name"]: c for c in page.context.cookies(site.url)}
    assert anonymous_id and cookies["_mt_aid"]["value"] == anonymous_id
    with page.expect_response(lambda r: _tracker_call(r.request)) as second:
        page.goto(f"{site.url}/{PRICING}")
    assert second.value.json()["accepted"] == 1
    assert page.evaluate("window.martech.anonymousId()") == anonymous_id  # the same visitor
    views = list(Event.objects.filter(event_type__name="page_view").order_by("occurred_at", "id"))
    assert [(e.utm_source, e.anonymous_id, e.lead_id) for e in views] == [
        ("google", anonymous_id, None), ("newsletter", anonymous_id, None)]

    # A script on the page calls the capture endpoint with JSON: preflight, then the post.
    answer = page.evaluate(
        """async (url) => {
            const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({work_email: "script@acme.example", first_name: "Sam"})});
            return {status: r.status, body: await r.json()};
        }""",
        f"{live_server.url}/api/v1/capture/contact-us",
    )
    assert answer == {"status": 202, "body": {"status": "received"}}

    # The visitor fills in the embedded form and lands on the thank-you page.
    form = page.locator("form[data-martech-form=contact-us]")
    trap = form.locator("input[name=website]").bounding_box()
    assert trap["x"] + trap["width"] <= 0  # the honeypot is off the screen
    page.get_by_label("Work email").fill("visitor@acme.example")
    page.get_by_label("First name").fill("Vera")
    page.get_by_label("Team size").select_option("11+")
    page.get_by_label("Message").fill("Routing for 40 reps, please.")
    page.get_by_label(CONSENT).check()
    with page.expect_navigation():
        form.get_by_role("button", name="Submit").click()
    page.screenshot(path=str(screenshots / "website_capture_thanks.png"))
    assert page.url == f"{live_server.url}/f/contact-us/thanks"
    assert page.locator(".mt-thanks").inner_text() == THANKS
    assert problems == [], problems  # no CORS refusal, no script error, no failed request

    lead = Lead.objects.get(email="visitor@acme.example")
    assert (lead.first_name, lead.properties) == ("Vera", {"team_size": "11+", "message": "Routing for 40 reps, please."})
    # The first page view is the first touch: the original source is paid search.
    assert (lead.original_source, lead.first_utm_source, lead.first_utm_campaign) == ("paid_search", "google", "spring")
    assert lead.first_touch_at == views[0].occurred_at
    assert set(Event.objects.filter(event_type__name="page_view").values_list("lead_id", flat=True)) == {lead.pk}
    submitted = Event.objects.get(lead=lead, event_type__name="form_submitted")
    assert submitted.anonymous_id == anonymous_id and submitted.properties["page_url"] == f"{site.url}/{PRICING}"
    consent = ConsentRecord.objects.get(lead=lead)
    assert (consent.status, consent.evidence["text"], consent.evidence["page_url"]) == (
        "granted", CONSENT, f"{site.url}/{PRICING}")
    assert Lead.objects.filter(email="script@acme.example").exists()

    # A browser that asks not to be tracked (GPC, then DNT), on a website that
    # respects it: no cookie, no storage, no request; the page's calls do nothing.
    stored = Event.objects.count()
    for signal in PRIVACY_SIGNALS:
        context = page.context.browser.new_context()
        context.add_init_script(signal)
        private = context.new_page()
        calls = []
        private.on("request", lambda r: calls.append(r.url) if _tracker_call(r) else None)
        private.goto(f"{site.url}/{PRICING}")
        private.wait_for_function("window.martech && window.martech.loaded")
        private.evaluate("window.martech.track('demo_requested'); window.martech.identify('x@y.example'); window.martech.flush()")
        private.wait_for_load_state("networkidle")
        assert private.evaluate("window.martech.anonymousId()") is None, signal
        assert calls == [], signal
        assert context.cookies(site.url) == [], signal
        assert private.evaluate("localStorage.length") == 0, signal
        context.close()
    assert Event.objects.count() == stored
