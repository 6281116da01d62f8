"""Execution engine: each step type, consent at send time, caps, quiet hours,
idempotency, versions and goals (SQLite and PostgreSQL)."""
from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.utils import timezone

from martech.models import SalesTask
from martech.services.ingest import events_ingest
from martech.services.leads import consent_record
from nurture.channels import LocmemSmsBackend
from nurture.engine import enrollments_advance_due, split_bucket
from nurture.models import AudienceMember, Enrollment, Message, StepExecution, Suppression
from nurture.services import enrollment_create, enrollments_migrate, workflow_publish
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db(transaction=False)
UTC = ZoneInfo("UTC")


def run(now=None):
    return enrollments_advance_due(now=now or timezone.now())


def test_email_step_sends_once_with_unsubscribe_headers(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    lead = consenting_lead(first_name="Ada")
    enr, reason = enrollment_create(workflow=wf, lead=lead, source="test")
    assert reason == "" and enr.version == wf.current_version
    assert run() == 2  # the email and the end
    assert run() == 0  # a second run (a retried task) finds nothing left
    assert len(mail.outbox) == 1
    msg = mail.outbox[0]
    assert msg.subject == "Hello Ada #1"
    assert msg.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.extra_headers["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/n/u/")
    html = msg.alternatives[0][0]
    assert "/n/c/" in html and "/n/o/" in html and 'href="https://example.com/p1"' not in html  # links rewritten
    row = Message.objects.get()
    assert row.status == Message.Status.SENT and row.key == f"n:{enr.pk}:0:e1"
    enr.refresh_from_db()
    assert enr.status == Enrollment.Status.COMPLETED
    assert list(StepExecution.objects.values_list("step", "outcome")) == [("e1", "sent"), ("end", "ended")]


def test_token_fallback_when_field_blank(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    enrollment_create(workflow=wf, lead=consenting_lead(first_name=""), source="t")
    run()
    assert mail.outbox[0].subject == "Hello there #1"


def test_no_consent_is_skipped_not_sent(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    lead = consenting_lead(channels=())
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert mail.outbox == []
    assert StepExecution.objects.get(step="e1").outcome == "skipped:no_consent"


def test_consent_withdrawn_between_enrollment_and_send(make_workflow, consenting_lead):
    wf = make_workflow({"start": "w", "steps": {"w": {"type": "wait", "days": 1, "next": "e1"},
                                               **{k: v for k, v in email_flow(1)["steps"].items()}}})
    lead = consenting_lead()
    now = timezone.now()
    enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    run(now)
    consent_record(lead=lead, channel="email", granted=False, source="test")
    run(now + timedelta(days=1, minutes=1))
    assert mail.outbox == []
    assert StepExecution.objects.get(step="e1").outcome == "skipped:no_consent"


def test_suppressed_address_is_not_mailed(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1))
    lead = consenting_lead()
    Suppression.objects.create(address=lead.email, reason="bounce")
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert mail.outbox == [] and StepExecution.objects.get(step="e1").outcome == "skipped:suppressed"


def _transactional_flow() -> dict:
    """A transactional welcome (as the trial onboarding journey starts),
    then a marketing email."""
    flow = email_flow(2)
    flow["steps"]["e1"]["marketing"] = False
    return flow


def test_transactional_email_goes_without_marketing_consent(make_workflow, consenting_lead):
    # The trial onboarding's first email was skipped for every lead who never
    # ticked a consent box: consent was asked of every email.
    wf = make_workflow(_transactional_flow())
    lead = consenting_lead(channels=())
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert [m.to for m in mail.outbox] == [[lead.email]]
    outcomes = dict(StepExecution.objects.values_list("step", "outcome"))
    assert (outcomes["e1"], outcomes["e2"]) == ("sent", "skipped:no_consent")
    sent = Message.objects.get(step="e1")
    assert (sent.status, sent.is_marketing) == ("sent", False)


def test_transactional_email_goes_after_a_withdrawal_but_never_to_a_suppressed_address(
        make_workflow, consenting_lead, monkeypatch):
    from nurture import engine

    wf = make_workflow(_transactional_flow(), suppress_unsubscribed=False)
    withdrawn, bounced = consenting_lead(), consenting_lead(channels=())
    for lead in (withdrawn, bounced):
        enrollment_create(workflow=wf, lead=lead, source="t")
    with monkeypatch.context() as m:  # decided now, delivered below (the check runs again at send time)
        m.setattr(engine, "messages_deliver", lambda **kw: {})
        run()
    consent_record(lead=withdrawn, channel="email", granted=False, source="test")
    Suppression.objects.create(address=bounced.email, reason="bounce")
    engine.messages_deliver(ids=list(Message.objects.order_by("pk").values_list("pk", flat=True)))
    assert [m.to for m in mail.outbox] == [[withdrawn.email]]
    assert dict(Message.objects.filter(step="e1").values_list("lead_id", "status_reason")) == {
        withdrawn.pk: "", bounced.pk: "suppressed"}


def test_frequency_cap_across_workflows_delays_never_drops(make_workflow, consenting_lead):
    a, b = make_workflow(email_flow(1)), make_workflow(email_flow(1))
    lead = consenting_lead()
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    enrollment_create(workflow=a, lead=lead, source="t", now=now)
    enrollment_create(workflow=b, lead=lead, source="t", now=now)
    run(now)
    assert len(mail.outbox) == 1  # daily cap 1
    waiting = Enrollment.objects.get(status="active")
    assert waiting.due_at == now + timedelta(days=1) and waiting.step == "e1"
    run(now + timedelta(hours=23))
    assert len(mail.outbox) == 1
    run(now + timedelta(days=1))
    assert len(mail.outbox) == 2 and not Enrollment.objects.filter(status="active").exists()


def test_weekly_cap(make_workflow, consenting_lead, settings):
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "EMAIL_DAILY_CAP": 5, "EMAIL_WEEKLY_CAP": 3}
    wf = make_workflow(email_flow(4))
    lead = consenting_lead()
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    run(now)
    assert len(mail.outbox) == 3
    assert Enrollment.objects.get().due_at == now + timedelta(days=7)


def test_transactional_email_ignores_the_marketing_cap(make_workflow, consenting_lead):
    flow = email_flow(2)
    flow["steps"]["e2"]["marketing"] = False
    wf = make_workflow(flow)
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    run()
    assert len(mail.outbox) == 2


@pytest.mark.parametrize("zone,utc_hour,delayed_to_utc_hour", [
    ("America/New_York", 2, 13),   # 21:00 EST the day before -> 08:00 EST = 13:00 UTC
    ("Asia/Tokyo", 13, 23),        # 22:00 JST -> 08:00 JST next day = 23:00 UTC
    ("Europe/Paris", 12, None),    # 13:00 CET: not quiet
])
def test_sms_quiet_hours_in_the_leads_zone(make_workflow, consenting_lead, zone, utc_hour, delayed_to_utc_hour):
    wf = make_workflow({"start": "s", "steps": {"s": {"type": "send_sms", "body": "Hi {{first_name|you}}", "next": "end"},
                                               "end": {"type": "end"}}})
    lead = consenting_lead(channels=("sms",), phone="+12025550143", time_zone=zone)
    now = datetime(2026, 1, 15, utc_hour, 0, tzinfo=UTC)
    enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    run(now)
    if delayed_to_utc_hour is None:
        assert len(LocmemSmsBackend.outbox) == 1
        return
    assert LocmemSmsBackend.outbox == []
    due = Enrollment.objects.get().due_at.astimezone(UTC)
    assert due.hour == delayed_to_utc_hour and due > now and due - now < timedelta(hours=24)
    run(due)
    assert len(LocmemSmsBackend.outbox) == 1 and LocmemSmsBackend.outbox[0]["to"] == "+12025550143"


def test_wait_business_days_skips_the_weekend(make_workflow, consenting_lead):
    wf = make_workflow({"start": "w", "steps": {"w": {"type": "wait", "business_days": 2, "next": "end"}, "end": {"type": "end"}}})
    lead = consenting_lead(time_zone="UTC")
    friday = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)
    enrollment_create(workflow=wf, lead=lead, source="t", now=friday)
    run(friday)
    assert Enrollment.objects.get().due_at == datetime(2026, 1, 20, 10, 0, tzinfo=UTC)  # Tuesday


def test_split_is_stable_per_lead_and_follows_the_percentage(make_workflow, consenting_lead):
    assert split_bucket(1, "s", 42) == split_bucket(1, "s", 42)
    buckets = [split_bucket(1, "s", i) for i in range(2000)]
    share = sum(b < 30 for b in buckets) / len(buckets)
    assert 0.25 < share < 0.35
    wf = make_workflow({"start": "s", "steps": {
        "s": {"type": "split", "percent": 100, "a": "x", "b": "y"}, "x": {"type": "end"}, "y": {"type": "end"}}})
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    run()
    assert StepExecution.objects.get(step="s").outcome == "a"


def test_task_field_stage_and_audience_steps(make_workflow, consenting_lead):
    wf = make_workflow({"start": "t", "steps": {
        "t": {"type": "create_task", "subject": "Call {{email}}", "next": "f"},
        "f": {"type": "update_field", "field": "properties.nurtured", "value": "yes", "next": "j"},
        "j": {"type": "update_field", "field": "job_title", "value": "CMO", "next": "s"},
        "s": {"type": "set_stage", "stage": "mql", "next": "a"},
        "a": {"type": "audience_add", "audience": "retarget", "next": "end"},
        "end": {"type": "end"}}})
    lead = consenting_lead(channels=("email", "ads"))
    enr, _ = enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    task = SalesTask.objects.get()
    assert task.subject == f"Call {lead.email}" and task.key == f"n:{enr.pk}:0:t"
    lead.refresh_from_db()
    assert lead.properties["nurtured"] == "yes" and lead.job_title == "CMO" and lead.lifecycle_stage.key == "mql"
    assert AudienceMember.objects.filter(audience="retarget", lead=lead).exists()


def test_audience_remove_and_no_ads_consent(make_workflow, consenting_lead):
    wf = make_workflow({"start": "a", "steps": {"a": {"type": "audience_add", "audience": "r", "next": "b"},
                                               "b": {"type": "audience_remove", "audience": "r", "next": "end"},
                                               "end": {"type": "end"}}})
    lead = consenting_lead(channels=())
    AudienceMember.objects.create(audience="r", lead=lead)
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert StepExecution.objects.get(step="a").outcome == "skipped:no_consent"
    assert not AudienceMember.objects.exists()


@pytest.fixture
def http_sink():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "key": self.headers["Idempotency-Key"], "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_notify_slack_webhook_email_and_call_webhook(make_workflow, consenting_lead, http_sink):
    base, received = http_sink
    wf = make_workflow({"start": "n", "steps": {
        "n": {"type": "notify", "channel": "webhook", "to": f"{base}/slack", "text": "Hot lead {{email}}", "next": "m"},
        "m": {"type": "notify", "channel": "email", "to": "sales@example.com", "text": "Look at {{email}}", "next": "h"},
        "h": {"type": "webhook", "url": f"{base}/hook", "next": "end"},
        "end": {"type": "end"}}})
    lead = consenting_lead(channels=())
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert [r["path"] for r in received] == ["/slack", "/hook"]
    assert received[0]["json"] == {"text": f"Hot lead {lead.email}"}
    assert received[1]["json"]["lead"]["email"] == lead.email and received[1]["key"].endswith(":h")
    assert [m.to for m in mail.outbox] == [["sales@example.com"]]
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}


def test_failed_webhook_is_kept_with_its_error(make_workflow, consenting_lead):
    wf = make_workflow({"start": "h", "steps": {"h": {"type": "webhook", "url": "http://127.0.0.1:9/none", "next": "end"},
                                               "end": {"type": "end"}}})
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t")
    run()
    msg = Message.objects.get()
    assert msg.status == "failed" and msg.error


def test_enroll_in_another_workflow(make_workflow, consenting_lead):
    other = make_workflow(email_flow(1))
    wf = make_workflow({"start": "x", "steps": {"x": {"type": "enroll", "workflow": other.pk, "next": "end"}, "end": {"type": "end"}}})
    lead = consenting_lead()
    enrollment_create(workflow=wf, lead=lead, source="t")
    run()
    assert Enrollment.objects.filter(workflow=other, lead=lead).exists()
    run()
    assert len(mail.outbox) == 1


def _track(lead, event, when):
    from django.test import TestCase

    from martech.models import EventType

    EventType.objects.get_or_create(name=event)
    with TestCase.captureOnCommitCallbacks(execute=True):  # events_ingested is sent after commit
        res = events_ingest(items=[{"type": "track", "event": event, "messageId": f"{event}-{lead.pk}-{when.timestamp()}",
                                    "timestamp": when.isoformat(), "traits": {"email": lead.email}}], source="test")
    assert res.count("accepted") == 1


def test_wait_until_event_and_its_timeout_path(make_workflow, consenting_lead, scoring_inline):
    wf = make_workflow({"start": "w", "steps": {
        "w": {"type": "wait_until", "event": "demo_booked", "timeout_hours": 48, "next": "yes", "timeout_next": "no"},
        "yes": {"type": "end"}, "no": {"type": "end"}}})
    a, b = consenting_lead(), consenting_lead()
    now = timezone.now()
    enrollment_create(workflow=wf, lead=a, source="t", now=now)
    enrollment_create(workflow=wf, lead=b, source="t", now=now)
    run(now)
    assert Enrollment.objects.filter(status="active").count() == 2
    _track(a, "demo_booked", now + timedelta(minutes=5))
    run(now + timedelta(minutes=10))
    assert Enrollment.objects.get(lead=a).exit_reason == "ended"
    assert StepExecution.objects.get(enrollment__lead=a, step="w").outcome == "met"
    run(now + timedelta(hours=49))
    assert StepExecution.objects.get(enrollment__lead=b, step="w").outcome == "timed_out"


def test_goal_event_exits_and_counts_a_conversion(make_workflow, consenting_lead, scoring_inline):
    flow = {"start": "w", "steps": {"w": {"type": "wait", "days": 2, "next": "e1"}, **email_flow(1)["steps"]}}
    wf = make_workflow(flow, goal_event="order_completed")
    lead = consenting_lead()
    now = timezone.now()
    enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    run(now)
    _track(lead, "order_completed", now + timedelta(hours=1))
    enr = Enrollment.objects.get()
    assert enr.status == Enrollment.Status.CONVERTED and enr.exit_reason == "goal"
    run(now + timedelta(days=3))
    assert mail.outbox == []


def test_version_pinning_and_explicit_migration(make_workflow, consenting_lead):
    wf = make_workflow({"start": "w", "steps": {"w": {"type": "wait", "days": 1, "next": "e1"}, **email_flow(1)["steps"]}})
    v1 = wf.current_version
    now = timezone.now()
    enrollment_create(workflow=wf, lead=consenting_lead(first_name=""), source="t", now=now)
    run(now)
    wf.definition["steps"]["e1"]["subject"] = "Version two"
    wf.save()
    v2 = workflow_publish(workflow=wf)
    v1.refresh_from_db()
    assert v1.definition["steps"]["e1"]["subject"].startswith("Hello")  # immutable
    later = consenting_lead(first_name="")
    enrollment_create(workflow=wf, lead=later, source="t", now=now)
    assert Enrollment.objects.get(lead=later).version == v2
    run(now)
    run(now + timedelta(days=1, minutes=1))
    # The running enrollment stays on v1; the new one runs v2.
    assert sorted(m.subject for m in mail.outbox) == ["Hello there #1", "Version two"]


def test_migrate_moves_running_enrollments_to_the_new_version(make_workflow, consenting_lead):
    wf = make_workflow({"start": "w", "steps": {"w": {"type": "wait", "days": 1, "next": "e1"}, **email_flow(1)["steps"]}})
    now = timezone.now()
    enrollment_create(workflow=wf, lead=consenting_lead(), source="t", now=now)
    run(now)
    wf.definition["steps"]["e1"]["subject"] = "Version two"
    wf.save()
    v2 = workflow_publish(workflow=wf)
    wf.refresh_from_db()
    assert enrollments_migrate(workflow=wf) == (1, 0)
    run(now + timedelta(days=1, minutes=1))
    assert [m.subject for m in mail.outbox] == ["Version two"]
    assert Enrollment.objects.get().version == v2


def test_paused_workflow_enrolls_nobody_and_archive_exits(make_workflow, consenting_lead):
    from nurture.services import workflow_set_status

    wf = make_workflow(email_flow(1))
    lead = consenting_lead()
    workflow_set_status(workflow=wf, action="pause")
    assert enrollment_create(workflow=wf, lead=lead, source="t") == (None, "not_active")
    workflow_set_status(workflow=wf, action="resume")
    enrollment_create(workflow=wf, lead=lead, source="t")
    workflow_set_status(workflow=wf, action="archive")
    assert Enrollment.objects.get().status == "exited"


def test_reenrollment_policies(make_workflow, consenting_lead):
    lead = consenting_lead()
    never = make_workflow(email_flow(1))
    enrollment_create(workflow=never, lead=lead, source="t")
    assert enrollment_create(workflow=never, lead=lead, source="t") == (None, "already_enrolled")
    run()
    assert enrollment_create(workflow=never, lead=lead, source="t") == (None, "reenroll_never")
    after = make_workflow({"start": "end", "steps": {"end": {"type": "end"}}}, reenroll="after_days", reenroll_days=30)
    now = timezone.now()
    enrollment_create(workflow=after, lead=lead, source="t", now=now)
    run(now)
    assert enrollment_create(workflow=after, lead=lead, source="t", now=now + timedelta(days=10))[1] == "reenroll_wait"
    assert enrollment_create(workflow=after, lead=lead, source="t", now=now + timedelta(days=31))[0] is not None


def test_suppression_by_stage_and_unsubscribed(make_workflow, consenting_lead):
    wf = make_workflow(email_flow(1), suppress_stages=["customer"])
    customer = consenting_lead()
    from martech.services.leads import lead_change_stage

    lead_change_stage(lead=customer, to_stage="customer", reason="t")
    assert enrollment_create(workflow=wf, lead=customer, source="t") == (None, "suppressed_stage")
    unsub = consenting_lead()
    consent_record(lead=unsub, channel="email", granted=False, source="t")
    assert enrollment_create(workflow=wf, lead=unsub, source="t") == (None, "unsubscribed")


def test_bulk_enroll_skips_the_already_enrolled_and_suppressed(make_workflow, consenting_lead):
    from nurture.services import workflow_enroll_bulk

    wf = make_workflow(email_flow(1))
    leads = [consenting_lead() for _ in range(5)]
    enrollment_create(workflow=wf, lead=leads[0], source="t")
    consent_record(lead=leads[1], channel="email", granted=False, source="t")
    made = workflow_enroll_bulk(workflow=wf, lead_ids=[l.pk for l in leads], source="segment")
    assert made == 3
    assert workflow_enroll_bulk(workflow=wf, lead_ids=[l.pk for l in leads], source="segment") == 0


def test_a_broken_step_is_kept_and_retried_without_blocking_others(make_workflow, consenting_lead, monkeypatch):
    from nurture import engine

    wf = make_workflow(email_flow(1))
    a, b = consenting_lead(), consenting_lead()
    enrollment_create(workflow=wf, lead=a, source="t")
    enrollment_create(workflow=wf, lead=b, source="t")
    real = engine._send_email

    def flaky(enr, step, ctx):
        if enr.lead_id == a.pk:
            raise RuntimeError("template exploded")
        return real(enr, step, ctx)

    monkeypatch.setattr(engine, "_send_email", flaky)
    run()
    assert len(mail.outbox) == 1
    broken = Enrollment.objects.get(lead=a)
    assert broken.status == "active" and "template exploded" in broken.state["error"] and broken.due_at > timezone.now()


def test_wait_until_condition_polls_and_takes_the_timeout_path(make_workflow, consenting_lead):
    from martech.services.leads import lead_upsert

    wf = make_workflow({"start": "w", "steps": {
        "w": {"type": "wait_until", "condition": 'job_title contains "vp"', "timeout_hours": 24, "next": "yes",
              "timeout_next": "no"},
        "yes": {"type": "end"}, "no": {"type": "end"}}})
    promoted, stays = consenting_lead(job_title="Manager"), consenting_lead(job_title="Manager")
    now = timezone.now()
    enrollment_create(workflow=wf, lead=promoted, source="t", now=now)
    enrollment_create(workflow=wf, lead=stays, source="t", now=now)
    run(now)
    waiting = Enrollment.objects.get(lead=promoted)
    assert waiting.status == "active" and waiting.due_at == now + timedelta(hours=1)  # re-checked every hour
    lead_upsert(data={"job_title": "VP Growth"}, source="test", lead=promoted, overwrite=True)
    run(now + timedelta(hours=1))
    assert StepExecution.objects.get(enrollment__lead=promoted, step="w").outcome == "met"
    assert Enrollment.objects.get(lead=promoted).exit_reason == "ended"
    assert not StepExecution.objects.filter(enrollment__lead=stays).exists()
    for hours in range(2, 26):
        run(now + timedelta(hours=hours))
    done = StepExecution.objects.get(enrollment__lead=stays, step="w")
    assert done.outcome == "timed_out"
    assert StepExecution.objects.filter(enrollment__lead=stays).values_list("step", flat=True).last() == "no"


def test_the_lead_360_names_the_wait_a_lead_is_in_not_the_step_after_it(make_workflow, consenting_lead):
    # The engine moves Enrollment.step past a wait as soon as the wait starts
    # (the step after it is due when the wait ends); the lead is in the wait.
    from nurture.selectors import lead_journeys

    wf = make_workflow({"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Your ebook", "body": "Here it is", "next": "w1"},
        "w1": {"type": "wait", "days": 3, "next": "e2"},
        "e2": {"type": "send_email", "subject": "Three ideas", "body": "Chapter two", "next": "end"},
        "end": {"type": "end"}}})
    lead = consenting_lead()
    enrollment_create(workflow=wf, lead=lead, source="test")
    now = timezone.now()
    assert run(now) == 2  # the email, then the wait starts
    enr = Enrollment.objects.get(lead=lead)
    assert (enr.step, enr.due_at) == ("e2", now + timedelta(days=3))
    [row] = lead_journeys(lead=lead)["rows"]
    assert (row["step"], row["then"]) == ("Wait 3 days", 'Send email "Three ideas"')

    assert run(now + timedelta(days=3)) == 2  # the second email and the end: completed
    [row] = lead_journeys(lead=lead)["rows"]
    assert (row["step"], row["then"], row["active"]) == ("—", "", False)


def test_new_events_exit_on_the_goal_and_wake_the_waits_an_update_each(make_workflow, consenting_lead,
                                                                       django_assert_num_queries):
    """The events receiver: the goal exit by version (the receiver's cached
    versions, no join), then the woken wait_untils; the goal wins when both
    apply; an event that is neither costs no query."""
    from martech.signals import EventsWithLead
    from nurture.receivers import on_events

    waiting = {"start": "w", "steps": {
        "w": {"type": "wait_until", "event": "demo_booked", "timeout_hours": 48, "next": "e1", "timeout_next": "e1"},
        **email_flow(1)["steps"]}}
    goal_flow = make_workflow(waiting, goal_event="order_completed")
    wait_flow = make_workflow(waiting)
    a, b, c, d = consenting_lead(), consenting_lead(), consenting_lead(), consenting_lead()
    now = timezone.now()
    for wf, lead in ((goal_flow, a), (wait_flow, b), (wait_flow, c), (goal_flow, d)):
        enrollment_create(workflow=wf, lead=lead, source="t", now=now)
    run(now)  # each waits for demo_booked, due when it times out

    def announce(leads, names):
        on_events(sender=None, event_ids=[], with_lead=EventsWithLead(
            event_ids=frozenset({1}), lead_ids=frozenset(lead.pk for lead in leads), type_names=frozenset(names),
            campaign_ids=frozenset()))

    from martech import configcache

    announce([c], {"page_view"})  # the caches warm
    with configcache.snapshot():  # as in the capture task: the configuration checked once, before
        with django_assert_num_queries(0):
            announce([a, b], {"page_view"})
        with django_assert_num_queries(1):  # the goal only: one UPDATE by version
            announce([d], {"order_completed"})
        with django_assert_num_queries(2):
            announce([a, b], {"order_completed", "demo_booked"})
    ea, eb, ec, ed = (Enrollment.objects.get(lead=lead) for lead in (a, b, c, d))
    assert (ea.status, ea.exit_reason, ea.due_at) == (Enrollment.Status.CONVERTED, "goal", None)  # the goal won
    assert ed.status == Enrollment.Status.CONVERTED
    assert eb.status == Enrollment.Status.ACTIVE and eb.due_at <= timezone.now()
    assert ec.due_at > timezone.now()  # another lead's wait is left alone


def test_an_unconfirmed_consent_wakes_with_one_update(consenting_lead, django_assert_num_queries):
    from nurture.services import enrollments_wake_for_consent

    lead = consenting_lead()
    with django_assert_num_queries(1):  # no lead lock, no savepoint: nothing to lift
        assert enrollments_wake_for_consent(lead_id=lead.pk, confirmed=False) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("reference_data")  # tests/conftest.py
def test_an_enrollment_outside_a_transaction_is_one_insert_and_a_repeat_is_refused(make_workflow, consenting_lead,
                                                                                  django_assert_num_queries):
    """The events receiver enrolls after the capture's commit (autocommit):
    the INSERT needs no BEGIN/COMMIT or savepoint around it; a second
    trigger racing it hits the unique index and is told so, the connection
    still usable."""
    from django.db import connection

    wf = make_workflow(email_flow(1))
    lead = consenting_lead()
    assert not connection.in_atomic_block
    wf = type(wf).objects.select_related("current_version").get(pk=wf.pk)
    # The consent state, the last enrollment, the INSERT.
    with django_assert_num_queries(3):
        enr, reason = enrollment_create(workflow=wf, lead=lead, source="t")
    assert reason == "" and enr.pk
    Enrollment.objects.filter(pk=enr.pk).update(is_test=True)  # the check before the INSERT misses it, the index does not
    assert enrollment_create(workflow=wf, lead=lead, source="t") == (None, "already_enrolled")
    assert Enrollment.objects.filter(lead=lead).count() == 1
