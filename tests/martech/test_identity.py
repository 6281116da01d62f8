"""Identity: what an identify (by email or userId) does with the person's
anonymous history and traits, and Segment's optional timestamp."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import ApiClient, Event, Lead
from tests.factories import FormFactory, LeadFactory, form_field

pytestmark = pytest.mark.django_db

T0 = "2025-03-01T12:00:00Z"
T1 = "2025-03-01T12:05:00Z"
T2 = "2025-03-01T12:10:00Z"
UTM_URL = "https://www.example.com/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring"


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "identity"}}
    cache.clear()


@pytest.fixture
def api():
    tok = "tok-identity-0123456789abcdef"
    ApiClient.objects.create(name="site", token_hash=ApiClient.hash_token(tok), token_prefix=tok[:8], scopes=["capture"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tok}")
    return client


def post(api, *items):
    res = api.post("/api/v1/events", {"batch": list(items)}, format="json")
    assert res.status_code == 200, res.content
    return res.json()["results"]


def page_view(mid, anon, at, url=UTM_URL):
    return {"type": "page", "messageId": mid, "anonymousId": anon, "timestamp": at, "properties": {"url": url}}


def test_identify_sets_original_source_and_first_touch_from_anonymous_history(api):
    post(api, page_view("p1", "anon-1", T0), page_view("p2", "anon-1", T1, url="https://www.example.com/docs"))
    post(api, {"type": "identify", "messageId": "i1", "anonymousId": "anon-1", "timestamp": T2, "traits": {"email": "ann@x.com"}})
    lead = Lead.objects.get(email="ann@x.com")
    assert (lead.original_source, lead.first_utm_source, lead.first_utm_campaign) == ("paid_search", "google", "spring")
    assert lead.first_touch_at == datetime(2025, 3, 1, 12, 0, tzinfo=dt_timezone.utc)
    assert lead.latest_touch_at == datetime(2025, 3, 1, 12, 5, tzinfo=dt_timezone.utc)
    assert set(Event.objects.filter(anonymous_id="anon-1").values_list("lead_id", flat=True)) == {lead.pk}


def test_form_after_anonymous_utm_visit_keeps_the_visit_as_first_touch(api):
    post(api, page_view("p1", "anon-2", T0))
    form = FormFactory(key="demo", fields=[form_field("email", "email", required=True)])
    res = APIClient().post(f"/api/v1/capture/{form.key}", {"email": "bob@x.com", "anonymous_id": "anon-2"}, format="json")
    assert res.status_code == 202
    lead = Lead.objects.get(email="bob@x.com")
    assert (lead.original_source, lead.first_utm_source) == ("paid_search", "google")
    assert lead.first_touch_at == datetime(2025, 3, 1, 12, 0, tzinfo=dt_timezone.utc)
    assert lead.latest_touch_at > lead.first_touch_at  # the form itself is the latest touch


def test_an_earlier_first_touch_of_the_lead_is_kept(api):
    lead = LeadFactory(email="cy@x.com", first_touch_at=datetime(2024, 1, 1, tzinfo=dt_timezone.utc), original_source="email", first_utm_source="newsletter")
    post(api, page_view("p1", "anon-3", T0))
    post(api, {"type": "identify", "messageId": "i3", "anonymousId": "anon-3", "timestamp": T2, "traits": {"email": "cy@x.com"}})
    lead.refresh_from_db()
    assert (lead.original_source, lead.first_utm_source) == ("email", "newsletter")


def test_user_id_only_identify_updates_the_lead_through_the_same_path(api):
    lead = LeadFactory(email="dee@x.com", job_title="", company_name="")
    post(api, {"type": "identify", "messageId": "i4", "userId": "u-7", "timestamp": T0, "traits": {"email": "dee@x.com"}})
    results = post(api, {"type": "identify", "messageId": "i5", "userId": "u-7", "timestamp": T1, "traits": {"title": "CTO", "company": "Dee Inc", "phone": "+14155550123"}})
    assert results[0]["status"] == "accepted"
    lead.refresh_from_db()
    assert (lead.job_title, lead.company_name, lead.phone) == ("CTO", "Dee Inc", "+14155550123")


def test_user_id_linked_earlier_in_the_same_batch(api):
    results = post(
        api,
        {"type": "identify", "messageId": "b2", "userId": "u-8", "timestamp": T1, "traits": {"title": "VP"}},
        {"type": "identify", "messageId": "b1", "userId": "u-8", "timestamp": T0, "traits": {"email": "eve@x.com"}},
    )
    assert [r["status"] for r in results] == ["accepted", "accepted"]
    assert Lead.objects.get(email="eve@x.com").job_title == "VP"


def test_user_id_only_traits_with_a_bad_value_are_rejected_naming_the_trait(api):
    LeadFactory(email="fay@x.com")
    post(api, {"type": "identify", "messageId": "i6", "userId": "u-9", "timestamp": T0, "traits": {"email": "fay@x.com"}})
    results = post(api, {"type": "identify", "messageId": "i7", "userId": "u-9", "timestamp": T1, "traits": {"phone": "1"}})
    assert (results[0]["status"], results[0]["field"]) == ("rejected", "traits.phone")


def test_unknown_user_id_keeps_traits_on_the_event_only(api):
    results = post(api, {"type": "identify", "messageId": "i8", "userId": "u-unknown", "anonymousId": "a", "timestamp": T0, "traits": {"title": "CEO"}})
    assert results[0]["status"] == "accepted"
    assert Lead.objects.count() == 0


def test_timestamp_is_optional_and_defaults_to_the_received_time(api):
    before = timezone.now()
    results = post(api, {"type": "track", "messageId": "t1", "anonymousId": "a", "event": "demo_requested"})
    assert results[0]["status"] == "accepted"
    event = Event.objects.get(client_event_id="t1")
    assert before <= event.occurred_at <= timezone.now()
    post(api, {"type": "track", "messageId": "t2", "anonymousId": "a", "event": "demo_requested", "receivedAt": T0})
    assert Event.objects.get(client_event_id="t2").occurred_at == datetime(2025, 3, 1, 12, 0, tzinfo=dt_timezone.utc)
