"""TwilioSmsBackend over real HTTP against the loopback Twilio emulator:
a send through the engine, Twilio's error codes kept on failed messages,
the idempotency key on retries, and no blind retry when the answer is
ambiguous."""
from __future__ import annotations

import socket

import pytest
from django.utils import timezone

from nurture.channels import SmsError, TwilioSmsBackend
from nurture.engine import enrollments_advance_due
from nurture.models import Message
from nurture.services import enrollment_create
from tests.nurture.twilio_emulator import TwilioEmulator

pytestmark = pytest.mark.django_db
SID, TOKEN, FROM = "AC0123456789abcdef0123456789abcdef", "secret-token", "+15005550006"
SMS_FLOW = {"start": "s", "steps": {"s": {"type": "send_sms", "body": "Hi {{first_name|there}}, your cart is saved",
                                          "next": "end"}, "end": {"type": "end"}}}


@pytest.fixture
def twilio(settings):
    emulator = TwilioEmulator(account_sid=SID, auth_token=TOKEN, invalid_numbers={"+14155550199"})
    settings.MARTECH_NURTURE = {
        **settings.MARTECH_NURTURE, "SMS_BACKEND": "nurture.channels.TwilioSmsBackend", "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM": FROM, "TWILIO_BASE_URL": emulator.url, "TWILIO_RETRIES": 2,
        # No quiet hours in these tests: whatever the clock, the SMS goes now.
        "QUIET_START_HOUR": 0, "QUIET_END_HOUR": 0,
    }
    yield emulator
    emulator.close()


def _send_one(make_workflow, consenting_lead, phone="+14155550100"):
    wf = make_workflow(SMS_FLOW)
    lead = consenting_lead(channels=("sms",), phone=phone, first_name="Ada")
    enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    return Message.objects.get(lead=lead)


def test_sms_goes_through_twilio_with_auth_and_the_idempotency_key(twilio, make_workflow, consenting_lead):
    msg = _send_one(make_workflow, consenting_lead)
    assert msg.status == "sent" and msg.channel == "sms"
    (sid, stored), = twilio.messages.items()
    assert msg.provider_id == sid
    assert stored["to"] == "+14155550100" and stored["from"] == FROM and stored["body"] == "Hi Ada, your cart is saved"
    (req,) = twilio.requests
    assert req["token"] == msg.key and req["path"] == f"/2010-04-01/Accounts/{SID}/Messages.json"


def test_a_twilio_error_is_a_failed_message_with_its_code(twilio, make_workflow, consenting_lead):
    msg = _send_one(make_workflow, consenting_lead, phone="+14155550199")
    assert msg.status == "failed"
    assert msg.error.startswith("SmsError: 21211: The 'To' number +14155550199 is not a valid phone number.")
    assert twilio.messages == {} and len(twilio.requests) == 1  # a refusal is not retried


def test_bad_credentials_fail_with_20003(twilio, make_workflow, consenting_lead, settings):
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "TWILIO_AUTH_TOKEN": "wrong"}
    msg = _send_one(make_workflow, consenting_lead)
    assert msg.status == "failed" and msg.error.startswith("SmsError: 20003: Authenticate")


def test_rate_limited_then_accepted_retries_with_the_same_key(twilio, make_workflow, consenting_lead):
    twilio.script = [429, 429]
    msg = _send_one(make_workflow, consenting_lead)
    assert msg.status == "sent"
    assert [r["token"] for r in twilio.requests] == [msg.key] * 3
    assert len(twilio.messages) == 1


def test_rate_limited_beyond_the_retries_fails_without_sending(twilio, make_workflow, consenting_lead):
    twilio.script = [429, 429, 429]
    msg = _send_one(make_workflow, consenting_lead)
    assert msg.status == "failed" and "429" in msg.error and twilio.messages == {}


def test_a_server_error_is_in_doubt_never_retried(twilio, make_workflow, consenting_lead):
    twilio.script = [500]
    msg = _send_one(make_workflow, consenting_lead)
    assert msg.status == "in_doubt" and "500" in msg.error
    assert len(twilio.requests) == 1
    # A later engine run (the recovery included) does not send it again.
    enrollments_advance_due(now=timezone.now())
    assert len(twilio.requests) == 1


def test_a_repeated_key_creates_one_message(twilio):
    backend = TwilioSmsBackend()
    first = backend.send(to="+14155550100", body="hello", key="n:1:0:s")
    again = backend.send(to="+14155550100", body="hello", key="n:1:0:s")
    assert first == again and len(twilio.messages) == 1 and len(twilio.requests) == 2


def test_unreachable_twilio_is_retried_then_fails(settings):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN,
                                "TWILIO_FROM": FROM, "TWILIO_BASE_URL": f"http://127.0.0.1:{port}"}
    with pytest.raises(SmsError) as exc:
        TwilioSmsBackend().send(to="+14155550100", body="hello", key="k")
    assert exc.value.code == "connect"


def test_missing_configuration_is_named(settings):
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "TWILIO_ACCOUNT_SID": ""}
    with pytest.raises(SmsError, match="TWILIO_ACCOUNT_SID"):
        TwilioSmsBackend().send(to="+14155550100", body="hello", key="k")

