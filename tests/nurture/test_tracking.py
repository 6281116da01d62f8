"""Open pixel, click redirect, unsubscribe page and RFC 8058 one-click,
anymail bounce/complaint webhooks."""
from __future__ import annotations

import pytest
from django.core import mail
from django.test import TestCase
from django.utils import timezone

from martech.models import Event
from martech.selectors import lead_has_consent
from nurture.channels import sign
from nurture.engine import enrollments_advance_due
from nurture.models import Message, Suppression
from nurture.services import enrollment_create
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    lead = consenting_lead()
    enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    return Message.objects.get()


def _path(url: str) -> str:
    return url.split("127.0.0.1:8000", 1)[1]


def test_open_pixel_records_one_open_event(client, sent):
    html = mail.outbox[0].alternatives[0][0]
    pixel = _path(html.split('<img src="', 1)[1].split('"', 1)[0])
    for _ in range(2):
        r = client.get(pixel)
        assert r.status_code == 200 and r["Content-Type"] == "image/gif"
    sent.refresh_from_db()
    assert sent.opened_at is not None
    assert Event.objects.filter(event_type__name="email_opened", lead=sent.lead).count() == 1


def test_click_redirects_and_records(client, sent):
    html = mail.outbox[0].alternatives[0][0]
    link = _path(html.split('<a href="', 1)[1].split('"', 1)[0])
    r = client.get(link)
    assert r.status_code == 302 and r["Location"] == "https://example.com/p1"
    sent.refresh_from_db()
    assert sent.clicked_at and sent.opened_at
    ev = Event.objects.get(event_type__name="email_clicked")
    assert ev.properties["url"] == "https://example.com/p1" and ev.lead_id == sent.lead_id


def test_forged_or_edited_links_answer_404(client, sent):
    assert client.get("/n/c/not-a-token").status_code == 404
    token = sign(sent.pk, u="https://example.com/p1")
    assert client.get(f"/n/c/{token[:-2]}xx").status_code == 404
    assert client.get(f"/n/c/{sign(sent.pk, u='javascript:alert(1)')}").status_code == 404


def test_unsubscribe_page_then_one_click_post(client, sent):
    url = _path(mail.outbox[0].extra_headers["List-Unsubscribe"].strip("<>"))
    page = client.get(url)
    assert page.status_code == 200 and b"Stop marketing email" in page.content
    assert lead_has_consent(lead=sent.lead, channel="email")
    with TestCase.captureOnCommitCallbacks(execute=True):
        r = client.post(url, {"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and b"You are unsubscribed" in r.content
    assert not lead_has_consent(lead=sent.lead, channel="email")
    assert Suppression.objects.get(address=sent.to).reason == "unsubscribe"
    sent.refresh_from_db()
    assert sent.unsubscribed_at is not None
    client.post(url)  # again: nothing more
    assert sent.lead.consent_records.filter(status="withdrawn").count() == 1


def test_anymail_bounce_and_complaint_suppress(sent):
    from anymail.signals import AnymailTrackingEvent, tracking

    tracking.send(sender=object, event=AnymailTrackingEvent(event_type="bounced", recipient=sent.to, message_id=""),
                  esp_name="Test")
    assert Suppression.objects.get(address=sent.to).reason == "bounce"
    sent.refresh_from_db()
    assert sent.bounced_at is not None
    lead = sent.lead
    tracking.send(sender=object, event=AnymailTrackingEvent(event_type="complained", recipient=lead.email.upper()),
                  esp_name="Test")
    assert not lead_has_consent(lead=lead, channel="email")


def test_audience_export_is_normalized_and_hashed(db, consenting_lead):
    import hashlib

    from nurture.channels import audience_csv, audience_rows

    lead = consenting_lead(email="mixed.case@example.org", phone="+12025550143")
    lead.email = " Mixed.Case@Example.org "  # as a raw import might hold it
    rows = audience_rows([lead])
    assert rows[0]["email"] == hashlib.sha256(b"mixed.case@example.org").hexdigest()
    assert rows[0]["phone"] == hashlib.sha256(b"+12025550143").hexdigest()
    google = audience_csv(rows, fmt="google").splitlines()
    assert google[0] == "Email,Phone" and google[1].startswith(rows[0]["email"])
    assert audience_csv(rows, fmt="linkedin").splitlines() == ["email", rows[0]["email"]]
    with pytest.raises(ValueError):
        audience_csv(rows, fmt="myspace")


class RecordingAdapter:
    pushed: list = []

    def push(self, *, audience, rows):
        RecordingAdapter.pushed.append((audience, rows))


def test_audience_push_goes_through_the_configured_adapter(db, consenting_lead, settings, client, marketing_ops):
    from nurture.models import AudienceMember

    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "AUDIENCE_ADAPTER": "tests.nurture.test_tracking.RecordingAdapter"}
    RecordingAdapter.pushed = []
    lead = consenting_lead()
    member = AudienceMember.objects.create(audience="cart", lead=lead)
    client.force_login(marketing_ops)
    client.post("/admin/nurture/audiencemember/", {"action": "push_audiences", "_selected_action": [member.pk]})
    assert [(a, len(r)) for a, r in RecordingAdapter.pushed] == [("cart", 1)]
    assert len(RecordingAdapter.pushed[0][1][0]["email"]) == 64


def _click(client, sent, url):
    return client.get(f"/n/c/{sign(sent.pk, u=url)}")


def test_click_is_an_email_touch_on_the_workflows_campaign(client, sent):
    """An email click becomes an email-channel touchpoint carrying the
    workflow's campaign (it was a touch without UTMs: direct)."""
    from attribution.models import Touchpoint
    from attribution.touchpoints import touchpoints_rebuild
    from tests.factories import CampaignFactory

    campaign = CampaignFactory(name="Spring nurture", utm_source="", utm_medium="email", utm_campaign="spring-nurture",
                               channel="email")
    sent.workflow.campaign = campaign
    sent.workflow.save(update_fields=["campaign"])
    assert _click(client, sent, "https://example.com/p1").status_code == 302
    ev = Event.objects.get(event_type__name="email_clicked")
    assert (ev.channel, ev.campaign_id, ev.utm_medium, ev.utm_source) == ("email", campaign.pk, "email", "nurture")
    touchpoints_rebuild(lead_ids=[sent.lead_id])
    touch = Touchpoint.objects.get(event=ev)
    assert (touch.channel, touch.campaign_id) == ("email", campaign.pk)


def test_click_without_a_workflow_campaign_takes_the_links_utm_tags(client, sent):
    from tests.factories import CampaignFactory

    campaign = CampaignFactory(name="Webinar", utm_source="", utm_medium="", utm_campaign="webinar-q3")
    _click(client, sent, "https://example.com/w?utm_campaign=webinar-q3&utm_content=cta")
    _click(client, sent, "https://example.com/plain")
    plain, tagged = Event.objects.filter(event_type__name="email_clicked").order_by("properties__url")
    assert plain.properties["url"] == "https://example.com/plain"
    assert (tagged.channel, tagged.campaign_id, tagged.utm_content) == ("email", campaign.pk, "cta")
    assert (plain.channel, plain.campaign_id) == ("email", None)
