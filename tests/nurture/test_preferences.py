"""The preference center behind the unsubscribe link: choices per channel and
topic as consent records with evidence, unsubscribe from all, expiring and
tamper-proof links; sends that respect topics (decided and at send time)."""
from __future__ import annotations

import time

import pytest
from django.core import mail, signing
from django.core.exceptions import ValidationError
from django.test import TestCase
from django.utils import timezone

from martech.models import ConsentRecord, SubscriptionType
from martech.selectors import lead_consent_state, lead_preferences
from nurture.channels import sign
from nurture.engine import enrollments_advance_due, messages_deliver
from nurture.labels import outcome_label
from nurture.models import Message, StepExecution, Suppression
from nurture.services import enrollment_create, workflow_save
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db


@pytest.fixture
def topics(db):
    news = SubscriptionType.objects.create(key="product-news", name="Product news", order=1,
                                           description="New features, once a month.")
    events = SubscriptionType.objects.create(key="events", name="Events and webinars", order=2)
    SubscriptionType.objects.create(key="old", name="Retired topic", is_active=False)
    return news, events


def topic_flow(topic: str) -> dict:
    flow = email_flow(1)
    flow["steps"]["e1"]["topic"] = topic
    return flow


@pytest.fixture
def sent(make_workflow, consenting_lead, topics):
    wf = make_workflow(topic_flow("product-news"))
    lead = consenting_lead(email="ann.smith@example.com", channels=("email", "sms"))
    enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    return Message.objects.get()


def _url(message: Message) -> str:
    return mail.outbox[0].extra_headers["List-Unsubscribe"].strip("<>").split("127.0.0.1:8000", 1)[1]


def _post(client, url, data):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(url, data, REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="Mozilla/5.0 prefs")


def test_message_carries_its_topic_and_page_shows_only_the_persons_own_choices(client, sent, topics):
    assert sent.topic == topics[0] and sent.status == "sent"
    other = Message.objects.create(key="x", execution=sent.execution, lead=sent.lead, workflow=sent.workflow,
                                   step="e1", channel="email", to="bob@other.example", status="sent")
    page = client.get(_url(sent))
    body = page.content.decode()
    assert page.status_code == 200 and "noindex" in body
    assert "a********@example.com" in body and "ann.smith@example.com" not in body  # masked address
    assert "bob@other.example" not in body and str(other.pk) not in body.split("<form")[0]
    assert "Product news" in body and "Events and webinars" in body and "Retired topic" not in body
    assert 'name="channel_email" checked' in body and 'name="channel_sms" checked' in body
    assert 'name="channel_ads">' in body  # never given: shown unticked


def test_saving_choices_writes_only_changes_with_evidence(client, sent, topics):
    url = _url(sent)
    before = ConsentRecord.objects.count()
    # Leave "Events" and SMS; keep email and Product news; ads stays never given.
    r = _post(client, url, {"action": "save", "channel_email": "on", "topic_product-news": "on"})
    assert r.status_code == 200 and b"Your choices are saved" in r.content
    new = list(ConsentRecord.objects.order_by("pk")[before:])
    assert [(c.channel, c.topic_id, c.status) for c in new] == [
        ("sms", None, "withdrawn"), ("email", topics[1].pk, "withdrawn")]
    for record in new:
        assert record.source == "nurture:preferences"
        assert record.evidence["ip"] == "203.0.113.9" and record.evidence["user_agent"] == "Mozilla/5.0 prefs"
        assert record.evidence["message"] == sent.key and record.evidence["page"] == "preference center"
    assert new[1].evidence["choice"] == "topic Events and webinars off"
    # The channel's own consent is untouched by a topic choice.
    assert lead_consent_state(lead=sent.lead)["email"] == "granted"
    # The same choices again: nothing more is recorded.
    _post(client, url, {"action": "save", "channel_email": "on", "topic_product-news": "on"})
    assert ConsentRecord.objects.count() == before + 2
    prefs = lead_preferences(lead=sent.lead)
    assert {t.topic.key: t.subscribed for t in prefs.topics} == {"product-news": True, "events": False}
    # Rejoining the topic is a granted topic record.
    _post(client, url, {"action": "save", "channel_email": "on", "topic_product-news": "on", "topic_events": "on"})
    assert ConsentRecord.objects.filter(topic=topics[1]).order_by("-pk").first().status == "granted"


def test_turning_email_off_and_on_again(client, sent):
    url = _url(sent)
    _post(client, url, {"action": "save", "topic_product-news": "on"})
    assert lead_consent_state(lead=sent.lead)["email"] == "withdrawn"
    assert Suppression.objects.get(address=sent.to).reason == "unsubscribe"
    sent.refresh_from_db()
    assert sent.unsubscribed_at is not None
    _post(client, url, {"action": "save", "channel_email": "on"})
    assert lead_consent_state(lead=sent.lead)["email"] == "granted"
    assert not Suppression.objects.filter(address=sent.to).exists()  # the unsubscribe suppression lifted


def test_a_bounce_suppression_is_never_lifted_by_the_page(client, sent):
    Suppression.objects.create(address=sent.to, reason=Suppression.Reason.BOUNCE)
    _post(client, _url(sent), {"action": "unsubscribe_all"})
    _post(client, _url(sent), {"action": "save", "channel_email": "on"})
    assert Suppression.objects.get(address=sent.to).reason == "bounce"


def test_unsubscribe_from_all(client, sent):
    r = _post(client, _url(sent), {"action": "unsubscribe_all"})
    assert r.status_code == 200 and b"unsubscribed from everything" in r.content
    state = lead_consent_state(lead=sent.lead)
    assert state["email"] == "withdrawn" and state["sms"] == "withdrawn" and state["ads"] is None
    assert Suppression.objects.filter(address=sent.to).exists()
    count = ConsentRecord.objects.count()
    _post(client, _url(sent), {"action": "unsubscribe_all"})
    assert ConsentRecord.objects.count() == count


def test_one_click_post_still_unsubscribes_email(client, sent):
    r = _post(client, _url(sent), {"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and b"You are unsubscribed" in r.content
    record = ConsentRecord.objects.filter(channel="email").order_by("-pk").first()
    assert record.status == "withdrawn" and record.source == "nurture:unsubscribe"
    assert record.evidence["ip"] == "203.0.113.9"
    assert lead_consent_state(lead=sent.lead)["sms"] == "granted"  # one-click is about email only


def test_tampered_or_expired_links_change_nothing(client, sent, monkeypatch, settings):
    url = _url(sent)
    count = ConsentRecord.objects.count()
    assert client.get(url[:-3] + "abc").status_code == 404
    assert _post(client, url[:-3] + "abc", {"action": "unsubscribe_all"}).status_code == 404
    assert client.get(f"/n/u/{signing.dumps({'m': sent.pk}, salt='other')}").status_code == 404
    # A link signed longer ago than PREFERENCE_LINK_DAYS.
    days = settings.MARTECH_NURTURE["PREFERENCE_LINK_DAYS"]
    real = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real() - (days + 1) * 86400)
    old = sign(sent.pk)
    monkeypatch.setattr(signing.time, "time", real)
    page = client.get(f"/n/u/{old}")
    assert page.status_code == 410 and b"expired" in page.content and b"example.com" not in page.content
    assert _post(client, f"/n/u/{old}", {"List-Unsubscribe": "One-Click"}).status_code == 410
    assert ConsentRecord.objects.count() == count and not Suppression.objects.exists()


def test_lead_who_left_the_topic_is_skipped_with_the_reason(make_workflow, consenting_lead, topics):
    from martech.services.preferences import preferences_update

    wf = make_workflow(topic_flow("product-news"))
    stays, leaves = consenting_lead(), consenting_lead()
    preferences_update(lead=leaves, channels={}, topics={"product-news": False}, source="test", evidence={})
    for lead in (stays, leaves):
        enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    assert list(Message.objects.values_list("lead_id", "topic__key")) == [(stays.pk, "product-news")]
    skipped = StepExecution.objects.get(enrollment__lead=leaves, step="e1")
    assert skipped.outcome == "skipped:topic_unsubscribed" and skipped.detail == {"topic": "Product news"}
    assert outcome_label(skipped.outcome) == "skipped: topic unsubscribed"
    # Another topic's email still reaches the lead who left this one.
    other = make_workflow(topic_flow("events"))
    enrollment_create(workflow=other, lead=leaves, source="t")
    enrollments_advance_due(now=timezone.now() + timezone.timedelta(days=2))
    assert Message.objects.filter(lead=leaves, topic=topics[1], status="sent").exists()


def test_leaving_a_topic_after_the_decision_stops_the_send(make_workflow, consenting_lead, topics, monkeypatch):
    from martech.services.preferences import preferences_update

    wf = make_workflow(topic_flow("product-news"))
    lead = consenting_lead()
    enrollment_create(workflow=wf, lead=lead, source="t")
    monkeypatch.setattr("nurture.engine.messages_deliver", lambda **kw: {})
    enrollments_advance_due(now=timezone.now())
    monkeypatch.undo()
    msg = Message.objects.get()
    assert msg.status == "queued"
    preferences_update(lead=lead, channels={}, topics={"product-news": False}, source="test", evidence={})
    assert messages_deliver(ids=[msg.pk]) == {"skipped": 1}
    msg.refresh_from_db()
    assert (msg.status, msg.status_reason) == ("skipped", "topic_unsubscribed") and not mail.outbox


def test_unknown_topic_is_refused_when_saving_the_workflow(make_workflow, topics):
    from nurture.models import Workflow

    wf = Workflow(name="bad", definition=topic_flow("nope"))
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "e1.topic: no subscription topic 'nope'" in " ".join(exc.value.message_dict["definition"])
    SubscriptionType.objects.create(key="sms-offers", name="SMS offers", channel="sms")
    wf.definition = topic_flow("sms-offers")
    with pytest.raises(ValidationError, match="not an email topic"):
        workflow_save(workflow=wf)


def test_preferences_update_names_unknown_channel_and_topic(consenting_lead, topics):
    from martech.services.preferences import preferences_update

    lead = consenting_lead()
    with pytest.raises(ValidationError) as exc:
        preferences_update(lead=lead, channels={"fax": True}, topics={}, source="t", evidence={})
    assert exc.value.message_dict == {"channels": ["Unknown channel(s): fax."]}
    with pytest.raises(ValidationError) as exc:
        preferences_update(lead=lead, channels={}, topics={"old": False}, source="t", evidence={})
    assert exc.value.message_dict == {"topics": ["Unknown topic(s): old."]}


def test_topic_records_do_not_count_as_channel_consent(consenting_lead, topics):
    """A lead who never consented to email but rejoined a topic has no email consent."""
    from martech.selectors import lead_has_consent
    from martech.services.leads import consent_record

    lead = consenting_lead(channels=())
    consent_record(lead=lead, channel="email", topic=topics[0], granted=True, source="t")
    assert not lead_has_consent(lead=lead, channel="email")
    assert lead_consent_state(lead=lead)["email"] is None
    with pytest.raises(ValidationError, match="not sms"):
        consent_record(lead=lead, channel="sms", topic=topics[0], granted=True, source="t")


def test_message_admin_says_why_in_words(client, marketing_ops, make_workflow, consenting_lead, topics, monkeypatch):
    from django.urls import reverse

    from martech.services.preferences import preferences_update

    wf = make_workflow(topic_flow("product-news"))
    lead = consenting_lead()
    enrollment_create(workflow=wf, lead=lead, source="t")
    monkeypatch.setattr("nurture.engine.messages_deliver", lambda **kw: {})
    enrollments_advance_due(now=timezone.now())
    monkeypatch.undo()
    preferences_update(lead=lead, channels={}, topics={"product-news": False}, source="test", evidence={})
    messages_deliver(ids=list(Message.objects.values_list("pk", flat=True)))
    client.force_login(marketing_ops)
    page = client.get(reverse("admin:nurture_message_changelist"), {"topic__id__exact": topics[0].pk})
    body = page.content.decode()
    assert page.status_code == 200 and "the lead left the message&#x27;s subscription topic" in body
    assert "Product news" in body
