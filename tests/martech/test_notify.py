"""martech.notify: the one outbound notification service (email and webhook)
with its timeout, its retry where a second try cannot send twice, and one
Notification row per send with the outcome. Webhooks go to a local HTTP
server whose answers each test scripts."""
from __future__ import annotations

import json
import smtplib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from martech import notify
from martech.models import Notification

pytestmark = pytest.mark.django_db


class Hook:
    """A webhook receiver: answers with the scripted statuses in turn (the
    last one from then on); a status of None sleeps past the caller's timeout."""

    def __init__(self):
        self.answers: list[int | None] = [200]
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append({"path": self.path, "json": json.loads(body),
                                      "key": self.headers.get("Idempotency-Key")})
                answer = hook.answers[min(len(hook.received), len(hook.answers)) - 1]
                if answer is None:
                    time.sleep(1.5)
                    answer = 200
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/secret-token"


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture(autouse=True)
def _no_wait(settings):
    settings.MARTECH_NOTIFY = {**settings.MARTECH_NOTIFY, "RETRY_WAIT": 0, "ATTEMPTS": 3}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_webhook_is_posted_once_and_recorded(hook):
    n = notify.webhook_post(url=hook.url, payload={"text": "hello"}, source="test", key="k-1")
    assert hook.received == [{"path": "/services/T0/B0/secret-token", "json": {"text": "hello"}, "key": "k-1"}]
    row = Notification.objects.get()
    assert row == n and row.ok and row.summary == "sent (200)"
    assert (row.channel, row.source, row.key, row.attempts, row.response_status, row.error) == (
        "webhook", "test", "k-1", 1, 200, "")
    # Only the scheme and host are kept: the path of a Slack-style URL is its secret.
    assert row.target == f"http://127.0.0.1:{hook.server.server_port}" and "secret" not in row.target
    assert row.finished_at >= row.created_at


def test_a_busy_receiver_is_tried_again(hook):
    hook.answers = [503, 429, 200]
    n = notify.webhook_post(url=hook.url, payload={"text": "x"}, source="test", key="k")
    assert n.ok and n.attempts == 3 and len(hook.received) == 3
    assert {r["key"] for r in hook.received} == {"k"}  # the receiver can drop a repeat


def test_retries_stop_at_the_configured_attempts(hook, settings):
    settings.MARTECH_NOTIFY = {**settings.MARTECH_NOTIFY, "ATTEMPTS": 2}
    hook.answers = [503]
    n = notify.webhook_post(url=hook.url, payload={}, source="test")
    assert (n.status, n.attempts, n.response_status, len(hook.received)) == ("failed", 2, 503, 2)
    assert n.summary.startswith("failed: HTTP Error 503")


def test_an_error_answer_is_not_retried(hook):
    hook.answers = [500]
    n = notify.webhook_post(url=hook.url, payload={}, source="test")
    assert (n.status, n.attempts, n.response_status, len(hook.received)) == ("failed", 1, 500, 1)
    assert "HTTP Error 500" in n.error


def test_a_refused_connection_is_retried_then_failed():
    n = notify.webhook_post(url=f"http://127.0.0.1:{_closed_port()}/hook", payload={}, source="test")
    assert (n.status, n.attempts, n.response_status) == ("failed", 3, None)
    assert "refused" in n.error.lower()


def test_a_timeout_after_sending_is_in_doubt_and_not_retried(hook):
    hook.answers = [None]
    n = notify.webhook_post(url=hook.url, payload={}, source="test", timeout=0.3)
    assert (n.status, n.attempts, len(hook.received)) == ("in_doubt", 1, 1)
    assert n.summary.startswith("in doubt:") and "timed out" in n.error


def test_a_bad_url_fails_without_a_try():
    n = notify.webhook_post(url="not a url", payload={}, source="test")
    assert (n.status, n.attempts, n.target) == ("failed", 1, "(invalid URL)")


def test_the_default_timeout_comes_from_the_settings(hook, settings):
    settings.MARTECH_NOTIFY = {**settings.MARTECH_NOTIFY, "TIMEOUT": 0.3}
    hook.answers = [None]
    assert notify.webhook_post(url=hook.url, payload={}, source="test").status == "in_doubt"


def test_sent_or_raise():
    n = notify.webhook_post(url="not a url", payload={}, source="test")
    with pytest.raises(notify.NotifyError, match="^failed: "):
        notify.sent_or_raise(n)


def test_an_email_is_sent_and_recorded():
    n = notify.email_send(subject="Hi", body="Body", to=["a@example.com", "b@example.com"], source="test", key="e")
    assert [m.to for m in mail.outbox] == [["a@example.com", "b@example.com"]] and mail.outbox[0].subject == "Hi"
    assert (n.channel, n.status, n.attempts, n.target, n.summary) == (
        "email", "sent", 1, "a@example.com, b@example.com", "sent")


class FlakyBackend(LocmemBackend):
    """Raises the scripted errors in turn, then sends."""

    errors: list[Exception] = []

    def send_messages(self, messages):
        if FlakyBackend.errors:
            raise FlakyBackend.errors.pop(0)
        return super().send_messages(messages)


def test_an_email_server_that_could_not_be_reached_is_tried_again():
    FlakyBackend.errors = [ConnectionRefusedError("refused"), smtplib.SMTPConnectError(421, "busy")]
    n = notify.email_send(subject="s", body="b", to=["a@example.com"], source="test", connection=FlakyBackend())
    assert (n.status, n.attempts, len(mail.outbox)) == ("sent", 3, 1)


def test_an_email_refused_by_the_server_is_not_retried():
    FlakyBackend.errors = [smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"no such user")})]
    n = notify.email_send(subject="s", body="b", to=["a@example.com"], source="test", connection=FlakyBackend())
    assert (n.status, n.attempts, len(mail.outbox)) == ("failed", 1, 0)
    assert "550" in n.error and n.summary.startswith("failed: ")


def test_routing_escalation_sends_through_the_service(hook, settings):
    from routing.models import Assignment, Escalation
    from routing.services.sla import _notify
    from tests.factories import LeadFactory

    settings.MARTECH_ROUTING = {**settings.MARTECH_ROUTING, "SLACK_WEBHOOK_URL": hook.url}
    hook.answers = [503, 200]
    a = Assignment.objects.create(lead=LeadFactory(), status="assigned", trigger="api", is_current=True)
    e = Escalation.objects.create(assignment=a, level=Escalation.Level.NOTIFY_MANAGER, detail={"via": "manager"})
    _notify(escalation_id=e.pk, subject="SLA breach", body="late", to=["boss@example.com"])
    e.refresh_from_db()
    assert e.detail == {"via": "manager", "webhook": "sent (200)", "email": "sent"}
    assert hook.received[-1]["json"] == {"text": "SLA breach\nlate"}
    rows = {r.channel: r for r in Notification.objects.filter(source="routing:sla")}
    assert rows["webhook"].attempts == 2 and rows["webhook"].key == f"routing:sla:{e.pk}:webhook"
    assert rows["email"].target == "boss@example.com" and mail.outbox[-1].to == ["boss@example.com"]


def _sql_handoff(lead):
    from martech.models import LifecycleStage
    from martech.services.leads import lead_change_stage

    lead.lifecycle_stage = LifecycleStage.objects.get(key="mql")
    lead.save(update_fields=["lifecycle_stage"])
    lead_change_stage(lead=lead, to_stage="sql", reason="qualified")


def test_the_handoff_records_each_send(hook, settings, scoring_inline, django_capture_on_commit_callbacks):
    from martech.scoring.models import Handoff
    from tests.factories import LeadFactory

    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_WEBHOOK_URL": hook.url,
                                "HANDOFF_NOTIFY_EMAILS": ["sales@example.com"]}
    lead = LeadFactory()
    with django_capture_on_commit_callbacks(execute=True):
        _sql_handoff(lead)
    handoff = Handoff.objects.get(lead=lead)
    rows = {r.channel: r for r in Notification.objects.filter(source="scoring:handoff")}
    assert handoff.email_sent_at == rows["email"].finished_at and handoff.webhook_sent_at == rows["webhook"].finished_at
    assert "sales@example.com" in rows["email"].target
    assert hook.received[0]["json"]["handoff_id"] == handoff.pk and hook.received[0]["key"] == rows["webhook"].key


def test_a_failed_handoff_send_is_kept_and_tried_again(settings, scoring_inline, django_capture_on_commit_callbacks):
    from martech.scoring.models import Handoff
    from martech.scoring.tasks import handoff_notify, handoffs_notify_sweep
    from tests.factories import LeadFactory

    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_NOTIFY_EMAILS": [],
                                "HANDOFF_WEBHOOK_URL": f"http://127.0.0.1:{_closed_port()}/hook"}
    lead = LeadFactory()
    with django_capture_on_commit_callbacks(execute=True):  # the batch records the failure, never raises
        _sql_handoff(lead)
    handoff = Handoff.objects.get(lead=lead)
    assert handoff.webhook_sent_at is None and handoff.last_error.startswith("webhook: ")
    assert (handoff.notified_at, handoff.notify_attempts) == (None, 1)
    assert Notification.objects.get(source="scoring:handoff").attempts == 3
    assert handoffs_notify_sweep() == {"notified": 0, "failed": 1}  # the minute's sweep: tried again, recorded again
    assert Notification.objects.filter(source="scoring:handoff", status="failed").count() == 2
    with pytest.raises(RuntimeError, match="^webhook: "):  # a task of one handoff (queued before the batch) raises
        handoff_notify(handoff.pk)
    handoff.refresh_from_db()
    assert handoff.notify_attempts == 3


@pytest.mark.parametrize("role", ["sales_ops", "analyst", "marketing_ops"])
def test_every_role_reads_the_notifications_in_the_admin(client, role, request):
    notify.webhook_post(url="not a url", payload={}, source="routing:sla", key="routing:sla:1:webhook")
    row = Notification.objects.get()
    client.force_login(request.getfixturevalue(role))
    listing = client.get("/admin/martech/notification/")
    assert listing.status_code == 200
    text = listing.content.decode()
    assert "Webhook" in text and "Failed" in text and "routing:sla" in text
    page = client.get(f"/admin/martech/notification/{row.pk}/change/")
    assert page.status_code == 200 and "unknown url type" in page.content.decode()
    assert client.get("/admin/martech/notification/add/").status_code == 403
    assert client.post(f"/admin/martech/notification/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Notification.objects.filter(pk=row.pk).exists()
