"""The website tracker in a real browser (Debian chromium via Playwright): a
customer's page on another origin includes the snippet; the visitor views two
pages with UTMs, then posts a plain HTML capture form, and the new lead holds
both page views. A browser sending Global Privacy Control or Do Not Track to
a website that respects them gets no cookie and sends nothing."""
from __future__ import annotations

import json
import os

import pytest

from martech.models import Event, Lead
from martech.services.tracker import tracker_snippet
from tests.browser.test_admin_browser import CHROMIUM, SCREENSHOTS, browser_page  # noqa: F401 (fixture)
from tests.factories import FormFactory, WebsiteFactory

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture
def customer_site(live_server, other_origin_site):
    """Built before the browser starts (see test_admin_browser.grace)."""
    website = WebsiteFactory(name="Customer site", allowed_origins=[other_origin_site.origin], track_events=[])
    form = FormFactory(key="contact", field_map={"email": "email"}, required_fields=["email"])
    snippet = tracker_snippet(website=website, base_url=live_server.url)

    def head(title: str) -> str:
        return f"<head><meta charset='utf-8'><title>{title}</title>{snippet}</head>"

    other_origin_site.write("index.html", f"<!doctype html><html>{head('Home')}<body><h1>Home</h1></body></html>")
    other_origin_site.write("pricing.html", f"""<!doctype html><html>{head('Pricing')}<body>
<h1>Pricing</h1>
<form id="contact" method="post" action="{live_server.url}/api/v1/capture/{form.key}">
  <input name="email" type="email">
  <input name="anonymous_id" type="hidden">
  <button type="submit">Talk to us</button>
</form></body></html>""")
    return {"website": website, "form": form, "site": other_origin_site}


PRIVACY_SIGNALS = [
    "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})",
    "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})",
]


def _tracker_call(request) -> bool:
    return request.url.endswith("/api/v1/t") and request.method == "POST"


def test_tracked_visit_then_form_post_make_one_lead_and_privacy_signals_stop_it(live_server, customer_site, browser_page):
    page, site = browser_page, customer_site["site"]
    home = f"{site.origin}/index.html?utm_source=google&utm_medium=cpc&utm_campaign=spring"
    with page.expect_response(lambda r: _tracker_call(r.request)) as first:
        page.goto(home)
    assert first.value.status == 200, first.value.text()
    assert first.value.headers["access-control-allow-origin"] == site.origin
    anonymous_id = page.evaluate("window.martech.anonymousId()")
    assert anonymous_id
    cookies = {c["name"]: c for c in page.context.cookies(site.origin)}
    assert cookies["_mt_aid"]["value"] == anonymous_id and cookies["_mt_aid"]["domain"] == "127.0.0.1"
    assert page.evaluate("localStorage.getItem('_mt_aid')") == anonymous_id
    sent = json.loads(first.value.request.post_data)
    assert sent["key"] == customer_site["website"].key
    assert first.value.request.headers["content-type"].startswith("text/plain")

    with page.expect_response(lambda r: _tracker_call(r.request)) as second:
        page.goto(f"{site.origin}/pricing.html?utm_source=newsletter&utm_medium=email&utm_campaign=march")
    assert second.value.json()["accepted"] == 1
    assert page.evaluate("window.martech.anonymousId()") == anonymous_id  # the same visitor
    assert page.input_value("input[name=anonymous_id]") == anonymous_id

    views = list(Event.objects.filter(event_type__name="page_view").order_by("occurred_at", "id"))
    assert [(e.utm_source, e.utm_medium, e.utm_campaign) for e in views] == [
        ("google", "cpc", "spring"), ("newsletter", "email", "march")]
    assert {e.anonymous_id for e in views} == {anonymous_id}
    assert views[0].properties["url"] == home and views[1].properties["title"] == "Pricing"
    assert all(e.lead_id is None for e in views)  # an anonymous visitor, so far

    page.fill("input[name=email]", "visitor@customer.example")
    with page.expect_response(lambda r: "/api/v1/capture/" in r.url) as posted:
        page.click("button[type=submit]")
    assert posted.value.status == 202
    page.screenshot(path=str(SCREENSHOTS / "tracker_form_posted.png"), full_page=True)

    lead = Lead.objects.get(email="visitor@customer.example")
    assert set(Event.objects.filter(event_type__name="page_view").values_list("lead_id", flat=True)) == {lead.pk}
    assert Event.objects.get(event_type__name="form_submitted").anonymous_id == anonymous_id

    # A browser that asks not to be tracked (GPC, then DNT), on a website that
    # respects it: no cookie, no storage, no request, the page's calls do nothing.
    stored = Event.objects.count()
    for signal in PRIVACY_SIGNALS:
        context = page.context.browser.new_context()
        context.add_init_script(signal)
        private = context.new_page()
        calls = []
        private.on("request", lambda r: calls.append(r.url) if _tracker_call(r) else None)
        private.goto(f"{site.origin}/pricing.html?utm_source=google&utm_medium=cpc")
        private.wait_for_function("window.martech && window.martech.loaded")
        private.evaluate("window.martech.track('demo_requested'); window.martech.identify('x@y.example'); window.martech.flush()")
        private.wait_for_load_state("networkidle")
        assert private.evaluate("window.martech.anonymousId()") is None, signal
        assert calls == [], signal
        assert context.cookies(site.origin) == [], signal
        assert private.evaluate("localStorage.length") == 0, signal
        assert private.input_value("input[name=anonymous_id]") == "", signal
        context.close()
    assert Event.objects.count() == stored
