"""The ESPs' tracking webhooks under /anymail/ (nurture/esp_webhooks.py ->
anymail's views -> nurture.anymail_hooks -> esp_event_record): each ESP's
documented payload shapes, posted with the auth it uses, reach the lead's
suppression, consent and timeline; a repeat is recorded once; a post without
the secret, with a wrong one or a bad signature changes nothing.

Payloads follow each ESP's documented examples: Amazon SES event publishing
through an SNS notification, SendGrid's event webhook array, Mailgun's
signed JSON (the HMAC computed here with a test signing key), Postmark's
bounce, spam complaint, delivery and subscription change JSON, Brevo's
transactional webhook JSON. Timestamps are now, message ids the ones the
send stored."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.core import mail
from django.utils import timezone

from martech.models import ConsentRecord, Event
from martech.selectors import lead_has_consent
from nurture.engine import enrollments_advance_due
from nurture.models import Message, Suppression
from nurture.services import enrollment_create
from tests.nurture.backends import EspEmailBackend
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db

WEBHOOK_USER, WEBHOOK_PASSWORD = "esp", "webhook-pw-7f3a"
SIGNING_KEY = "mailgun-test-signing-key-0123456789"
URLS = {"amazonses": "/anymail/amazon_ses/tracking/", "sendgrid": "/anymail/sendgrid/tracking/",
        "mailgun": "/anymail/mailgun/tracking/", "postmark": "/anymail/postmark/tracking/",
        "brevo": "/anymail/brevo/tracking/"}
ESP_NAMES = {"amazonses": "Amazon SES", "sendgrid": "SendGrid", "mailgun": "Mailgun", "postmark": "Postmark",
             "brevo": "Brevo"}


@pytest.fixture(autouse=True)
def _esp(settings):
    settings.EMAIL_BACKEND = "tests.nurture.backends.EspEmailBackend"
    settings.ANYMAIL = {"WEBHOOK_SECRET": [f"{WEBHOOK_USER}:{WEBHOOK_PASSWORD}"],
                        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY}
    EspEmailBackend.issued = []


@pytest.fixture
def sent(make_workflow, consenting_lead) -> Message:
    wf = make_workflow(email_flow(1))
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    enrollments_advance_due(now=timezone.now())
    return Message.objects.select_related("lead").get()


def _basic(user: str = WEBHOOK_USER, password: str = WEBHOOK_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --- the payloads, one builder per ESP: (body, content type, extra headers) ------------
def ses(kind: str, msg: Message, *, soft: bool = False):
    mail_object = {"timestamp": _iso(), "source": "marketing@example.com", "sourceArn": "arn:aws:ses:eu-west-1:"
                   "123456789012:identity/example.com", "sendingAccountId": "123456789012",
                   "messageId": msg.provider_id, "destination": [msg.to], "headersTruncated": False,
                   "headers": [{"name": "Subject", "value": msg.subject}],
                   "commonHeaders": {"from": ["marketing@example.com"], "to": [msg.to], "subject": msg.subject}}
    if kind == "bounced":
        event = {"eventType": "Bounce", "mail": mail_object, "bounce": {
            "bounceType": "Transient" if soft else "Permanent", "bounceSubType": "MailboxFull" if soft else "General",
            "bouncedRecipients": [{"emailAddress": msg.to, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": _iso(), "feedbackId": "0102017a-bounce", "reportingMTA": "dsn; e226-55.smtp-out.amazonses.com"}}
    elif kind == "complained":
        event = {"eventType": "Complaint", "mail": mail_object, "complaint": {
            "complainedRecipients": [{"emailAddress": msg.to}], "timestamp": _iso(), "feedbackId": "0102017a-cmpl",
            "userAgent": "ExampleCorp Feedback Loop (V0.01)", "complaintFeedbackType": "abuse",
            "arrivalDate": _iso()}}
    else:
        event = {"eventType": "Delivery", "mail": mail_object, "delivery": {
            "timestamp": _iso(), "processingTimeMillis": 546, "recipients": [msg.to],
            "smtpResponse": "250 ok: Message 64111812 accepted", "reportingMTA": "a8-70.smtp-out.amazonses.com"}}
    sns_id = str(uuid.uuid4())
    body = {"Type": "Notification", "MessageId": sns_id, "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
            "Subject": "Amazon SES Email Event Notification", "Message": json.dumps(event), "Timestamp": _iso(),
            "SignatureVersion": "1", "Signature": "EXAMPLEpH+..", "SigningCertURL": "https://sns.eu-west-1."
            "amazonaws.com/SimpleNotificationService-example.pem", "UnsubscribeURL": "https://sns.eu-west-1."
            "amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:ses-events:1"}
    return (json.dumps(body), "text/plain; charset=UTF-8",
            {"HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification", "HTTP_X_AMZ_SNS_MESSAGE_ID": sns_id,
             "HTTP_X_AMZ_SNS_TOPIC_ARN": body["TopicArn"]})


def sendgrid(kind: str, msg: Message, *, soft: bool = False):
    event = {"email": msg.to, "timestamp": int(time.time()), "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
             "category": ["nurture"], "sg_event_id": f"sg-{kind}-{msg.pk}", "sg_message_id": "14c5d75ce93.dfd.64b469"
             ".filter0001.16648.5515E0B88.0", "anymail_id": msg.provider_id}
    event.update({
        "delivered": {"event": "delivered", "response": "250 OK"},
        "bounced": {"event": "bounce", "type": "blocked" if soft else "bounce", "status": "5.0.0",
                    "reason": "550 5.1.1 The email account that you tried to reach does not exist"},
        "complained": {"event": "spamreport"},
        "unsubscribed": {"event": "unsubscribe"},
    }[kind])
    return json.dumps([event]), "application/json", {}


def mailgun(kind: str, msg: Message, *, soft: bool = False, key: str = SIGNING_KEY):
    timestamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    data = {"id": "CPgfbmQMTCKtHW6uIWtuVe", "timestamp": time.time(), "log-level": "info", "recipient": msg.to,
            "recipient-domain": msg.to.rpartition("@")[2], "tags": [], "user-variables": {},
            "envelope": {"sender": "marketing@mg.example.com", "transport": "smtp", "targets": msg.to},
            # Mailgun gives the Message-ID without its angle brackets.
            "message": {"headers": {"to": msg.to, "message-id": msg.provider_id.strip("<>"),
                                    "from": "marketing@mg.example.com", "subject": msg.subject},
                        "attachments": [], "size": 111}}
    data.update({
        "delivered": {"event": "delivered", "delivery-status": {"code": 250, "message": "OK", "description": ""}},
        "bounced": {"event": "failed", "severity": "temporary" if soft else "permanent", "reason": "bounce",
                    "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist",
                                        "description": "Not delivering to previously bounced address"}},
        "complained": {"event": "complained"},
        "unsubscribed": {"event": "unsubscribed"},
    }[kind])
    body = {"signature": {"timestamp": timestamp, "token": token, "signature": signature}, "event-data": data}
    return json.dumps(body), "application/json", {}


def postmark(kind: str, msg: Message, *, soft: bool = False):
    if kind == "delivered":
        body = {"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": msg.provider_id,
                "Recipient": msg.to, "Tag": "", "DeliveredAt": _iso(), "Details": "smtp;250 2.0.0 OK",
                "Metadata": {}}
    elif kind == "unsubscribed":
        body = {"RecordType": "SubscriptionChange", "MessageID": msg.provider_id, "ServerID": 23,
                "MessageStream": "outbound", "ChangedAt": _iso(), "Recipient": msg.to, "Origin": "Recipient",
                "SuppressSending": True, "SuppressionReason": "ManualSuppression", "Tag": "", "Metadata": {}}
    else:
        spam = kind == "complained"
        body = {"RecordType": "SpamComplaint" if spam else "Bounce", "ID": 4323372036854775807,
                "Type": "SpamComplaint" if spam else ("SoftBounce" if soft else "HardBounce"),
                "TypeCode": 512 if spam else (4096 if soft else 1), "Name": "Spam complaint" if spam else "Bounce",
                "Tag": "", "MessageID": msg.provider_id, "Metadata": {}, "ServerID": 23, "MessageStream": "outbound",
                "Description": "The subscriber explicitly marked this message as spam." if spam else
                "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
                "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
                "Email": msg.to, "From": "marketing@example.com", "BouncedAt": _iso(), "DumpAvailable": True,
                "Inactive": True, "CanActivate": True, "Subject": msg.subject}
    return json.dumps(body), "application/json", {}


def brevo(kind: str, msg: Message, *, soft: bool = False):
    now = time.time()
    body = {"email": msg.to, "id": 1234567, "date": "2026-12-04 10:00:00", "ts": int(now),
            "message-id": msg.provider_id, "ts_event": int(now), "subject": msg.subject, "tag": "nurture",
            "sending_ip": "185.41.28.109", "ts_epoch": int(now * 1000), "template_id": 22}
    body.update({
        "delivered": {"event": "delivered"},
        "bounced": {"event": "soft_bounce" if soft else "hard_bounce", "reason": "550 5.1.1 unknown user"},
        "complained": {"event": "spam"},
        "unsubscribed": {"event": "unsubscribe"},
    }[kind])
    return json.dumps(body), "application/json", {}


PAYLOADS = {"amazonses": ses, "sendgrid": sendgrid, "mailgun": mailgun, "postmark": postmark, "brevo": brevo}
ALL = list(PAYLOADS)


def post(client, esp: str, payload, *, auth: str | None = None):
    body, content_type, headers = payload
    if auth is not None:
        headers = {**headers, "HTTP_AUTHORIZATION": auth}
    return client.post(URLS[esp], data=body, content_type=content_type, **headers)


def _events(msg: Message, name: str) -> list[Event]:
    return list(Event.objects.filter(lead=msg.lead, event_type__name=name))


def _withdrawals(msg: Message) -> int:
    return ConsentRecord.objects.filter(lead=msg.lead, channel="email", status="withdrawn").count()


# --- sending ---------------------------------------------------------------------------
def test_a_send_through_an_anymail_backend_keeps_the_esp_message_id(sent):
    assert len(mail.outbox) == 1 and sent.status == Message.Status.SENT
    assert sent.provider_id == EspEmailBackend.issued[0] and sent.provider_id.endswith("@esp.example.com>")


# --- what each event does --------------------------------------------------------------
@pytest.mark.parametrize("esp", ALL)
def test_hard_bounce_suppresses_stamps_and_is_on_the_timeline_once(client, sent, esp):
    for _ in range(2):  # the ESP retries: the same event twice
        r = post(client, esp, PAYLOADS[esp]("bounced", sent), auth=_basic())
        assert r.status_code == 200, r.content
    suppression = Suppression.objects.get(address=sent.to)
    assert suppression.reason == Suppression.Reason.BOUNCE and suppression.detail.startswith(ESP_NAMES[esp])
    sent.refresh_from_db()
    assert sent.bounced_at is not None
    [event] = _events(sent, "email_bounced")
    assert event.properties["esp"] == ESP_NAMES[esp] and event.properties["bounce"] == "hard"
    assert event.properties["message"] == sent.key
    assert lead_has_consent(lead=sent.lead, channel="email")  # a bounce is no withdrawal


@pytest.mark.parametrize("esp", ["amazonses", "sendgrid", "postmark", "brevo"])
def test_soft_bounce_is_on_the_timeline_but_suppresses_nothing(client, sent, esp):
    assert post(client, esp, PAYLOADS[esp]("bounced", sent, soft=True), auth=_basic()).status_code == 200
    assert not Suppression.objects.exists()
    sent.refresh_from_db()
    assert sent.bounced_at is None
    [event] = _events(sent, "email_bounced")
    assert event.properties["bounce"] == "soft"


def test_mailgun_temporary_failure_is_a_deferral_and_records_nothing(client, sent):
    assert post(client, "mailgun", mailgun("bounced", sent, soft=True), auth=_basic()).status_code == 200
    assert not Suppression.objects.exists() and not _events(sent, "email_bounced")


@pytest.mark.parametrize("esp", ALL)
def test_complaint_suppresses_and_withdraws_consent_once(client, sent, esp):
    assert lead_has_consent(lead=sent.lead, channel="email")
    for _ in range(2):
        assert post(client, esp, PAYLOADS[esp]("complained", sent), auth=_basic()).status_code == 200
    assert Suppression.objects.get(address=sent.to).reason == Suppression.Reason.COMPLAINT
    assert not lead_has_consent(lead=sent.lead, channel="email")
    assert _withdrawals(sent) == 1
    [event] = _events(sent, "email_complained")
    assert event.properties["esp"] == ESP_NAMES[esp]


@pytest.mark.parametrize("esp", ALL)
def test_delivery_stamps_the_message_found_by_its_esp_id(client, sent, esp):
    for _ in range(2):
        assert post(client, esp, PAYLOADS[esp]("delivered", sent), auth=_basic()).status_code == 200
    sent.refresh_from_db()
    assert sent.delivered_at is not None
    [event] = _events(sent, "email_delivered")
    assert event.properties["message"] == sent.key and event.properties["step"] == sent.step
    assert not Suppression.objects.exists() and lead_has_consent(lead=sent.lead, channel="email")


def test_the_esp_message_id_picks_the_message_not_the_latest_to_the_address(client, sent):
    later = Message.objects.create(key=f"{sent.key}:later", execution=sent.execution, lead=sent.lead,
                                   workflow=sent.workflow, step=sent.step, channel=Message.Channel.EMAIL, to=sent.to,
                                   provider_id="<later@esp.example.com>", status=Message.Status.SENT)
    assert post(client, "postmark", postmark("delivered", sent), auth=_basic()).status_code == 200
    sent.refresh_from_db()
    later.refresh_from_db()
    assert sent.delivered_at is not None and later.delivered_at is None


@pytest.mark.parametrize("esp", ["sendgrid", "mailgun", "postmark", "brevo"])
def test_unsubscribe_withdraws_consent_and_suppresses_once(client, sent, esp):
    for _ in range(2):
        assert post(client, esp, PAYLOADS[esp]("unsubscribed", sent), auth=_basic()).status_code == 200
    assert Suppression.objects.get(address=sent.to).reason == Suppression.Reason.UNSUBSCRIBE
    assert not lead_has_consent(lead=sent.lead, channel="email") and _withdrawals(sent) == 1
    assert len(_events(sent, "email_unsubscribed")) == 1
    sent.refresh_from_db()
    assert sent.unsubscribed_at is not None


def test_an_event_for_an_unknown_address_suppresses_without_creating_a_lead(client, sent):
    stranger = Message(to="nobody@elsewhere.example", provider_id="<unknown@esp.example.com>", subject="x")
    assert post(client, "postmark", postmark("bounced", stranger), auth=_basic()).status_code == 200
    assert Suppression.objects.get(address="nobody@elsewhere.example").reason == Suppression.Reason.BOUNCE
    assert not Event.objects.filter(event_type__name="email_bounced").exists()
    assert type(sent.lead).objects.count() == 1


# --- refusals ----------------------------------------------------------------------------
def _nothing_changed(sent: Message) -> None:
    sent.refresh_from_db()
    assert not Suppression.objects.exists()
    assert sent.bounced_at is None and sent.delivered_at is None
    assert not Event.objects.filter(event_type__name__in=["email_bounced", "email_complained"]).exists()
    assert lead_has_consent(lead=sent.lead, channel="email")


@pytest.mark.parametrize("esp", ALL)
def test_posts_without_or_with_a_wrong_basic_auth_are_refused(client, sent, esp):
    missing = post(client, esp, PAYLOADS[esp]("complained", sent))
    # SNS sends the credentials only after a 401 challenge; the others answer 400.
    assert missing.status_code == (401 if esp == "amazonses" else 400)
    wrong = post(client, esp, PAYLOADS[esp]("complained", sent), auth=_basic(password="guess"))
    assert wrong.status_code == 400
    _nothing_changed(sent)


def test_mailgun_refuses_a_bad_signature_even_with_the_basic_auth(client, sent):
    forged = mailgun("complained", sent, key="not-the-signing-key")
    assert post(client, "mailgun", forged, auth=_basic()).status_code == 400
    body, ct, headers = mailgun("bounced", sent)
    tampered = json.loads(body)
    tampered["signature"]["timestamp"] = str(int(tampered["signature"]["timestamp"]) + 1)
    assert post(client, "mailgun", (json.dumps(tampered), ct, headers), auth=_basic()).status_code == 400
    _nothing_changed(sent)


def test_mailgun_accepts_the_signature_alone_when_no_basic_auth_is_configured(client, sent, settings):
    settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY}
    assert post(client, "mailgun", mailgun("bounced", sent)).status_code == 200
    assert Suppression.objects.filter(address=sent.to).exists()


@pytest.mark.parametrize("esp", ALL)
def test_without_a_configured_secret_every_post_is_refused(client, sent, settings, esp):
    settings.ANYMAIL = {}
    r = post(client, esp, PAYLOADS[esp]("complained", sent), auth=_basic())
    assert r.status_code == 403
    variable = "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY" if esp == "mailgun" else "ANYMAIL_WEBHOOK_SECRET"
    assert variable in r.content.decode()
    _nothing_changed(sent)


def test_only_the_tracking_webhooks_are_mounted(client):
    # anymail's inbound views and the ESPs not listed here are not reachable.
    for path in ("/anymail/postmark/inbound/", "/anymail/mailjet/tracking/", "/anymail/sparkpost/tracking/"):
        assert client.post(path, data="{}", content_type="application/json").status_code == 404


# --- concurrency (PostgreSQL: real row locks) ------------------------------------------
@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("reference_data")
@pytest.mark.parametrize("kind", ["complained", "bounced"])
def test_the_same_event_posted_at_once_is_recorded_once(make_workflow, consenting_lead, kind):
    import threading

    from django.db import connections
    from django.test import Client

    wf = make_workflow(email_flow(1))
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    enrollments_advance_due(now=timezone.now())
    sent = Message.objects.select_related("lead").get()
    payload = sendgrid(kind, sent)
    n = 8
    barrier = threading.Barrier(n)
    codes: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            codes.append(post(Client(), "sendgrid", payload, auth=_basic()).status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and codes == [200] * n, (errors, codes)
    assert len(_events(sent, f"email_{kind}")) == 1
    assert Suppression.objects.filter(address=sent.to).count() == 1
    assert _withdrawals(sent) == (1 if kind == "complained" else 0)


# --- Amazon SES end to end: the send (boto3 stubbed, no network) to the webhook --------
def test_ses_send_stores_its_message_id_and_its_delivery_notification_finds_it(
        client, settings, make_workflow, consenting_lead, monkeypatch):
    import boto3
    from botocore.stub import Stubber

    ses_client = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                       region_name="eu-west-1").client("sesv2")
    stubber = Stubber(ses_client)
    ses_id = "0102018c1d2e3f40-5a6b7c8d-0000-0000-0000-000000000000-000000"
    stubber.add_response("send_email", {"MessageId": ses_id})
    calls: list[dict] = []
    ses_client.meta.events.register("provide-client-params.sesv2.SendEmail",
                                    lambda params, **kw: calls.append(params))
    stubber.activate()
    made: list[tuple[str, dict]] = []

    def stubbed_client(self, service_name, **params):
        made.append((service_name, params))
        return ses_client

    monkeypatch.setattr(boto3.session.Session, "client", stubbed_client)
    settings.EMAIL_BACKEND = "anymail.backends.amazon_ses.EmailBackend"
    settings.ANYMAIL = {**settings.ANYMAIL, "AMAZON_SES_CLIENT_PARAMS": {"region_name": "eu-west-1"}}

    wf = make_workflow(email_flow(1))
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    enrollments_advance_due(now=timezone.now())
    sent = Message.objects.select_related("lead").get()
    stubber.assert_no_pending_responses()
    # anymail hands SES v2 the MIME message as built, our headers included.
    [params] = calls
    raw = params["Content"]["Raw"]["Data"]
    assert f"To: {sent.to}".encode() in raw and b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw
    assert [(name, params["region_name"]) for name, params in made] == [("sesv2", "eu-west-1")]
    assert sent.status == Message.Status.SENT and sent.provider_id == ses_id

    assert post(client, "amazonses", ses("delivered", sent), auth=_basic()).status_code == 200
    sent.refresh_from_db()
    assert sent.delivered_at is not None and len(_events(sent, "email_delivered")) == 1
