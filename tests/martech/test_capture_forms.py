"""POST /api/v1/capture/<form_key> and services.forms.form_submit."""
from __future__ import annotations

import logging

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from martech.models import ConsentRecord, Event, Identity, Lead
from tests.factories import CampaignFactory, EventFactory, FormFactory, LeadFactory, form_field

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_cache(settings):
    # The throttle counts in the cache; keep every test's counters its own.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "h1-forms"}}
    cache.clear()  # locmem stores live per process, keyed by LOCATION


@pytest.fixture
def form():
    return FormFactory(
        key="contact",
        fields=[
            form_field("work_email", "email", required=True),
            form_field("first_name", "first_name"),
            form_field("company", "company_name", required=True),
            form_field("topic", "properties.topic"),
            form_field("country", "country"),
        ],
        defaults={"country": "DE", "properties.lead_source_detail": "website"},
        consent_field="consent",
        consent_channel="email",
        consent_text="I agree to receive marketing email.",
        honeypot_field="website",
    )


@pytest.fixture
def client():
    # CSRF checks on: the endpoint must still take third-party posts.
    return APIClient(enforce_csrf_checks=True)


def submit(client, data, key="contact", fmt="json", **extra):
    return client.post(f"/api/v1/capture/{key}", data, format=fmt, HTTP_USER_AGENT="Mozilla/5.0 test", **extra)


RECEIVED = {"status": "received"}
GOOD = {"work_email": " Ann@Acme.COM ", "first_name": "Ann", "company": "Acme", "topic": "pricing"}


def test_submission_creates_lead_and_event(client, form):
    res = submit(client, GOOD)
    assert res.status_code == 202, res.json()
    assert res.json() == RECEIVED
    lead = Lead.objects.get()
    assert (lead.email, lead.first_name, lead.company_name) == ("ann@acme.com", "Ann", "Acme")
    assert lead.properties == {"topic": "pricing", "lead_source_detail": "website"}
    assert lead.country == "DE"  # from defaults
    assert lead.stage_transitions.get().source == "form:contact"
    event = Event.objects.get()
    assert (event.kind, event.event_type.name, event.lead_id) == ("form", "form_submitted", lead.pk)
    assert event.properties["form"] == "contact" and event.client_event_id.startswith("form:contact:")

    again = submit(client, {**GOOD, "first_name": "Annie", "country": "fr"})
    assert again.status_code == 202 and again.json() == RECEIVED
    lead.refresh_from_db()
    # Public input fills empty fields only: the stored name and country stay,
    # what was sent is kept on the submission event.
    assert (lead.first_name, lead.country) == ("Ann", "DE")
    assert Lead.objects.count() == 1 and Event.objects.count() == 2
    second = Event.objects.order_by("id").last()
    assert second.properties["not_applied"] == {"first_name": "Annie", "country": "FR"}


def test_form_encoded_submission(client, form):
    res = submit(client, {**GOOD, "consent": "on"}, fmt="multipart")
    assert res.status_code == 202, res.json()
    res = client.post(
        "/api/v1/capture/contact",
        "work_email=bob%40acme.com&company=Acme",
        content_type="application/x-www-form-urlencoded",
    )
    assert res.status_code == 202, res.json()
    assert set(Lead.objects.values_list("email", flat=True)) == {"ann@acme.com", "bob@acme.com"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"work_email": "a@b.co"}, "company"),
        ({"company": "Acme"}, "work_email"),
        ({"work_email": "  ", "company": "Acme"}, "work_email"),
        ({"work_email": "not-an-email", "company": "Acme"}, "work_email"),
        ({"work_email": "a@b.co", "company": "Acme", "country": "Germany"}, "country"),
    ],
)
def test_bad_submission_names_the_form_field(client, form, data, field):
    res = submit(client, data)
    assert res.status_code == 400
    err = res.json()["error"]
    assert err["code"] == "invalid" and field in err["fields"], err
    assert Lead.objects.count() == 0 and Event.objects.count() == 0


def test_consent_is_recorded_with_evidence(client, form):
    page = "https://www.acme.example/contact?x=1"
    submit(client, {**GOOD, "consent": "true", "page_url": page}, REMOTE_ADDR="203.0.113.7")
    record = ConsentRecord.objects.get()
    assert (record.channel, record.status, record.source) == ("email", "granted", "form:contact")
    assert record.evidence == {
        "form": "contact",
        "ip": "203.0.113.7",
        "text": "I agree to receive marketing email.",
        "text_version": form.consent_version,
        "page_url": page,
        "user_agent": "Mozilla/5.0 test",
    }


@pytest.mark.parametrize("value", [None, "", "false", "0", "off"])
def test_no_consent_without_a_ticked_box(client, form, value):
    data = dict(GOOD) if value is None else {**GOOD, "consent": value}
    assert submit(client, data).status_code == 202
    assert ConsentRecord.objects.count() == 0


def test_honeypot_answers_like_success_and_writes_nothing(client, form, caplog):
    with caplog.at_level(logging.WARNING, logger="martech.services.forms"):
        res = submit(client, {**GOOD, "website": "http://spam.example", "consent": "on"})
    assert res.status_code == 202
    assert res.json() == RECEIVED
    assert Lead.objects.count() == 0 and Event.objects.count() == 0 and ConsentRecord.objects.count() == 0
    assert any("honeypot" in r.getMessage() for r in caplog.records)


def test_rate_limit_per_ip_is_a_json_429(client, form, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "form_capture": "3/min"},
    }
    for i in range(3):
        assert submit(client, {**GOOD, "work_email": f"p{i}@acme.com"}, REMOTE_ADDR="198.51.100.1").status_code == 202
    res = submit(client, {**GOOD, "work_email": "p9@acme.com"}, REMOTE_ADDR="198.51.100.1")
    assert res.status_code == 429
    err = res.json()["error"]
    assert err["code"] == "throttled" and err["retry_after"] > 0
    assert not Lead.objects.filter(email="p9@acme.com").exists()
    # Another address has its own budget.
    assert submit(client, {**GOOD, "work_email": "q@acme.com"}, REMOTE_ADDR="198.51.100.2").status_code == 202


def test_unknown_or_inactive_form_is_a_json_404(client, form):
    res = submit(client, GOOD, key="nope")
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    form.is_active = False
    form.save()
    res = submit(client, GOOD)
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    assert Lead.objects.count() == 0


def test_submission_id_makes_a_resubmit_idempotent(client, form):
    first = submit(client, {**GOOD, "submission_id": "abc-1", "consent": "on"})
    second = submit(client, {**GOOD, "submission_id": "abc-1", "consent": "on"})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == RECEIVED
    assert Event.objects.count() == 1 and ConsentRecord.objects.count() == 1
    # The event id is derived from the submission id, so it is stable.
    other = submit(client, {**GOOD, "submission_id": "abc-2"})
    assert other.status_code == 202 and Event.objects.count() == 2


def test_anonymous_id_links_earlier_visits(client, form):
    visits = [EventFactory(lead=None, anonymous_id="anon-9") for _ in range(2)]
    submit(client, {**GOOD, "anonymous_id": "anon-9"})
    lead = Lead.objects.get()
    assert Identity.objects.get(kind="anonymous", value="anon-9").lead == lead
    assert set(lead.events.values_list("pk", flat=True)) >= {v.pk for v in visits}
    assert Event.objects.get(kind="form").anonymous_id == "anon-9"


def test_utm_fields_are_normalized_onto_event_and_lead(client, form):
    campaign = CampaignFactory(utm_source="linkedin", utm_medium="paid_social", utm_campaign="launch")
    submit(client, {**GOOD, "utm_source": "LI", "utm_medium": "Paid-Social", "utm_campaign": "Launch", "utm_term": "crm"})
    event = Event.objects.get()
    assert (event.utm_source, event.utm_medium, event.utm_campaign, event.utm_term) == ("linkedin", "paid_social", "launch", "crm")
    assert event.channel == "paid_social" and event.campaign == campaign
    lead = Lead.objects.get()
    assert lead.original_source == "paid_social" and lead.first_utm_campaign == "launch"
    assert lead.latest_utm_source == "linkedin"


def test_existing_lead_is_updated_not_duplicated(client, form):
    lead = LeadFactory(email="ann@acme.com", first_name="")
    res = submit(client, GOOD)
    assert res.json() == RECEIVED
    lead.refresh_from_db()
    assert lead.first_name == "Ann" and Lead.objects.count() == 1
