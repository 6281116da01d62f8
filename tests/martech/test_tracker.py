"""The website tracker's public endpoint (POST /api/v1/t) and its admin:
key and origin checks, CORS, sendBeacon bodies, what a page may send, the
public-input rules on identify, limits, and the snippet and key rotation."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone

from martech import signals
from martech.models import Event, Identity, Lead, LifecycleStage, Website
from martech.selectors import NOT_APPLIED
from martech.services.leads import identity_link
from martech.services.tracker import tracker_snippet
from tests.factories import EventFactory, LeadFactory, WebsiteFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/t"
ORIGIN = "https://www.acme.example"


@pytest.fixture(autouse=True)
def _local_cache(settings):
    # The per-IP throttle counts in the cache; keep every test's counters its own.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tracker"}}
    cache.clear()


@pytest.fixture
def website():
    return WebsiteFactory(name="Acme site")


def now_iso(delta: timedelta = timedelta(0)) -> str:
    return (timezone.now() + delta).isoformat()


def page(anon="a-1", url="https://www.acme.example/pricing?utm_source=google&utm_medium=cpc&utm_campaign=brand", **extra):
    return {"type": "page", "messageId": str(uuid.uuid4()), "anonymousId": anon, "timestamp": now_iso(),
            "properties": {"url": url, "title": "Pricing"}, **extra}


def post(client: Client, body, *, origin: str | None = ORIGIN, content_type="text/plain;charset=UTF-8", **headers):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    if origin is not None:
        headers["HTTP_ORIGIN"] = origin
    return client.post(URL, data, content_type=content_type, **headers)


def batch(website, *items, **extra):
    return {"key": website.key, "sentAt": now_iso(), "batch": list(items), **extra}


# --- Key and origin ----------------------------------------------------------


@pytest.mark.parametrize("key", ["pk_nope", "", None, 12])
def test_a_wrong_key_is_refused_with_a_code(client, website, key):
    res = post(client, {"key": key, "batch": [page()]})
    assert res.status_code == 403
    assert res.json()["error"]["code"] == "invalid_key"
    assert Event.objects.count() == 0


def test_an_inactive_website_is_refused_like_an_unknown_key(client, website):
    website.is_active = False
    website.save()
    res = post(client, batch(website, page()))
    assert res.status_code == 403 and res.json()["error"]["code"] == "invalid_key"
    assert Event.objects.count() == 0


def test_the_key_may_come_in_the_query_string(client, website):
    res = client.post(f"{URL}?key={website.key}", json.dumps({"batch": [page()]}), content_type="text/plain",
                      HTTP_ORIGIN=ORIGIN)
    assert res.status_code == 200 and res.json()["accepted"] == 1


def test_an_allowed_origin_is_answered_with_cors_headers(client, website):
    res = post(client, batch(website, page()), origin="https://WWW.acme.example:443")  # normalized
    assert res.status_code == 200
    assert res["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in res["Vary"]
    assert res.json()["accepted"] == 1


def test_another_origin_is_refused_and_gets_no_cors_headers(client, website):
    res = post(client, batch(website, page()), origin="https://evil.example")
    assert res.status_code == 403
    assert res.json()["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in res
    assert Event.objects.count() == 0
    # "null" (a sandboxed page, file://) is never an allowed origin either.
    assert post(client, batch(website, page()), origin="null").status_code == 403


def test_a_request_without_origin_is_not_a_browser_request_and_is_taken(client, website):
    res = post(client, batch(website, page()), origin=None)
    assert res.status_code == 200 and res.json()["accepted"] == 1
    assert "Access-Control-Allow-Origin" not in res


def test_preflight_answers_only_the_websites_origins(client, website):
    WebsiteFactory(name="Other", allowed_origins=["https://other.example"])
    ok = client.options(f"{URL}?key={website.key}", HTTP_ORIGIN=ORIGIN, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert ok.status_code == 204
    assert ok["Access-Control-Allow-Origin"] == ORIGIN and "POST" in ok["Access-Control-Allow-Methods"]
    # Another website's origin with this website's key: refused.
    other = client.options(f"{URL}?key={website.key}", HTTP_ORIGIN="https://other.example")
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other
    # Without a key, any active website's origin is answered.
    assert client.options(URL, HTTP_ORIGIN="https://other.example").status_code == 204
    assert client.options(URL, HTTP_ORIGIN="https://evil.example").status_code == 403


# --- Bodies ------------------------------------------------------------------


def test_a_sendbeacon_text_plain_body_is_read_as_json(client, website):
    res = post(client, json.dumps(batch(website, page(), page())), content_type="text/plain;charset=UTF-8")
    assert res.status_code == 200, res.content
    assert res.json()["accepted"] == 2
    assert Event.objects.filter(event_type__name="page_view").count() == 2


@pytest.mark.parametrize("body, code", [
    ("not json", "parse_error"), ("[1, 2]", "parse_error"), (b"\xff\xfe", "parse_error"),
    ('{"batch": ' + "[" * 20000 + "]" * 20000 + "}", "parse_error"),
])
def test_a_body_that_is_not_a_json_object_is_a_parse_error(client, website, body, code):
    res = post(client, body)
    assert res.status_code == 400 and res.json()["error"]["code"] == code


def test_batch_size_and_body_size_are_bounded(client, website, settings):
    settings.MARTECH = {**settings.MARTECH, "TRACKER_BATCH_MAX": 3, "TRACKER_BODY_MAX": 4096}
    res = post(client, batch(website, *[page() for _ in range(4)]))
    assert res.status_code == 400
    assert res.json()["error"]["fields"] == {"batch": ["At most 3 events per request (got 4)."]}
    res = post(client, batch(website, page(title="x" * 5000)))
    assert res.status_code == 413 and res.json()["error"]["code"] == "too_large"
    assert post(client, batch(website)).json()["error"]["fields"] == {"batch": ["Send a non-empty list of events."]}
    assert Event.objects.count() == 0


def test_the_rate_limit_is_per_ip_and_a_json_429(client, website, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "tracker": "2/min"},
    }
    for _ in range(2):
        assert post(client, batch(website, page()), REMOTE_ADDR="198.51.100.1").status_code == 200
    res = post(client, batch(website, page()), REMOTE_ADDR="198.51.100.1")
    assert res.status_code == 429
    assert res.json()["error"]["code"] == "throttled" and res.json()["error"]["retry_after"] > 0
    assert post(client, batch(website, page()), REMOTE_ADDR="198.51.100.2").status_code == 200
    assert Event.objects.count() == 3


# --- What a page may send ----------------------------------------------------


def test_only_page_track_and_identify_are_taken_and_others_are_rejected_per_item(client, website):
    items = [
        page(),
        {"type": "alias", "messageId": "m-alias", "anonymousId": "a-1", "previousId": "x", "timestamp": now_iso()},
        {"type": "group", "messageId": "m-group", "anonymousId": "a-1", "groupId": "g", "timestamp": now_iso()},
        {"type": "track", "messageId": "m-demo", "anonymousId": "a-1", "event": "demo_requested", "timestamp": now_iso()},
        {"type": "track", "messageId": "m-sales", "anonymousId": "a-1", "event": "opportunity_won", "timestamp": now_iso()},
        {"type": "identify", "messageId": "m-id", "anonymousId": "a-1", "traits": {"firstName": "Ann"}, "timestamp": now_iso()},
    ]
    res = post(client, batch(website, *items))
    assert res.status_code == 200
    data = res.json()
    assert [r["status"] for r in data["results"]] == ["accepted", "rejected", "rejected", "accepted", "rejected", "accepted"]
    alias, group, sales = data["results"][1], data["results"][2], data["results"][4]
    assert alias["field"] == "type" and alias["reason"] == "Must be one of identify, page, track."
    assert alias["messageId"] == "m-alias" and group["field"] == "type"
    assert sales["field"] == "event" and "not a track event of this website" in sales["reason"]
    assert sales["index"] == 4 and sales["messageId"] == "m-sales"
    assert sorted(Event.objects.values_list("event_type__name", flat=True)) == ["demo_requested", "identify", "page_view"]


def test_ids_live_in_the_websites_namespace(client, website):
    # A trusted API client's event and user id: the page can neither claim nor probe them.
    lead = LeadFactory(email="vip@acme.example")
    EventFactory(client_event_id="crm-sync-1", lead=lead)
    Identity.objects.create(kind=Identity.Kind.USER, value="user-42", lead=lead)
    items = [
        {**page(anon="a-evil"), "messageId": "crm-sync-1"},
        {"type": "identify", "messageId": "m-2", "anonymousId": "a-evil", "userId": "user-42", "timestamp": now_iso()},
    ]
    data = post(client, batch(website, *items)).json()
    assert [r["status"] for r in data["results"]] == ["accepted", "accepted"]
    assert data["results"][0]["messageId"] == "crm-sync-1"  # answered as sent
    assert Event.objects.filter(client_event_id=f"t{website.pk}:crm-sync-1").exists()
    assert Identity.objects.filter(kind=Identity.Kind.USER).count() == 1
    # The anonymous visitor did not land on the API client's user's lead.
    assert not Event.objects.filter(anonymous_id="a-evil", lead=lead).exists()
    assert not Identity.objects.filter(kind=Identity.Kind.ANONYMOUS, value="a-evil", lead=lead).exists()


def test_the_visitors_clock_cannot_back_date_an_event(client, website):
    lead = LeadFactory(email="ann@acme.example")
    lead.first_touch_at = timezone.now() - timedelta(days=30)
    lead.original_source = "organic_search"
    lead.save()
    old = "2001-01-01T00:00:00Z"
    item = {"type": "track", "messageId": "m-old", "anonymousId": "a-2", "event": "demo_requested", "timestamp": old,
            "properties": {"email": "ann@acme.example"}, "context": {"campaign": {"source": "evil", "medium": "cpc"}}}
    before = timezone.now()
    data = post(client, batch(website, item, sentAt=old)).json()
    assert data["accepted"] == 1
    event = Event.objects.get(client_event_id=f"t{website.pk}:m-old")
    assert event.occurred_at >= before - timedelta(seconds=1)  # sentAt - timestamp = 0
    # Without a usable sentAt the age is measured from receipt, at most an hour.
    item2 = {**item, "messageId": "m-old2"}
    post(client, {"key": website.key, "batch": [item2]})
    event2 = Event.objects.get(client_event_id=f"t{website.pk}:m-old2")
    assert before - timedelta(hours=1, seconds=5) <= event2.occurred_at <= timezone.now() - timedelta(minutes=59)
    lead.refresh_from_db()
    assert lead.original_source == "organic_search"
    assert lead.first_touch_at < timezone.now() - timedelta(days=29)


def test_a_page_age_is_kept_when_sent_at_says_so(client, website):
    sent = timezone.now() + timedelta(hours=3)  # a visitor's clock three hours ahead
    item = {**page(), "timestamp": (sent - timedelta(seconds=20)).isoformat()}
    before = timezone.now()
    post(client, batch(website, item, sentAt=sent.isoformat()))
    event = Event.objects.get()
    assert before - timedelta(seconds=21) <= event.occurred_at <= timezone.now() - timedelta(seconds=19)


def test_context_ip_and_received_at_from_the_page_are_dropped(client, website):
    item = {**page(), "receivedAt": "2001-01-01T00:00:00Z", "context": {"ip": "203.0.113.66", "locale": "de-DE"}}
    post(client, batch(website, item), HTTP_USER_AGENT="Mozilla/5.0 test")
    event = Event.objects.get()
    assert "ip" not in event.context and event.context["locale"] == "de-DE"
    assert event.context["userAgent"] == "Mozilla/5.0 test" and event.context["website"] == website.pk
    assert event.received_at > timezone.now() - timedelta(minutes=1)


# --- Public input rules on identify ------------------------------------------


def test_identify_through_the_tracker_cannot_overwrite_a_lead_or_move_its_stage(client, website):
    customer = LifecycleStage.objects.get(key="customer")
    lead = LeadFactory(email="carla@acme.example", first_name="Carla", last_name="", job_title="CFO",
                       lifecycle_stage=customer, hubspot_id="hs-1")
    traits = {"email": "Carla@Acme.example", "firstName": "Mallory", "lastName": "Customer", "title": "Intern",
              "lifecycle_stage": "subscriber", "hubspot_id": "hs-evil"}
    item = {"type": "identify", "messageId": "m-id", "anonymousId": "a-3", "traits": traits, "timestamp": now_iso()}
    res = post(client, batch(website, item))
    assert res.status_code == 200 and res.json()["accepted"] == 1
    lead.refresh_from_db()
    assert (lead.first_name, lead.job_title, lead.lifecycle_stage_id, lead.hubspot_id) == ("Carla", "CFO", customer.pk, "hs-1")
    assert lead.last_name == "Customer"  # an empty field is filled
    event = Event.objects.get(client_event_id=f"t{website.pk}:m-id")
    assert event.lead_id == lead.pk
    assert event.properties[NOT_APPLIED] == {"first_name": "Mallory", "job_title": "Intern"}


def test_the_answer_is_the_same_for_a_known_and_an_unknown_email(client, website):
    LeadFactory(email="known@acme.example", first_name="Kim")

    def identify(email, mid):
        item = {"type": "identify", "messageId": mid, "anonymousId": mid, "traits": {"email": email, "firstName": "X"},
                "timestamp": now_iso()}
        res = post(client, batch(website, item))
        body = res.json()
        body["results"][0].pop("messageId")
        return res.status_code, body

    assert identify("known@acme.example", "m-k") == identify("new@acme.example", "m-n")
    assert Lead.objects.get(email="known@acme.example").first_name == "Kim"
    assert Lead.objects.get(email="new@acme.example").first_name == "X"


def test_api_clients_keep_their_trusted_identify(db):
    # The public flag is the tracker's alone: the token-holding API overwrites as before.
    from martech.services.ingest import events_ingest

    lead = LeadFactory(email="dana@acme.example", first_name="Dana")
    item = {"type": "identify", "messageId": "m-api", "anonymousId": "a-api", "traits": {"email": "dana@acme.example",
            "firstName": "Danielle"}, "timestamp": now_iso()}
    assert events_ingest(items=[item], source="api:crm").results[0].status == "accepted"
    lead.refresh_from_db()
    assert lead.first_name == "Danielle"
    assert NOT_APPLIED not in Event.objects.get(client_event_id="m-api").properties


# --- Privacy signals (the server side; the script's side is in the browser test)


@pytest.mark.parametrize("header", [{"HTTP_DNT": "1"}, {"HTTP_SEC_GPC": "1"}])
def test_a_privacy_signal_stores_nothing_when_the_website_respects_it(client, website, header):
    res = post(client, batch(website, page()), **header)
    assert res.status_code == 202 and res.json() == {"status": "ignored", "reason": "privacy_signal"}
    assert Event.objects.count() == 0
    website.respect_privacy_signals = False
    website.save()
    assert post(client, batch(website, page()), **header).json()["accepted"] == 1


# --- Model, admin, snippet ---------------------------------------------------


def test_origins_are_validated_and_normalized_on_clean():
    from django.core.exceptions import ValidationError

    site = Website(name="s", allowed_origins=["https://WWW.Example.com:443/", "http://localhost:8080"])
    site.full_clean()
    assert site.allowed_origins == ["https://www.example.com", "http://localhost:8080"]
    bad = Website(name="t", allowed_origins=["www.example.com", "https://x.example/path"], track_events=["nope"])
    with pytest.raises(ValidationError) as exc:
        bad.full_clean()
    assert set(exc.value.message_dict) == {"allowed_origins", "track_events"}
    assert len(exc.value.message_dict["allowed_origins"]) == 2


def test_snippet_names_the_script_the_key_and_the_endpoint(website):
    snippet = tracker_snippet(website=website, base_url="https://ops.example.com/")
    assert 'src="https://ops.example.com/static/martech/tracker.js"' in snippet
    assert f'data-key="{website.key}"' in snippet
    assert 'data-endpoint="https://ops.example.com/api/v1/t"' in snippet
    assert 'data-respect-privacy="1"' in snippet
    website.respect_privacy_signals = False
    assert "data-respect-privacy" not in tracker_snippet(website=website, base_url="https://ops.example.com")


def test_the_tracker_script_is_a_static_file(client, settings):
    from django.contrib.staticfiles import finders

    path = finders.find("martech/tracker.js")
    assert path
    source = open(path).read()
    assert len(source.encode()) < 12_000  # a few KB, no build step
    for needle in ("navigator.sendBeacon", "keepalive", "globalPrivacyControl", "doNotTrack", 'name="anonymous_id"'):
        assert needle in source


def test_the_script_is_served_under_its_plain_name_with_debug_off(settings, tmp_path):
    # The snippet names the plain path, so a pasted snippet survives releases;
    # the manifest storage keeps the original beside the hashed copy.
    from django.core.management import call_command

    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
    call_command("collectstatic", "--noinput", verbosity=0)
    res = Client().get("/static/martech/tracker.js")
    assert res.status_code == 200
    assert b"sendBeacon" in b"".join(res.streaming_content)


def test_admin_shows_the_snippet_and_rotates_the_key(client, website, marketing_ops):
    client.force_login(marketing_ops)
    page_html = client.get(f"/admin/martech/website/{website.pk}/change/").content.decode()
    assert 'id="tracker-snippet"' in page_html
    assert f"data-key=&quot;{website.key}&quot;" in page_html  # escaped inside the textarea
    assert "http://testserver/api/v1/t" in page_html
    old = website.key

    url = "/admin/martech/website/"
    confirm = client.post(url, {"action": "rotate_website_key", "_selected_action": [website.pk]})
    assert confirm.status_code == 200 and b"The old key stops working" in confirm.content
    website.refresh_from_db()
    assert website.key == old  # nothing before the confirmation
    done = client.post(url, {"action": "rotate_website_key", "_selected_action": [website.pk], "apply": "yes"}, follow=True)
    assert b"Rotated the publishable key of 1 website" in done.content
    website.refresh_from_db()
    assert website.key != old and website.key.startswith("pk_")
    assert post(Client(), {"key": old, "batch": [page()]}).json()["error"]["code"] == "invalid_key"
    assert post(Client(), batch(website, page())).status_code == 200
    assert website.history.first().history_change_reason == "publishable key rotated"


def test_admin_adds_a_website_with_one_origin_per_line(client, superuser):
    client.force_login(superuser)
    res = client.post("/admin/martech/website/add/", {
        "name": "Docs", "allowed_origins": "https://Docs.example.com\nhttp://localhost:3000\n",
        "track_events": ["demo_requested"], "respect_privacy_signals": "on", "is_active": "on",
    })
    assert res.status_code == 302, res.content.decode()[:2000]
    site = Website.objects.get(name="Docs")
    assert site.allowed_origins == ["https://docs.example.com", "http://localhost:3000"]
    assert site.track_events == ["demo_requested"] and site.key.startswith("pk_")
    bad = client.post("/admin/martech/website/add/", {"name": "Bad", "allowed_origins": "docs.example.com"})
    assert bad.status_code == 200 and b"is not an origin" in bad.content


def test_a_batch_costs_a_bounded_number_of_queries(client, website, django_assert_max_num_queries):
    lead = LeadFactory(email="known@acme.example")
    identity_link(lead=lead, kind=Identity.Kind.ANONYMOUS, value="a-known")
    post(client, batch(website, page(anon="a-known")))  # warm the per-process configuration
    items = [page(anon=f"a-{i}") for i in range(18)] + [page(anon="a-known"), page(anon="a-known", url="/docs")]
    # The configuration tokens (website, catalog, UTM tables: one query),
    # identities, campaigns (a UTM campaign is present), the insert (it returns
    # the new ids; SQLite reads them back), the known visitor's lead locked
    # and its touch written, in a savepoint (the test's transaction); its
    # capture recorded for the capture task (martech.services.capture).
    with django_assert_max_num_queries(9 if connection.vendor == "postgresql" else 10):
        res = post(client, batch(website, *items))
    assert res.json()["accepted"] == 20
    lead.refresh_from_db()
    assert lead.first_utm_source == "google" and lead.latest_touch_at is not None


def test_a_batch_of_anonymous_page_views_wakes_nothing_downstream(client, website, django_capture_on_commit_callbacks,
                                                                  django_assert_num_queries, monkeypatch):
    """What every receiver of events_ingested acts on is an event with a lead:
    told which events have one, they spend no query and queue no task on a
    batch without."""
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **kw: queued.append(a))
    monkeypatch.setattr("attribution.receivers.async_task", lambda *a, **kw: queued.append(a))
    seen = []
    signals.events_ingested.connect(lambda sender, **kw: seen.append(kw["with_lead"]), weak=False, dispatch_uid="t")
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            res = post(client, batch(website, *[page(anon=f"a-{i}") for i in range(5)]))
        assert res.json()["accepted"] == 5
        with django_assert_num_queries(0):
            for cb in callbacks:
                cb()
    finally:
        signals.events_ingested.disconnect(dispatch_uid="t")
    # No event of a lead: no capture task, and so no announcement at all.
    assert queued == [] and seen == []

    # A known visitor's page view makes one capture task, with that event
    # only (it scores, announces and attributes; no rescoring, attribution or
    # scoring task of its own beside it: tests/scoring/test_rescore_fields.py).
    lead = LeadFactory(email="known@acme.example")
    identity_link(lead=lead, kind=Identity.Kind.ANONYMOUS, value="a-known")
    with django_capture_on_commit_callbacks(execute=True):
        post(client, batch(website, page(anon="a-new"), page(anon="a-known")))
    event = Event.objects.get(lead=lead)
    assert queued == [("martech.tasks.capture_process", [lead.pk], [event.pk], [], [], website.source, "event")]
