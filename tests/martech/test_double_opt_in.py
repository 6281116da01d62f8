"""Double opt-in: a form's email consent counts only after the person clicks
the signed, expiring link of the confirmation email; journeys wait for it;
public posts can neither flip consent nor flood an address nor tell who is on file."""
from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.core import mail, signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import TestCase
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import ConsentConfirmation, ConsentRecord, Lead
from martech.selectors import lead_consent_state
from martech.services.leads import consent_record
from martech.services.preferences import consent_confirmations_expire, consent_confirmations_send
from tests.factories import FormFactory, LeadFactory, form_field

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "doi"}}
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    cache.clear()
    mail.outbox = []


@pytest.fixture
def form():
    return FormFactory(key="newsletter", name="Newsletter", double_opt_in=True, consent_channel="email",
                       fields=[form_field("email", "email", required=True)])


def post(data, key="newsletter"):
    client = APIClient()
    with TestCase.captureOnCommitCallbacks(execute=False):  # the wake-up task is not run here
        return client.post(f"/api/v1/capture/{key}", data, format="json", HTTP_USER_AGENT="Mozilla/5.0 form",
                           REMOTE_ADDR="198.51.100.7")


def confirm_path() -> str:
    text = mail.outbox[-1].body
    return re.search(r"Confirm: https?://[^/]+(/\S+)", text).group(1)


def test_form_setting_needs_the_email_consent_box():
    form = FormFactory.build(key="x", name="X", double_opt_in=True, consent_channel="sms",
                             fields=[form_field("email", "email", required=True)])
    with pytest.raises(ValidationError) as exc:
        form.clean()
    assert "double_opt_in" in exc.value.message_dict


def test_submission_is_pending_until_the_click(form):
    r = post({"email": "Ann@Example.com", "consent": "on"})
    assert r.status_code == 202 and r.json() == {"status": "received"}
    lead = Lead.objects.get(email="ann@example.com")
    assert lead_consent_state(lead=lead)["email"] is None and not ConsentRecord.objects.exists()
    pending = ConsentConfirmation.objects.get()
    assert (pending.status, pending.form, pending.sent_at) == ("pending", form, None)
    assert pending.evidence["ip"] == "198.51.100.7" and pending.evidence["text"] == form.consent_text
    assert consent_confirmations_send() == 1 and consent_confirmations_send() == 0  # mailed once
    assert mail.outbox[0].to == ["ann@example.com"] and "Please confirm" in mail.outbox[0].subject

    client = APIClient(enforce_csrf_checks=False)
    page = client.get(confirm_path())
    assert page.status_code == 200 and b"Confirm my subscription" in page.content
    assert not ConsentRecord.objects.exists()  # a mail scanner's GET consents to nothing
    with TestCase.captureOnCommitCallbacks(execute=True):
        done = client.post(confirm_path(), REMOTE_ADDR="192.0.2.44", HTTP_USER_AGENT="Mozilla/5.0 click")
    assert done.status_code == 200 and b"you are subscribed" in done.content
    record = ConsentRecord.objects.get()
    assert (record.channel, record.status, record.source) == ("email", "granted", "form:newsletter")
    assert record.evidence["form"] == "newsletter" and record.evidence["ip"] == "198.51.100.7"
    click = record.evidence["double_opt_in"]
    assert click["ip"] == "192.0.2.44" and click["user_agent"] == "Mozilla/5.0 click"
    assert click["confirmation"] == pending.pk
    pending.refresh_from_db()
    assert pending.status == "confirmed" and pending.record == record
    client.post(confirm_path())  # a second click
    assert ConsentRecord.objects.count() == 1


def test_tampered_and_expired_links(form, monkeypatch, settings):
    post({"email": "ann@example.com", "consent": "on"})
    consent_confirmations_send()
    path = confirm_path()
    client = APIClient()
    assert client.get(path[:-4] + "abcd").status_code == 404
    assert client.post(path[:-4] + "abcd").status_code == 404
    other = signing.dumps({"c": ConsentConfirmation.objects.get().pk}, salt="nurture.track")
    assert client.post(f"/consent/confirm/{other}").status_code == 404  # another link's signature
    real = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real() + (settings.MARTECH_CONSENT["CONFIRM_DAYS"] + 1) * 86400)
    r = client.post(path)
    assert r.status_code == 410 and b"expired" in r.content and b"ann@" not in r.content
    assert not ConsentRecord.objects.exists()


def test_an_expired_request_grants_nothing_even_with_a_fresh_signature(form):
    post({"email": "ann@example.com", "consent": "on"})
    consent_confirmations_send()
    ConsentConfirmation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert APIClient().post(confirm_path()).status_code == 410
    assert not ConsentRecord.objects.exists()
    assert ConsentConfirmation.objects.get().status == "expired"


def test_public_posts_cannot_flip_consent_or_flood_an_address(form):
    known = LeadFactory(email="known@example.com")
    consent_record(lead=known, channel="email", granted=True, source="import")
    answers = [post({"email": e, "consent": "on"}) for e in ("known@example.com", "new@example.com")]
    assert [(a.status_code, a.json()) for a in answers] == [(202, {"status": "received"})] * 2  # no enumeration
    assert lead_consent_state(lead=known)["email"] == "granted"
    assert not ConsentConfirmation.objects.filter(lead=known).exists()
    for _ in range(5):
        post({"email": "new@example.com", "consent": "on"})
    assert ConsentConfirmation.objects.filter(lead__email="new@example.com").count() == 1
    assert consent_confirmations_send() == 1 and len(mail.outbox) == 1


def test_unsubscribed_person_can_opt_in_again_by_confirming(form):
    from nurture.models import Suppression

    lead = LeadFactory(email="back@example.com")
    consent_record(lead=lead, channel="email", granted=False, source="nurture:unsubscribe")
    Suppression.objects.create(address="back@example.com", reason="unsubscribe")
    post({"email": "back@example.com", "consent": "on"})
    assert lead_consent_state(lead=lead)["email"] == "withdrawn"  # the post alone changes nothing
    consent_confirmations_send()
    with TestCase.captureOnCommitCallbacks(execute=True):
        APIClient().post(confirm_path())
    assert lead_consent_state(lead=lead)["email"] == "granted"
    assert not Suppression.objects.filter(address="back@example.com").exists()


def test_journey_waits_for_the_click_then_sends(form):
    from nurture.engine import enrollments_advance_due
    from nurture.models import Enrollment, Message, Workflow
    from nurture.services import enrollment_create, workflow_publish
    from tests.nurture.conftest import email_flow

    wf = Workflow.objects.create(name="welcome", definition=email_flow(1))
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    post({"email": "ann@example.com", "consent": "on"})
    lead = Lead.objects.get(email="ann@example.com")
    enrollment_create(workflow=wf, lead=lead, source="form:newsletter")
    now = timezone.now()
    enrollments_advance_due(now=now)
    enr = Enrollment.objects.get()
    assert enr.status == "active" and enr.step == "e1" and enr.due_at > now and enr.state["awaiting_confirmation"]
    assert not Message.objects.exists()

    consent_confirmations_send()
    with TestCase.captureOnCommitCallbacks(execute=True):
        APIClient().post(confirm_path())
    enr.refresh_from_db()
    assert enr.due_at <= timezone.now()  # woken by the click
    enrollments_advance_due()
    assert Message.objects.get().status == "sent"


def test_journey_skips_once_the_request_expired(form):
    from nurture.engine import enrollments_advance_due
    from nurture.models import StepExecution, Workflow
    from nurture.services import enrollment_create, workflow_publish
    from tests.nurture.conftest import email_flow

    wf = Workflow.objects.create(name="welcome", definition=email_flow(1))
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    post({"email": "ann@example.com", "consent": "on"})
    lead = Lead.objects.get(email="ann@example.com")
    enrollment_create(workflow=wf, lead=lead, source="t")
    ConsentConfirmation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    assert consent_confirmations_expire() == 1
    enrollments_advance_due()
    assert StepExecution.objects.get(step="e1").outcome == "skipped:no_consent"


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("reference_data")
def test_concurrent_clicks_and_posts_write_once():
    """Ten clicks of one link at once grant once; ten posts of one address at
    once make one request (each in its own thread, connection, transaction)."""
    from tests.martech.test_capture_concurrency import N, run_at_once

    FormFactory(key="newsletter", name="Newsletter", double_opt_in=True, consent_channel="email",
                fields=[form_field("email", "email", required=True)])
    from django.test import override_settings

    rates = {"anon": "1000/min", "user": "1000/min", "form_capture": "1000/min", "tracker": "1000/min"}
    from django.conf import settings as dj

    with override_settings(REST_FRAMEWORK={**dj.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        answers = run_at_once(lambda i: APIClient().post("/api/v1/capture/newsletter",
                                                         {"email": "race@example.com", "consent": "on"},
                                                         format="json").status_code)
    assert answers == [202] * N
    assert ConsentConfirmation.objects.count() == 1
    consent_confirmations_send()
    path = confirm_path()
    codes = run_at_once(lambda i: APIClient().post(path).status_code)
    assert codes == [200] * N
    assert ConsentRecord.objects.filter(status="granted").count() == 1
