"""SLA: first touch stops the clock; the escalation chain runs once per step."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone as dt_tz
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail

from martech.models import SalesTask
from martech.services.tasks import task_complete, task_create
from routing import services
from routing.models import Assignment, Escalation
from tests.factories import LeadFactory, UserFactory
from tests.routing.factories import RepFactory, RuleSetFactory, SlaPolicyFactory, TeamFactory

pytestmark = pytest.mark.django_db
MON_10 = datetime(2026, 3, 2, 10, tzinfo=dt_tz.utc)  # a Monday
HOURS = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


@pytest.fixture
def webhook(settings):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.MARTECH_ROUTING = {**settings.MARTECH_ROUTING, "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/hook"}
    yield received
    server.shutdown()


@pytest.fixture
def setup():
    policy = SlaPolicyFactory(first_touch_hours=2, notify_manager_after_hours=1, reassign_after_hours=2)
    team = TeamFactory(sla_policy=policy)
    boss = RepFactory(team=None, name="Boss", email="boss@sales.example")
    user = UserFactory(username="slow")
    slow = RepFactory(team=team, name="Slow", email="slow@sales.example", user=user, manager=boss, working_hours=HOURS)
    quick = RepFactory(team=team, name="Quick", working_hours=HOURS)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    return slow, quick


def test_escalation_chain(setup, webhook, django_capture_on_commit_callbacks):
    slow, quick = setup
    lead = LeadFactory()
    a, _ = services.lead_route(lead_id=lead.pk, trigger="api", now=MON_10)
    assert a.rep == slow and a.sla_due_at == MON_10 + timedelta(hours=2)

    def run(at):
        with django_capture_on_commit_callbacks(execute=True):
            return services.sla_escalate(now=at)

    assert run(MON_10 + timedelta(hours=1)) == {}
    assert run(MON_10 + timedelta(hours=2)) == {"reminded": 1}
    assert SalesTask.objects.get(key=f"routing:sla-remind:{a.pk}").owner == slow.user
    assert mail.outbox[-1].to == ["slow@sales.example"]
    assert run(MON_10 + timedelta(hours=2, minutes=30)) == {}  # a repeated run does nothing
    assert run(MON_10 + timedelta(hours=3)) == {"manager_notified": 1}
    assert mail.outbox[-1].to == ["boss@sales.example"]
    assert len(webhook) == 2 and "SLA breach: Slow" in webhook[-1]["text"]
    assert Escalation.objects.get(assignment=a, level=2).detail["webhook"].startswith("sent")
    assert run(MON_10 + timedelta(hours=4)) == {"reassigned": 1}
    current = Assignment.objects.get(lead=lead, is_current=True)
    assert current.rep == quick and current.trigger == Assignment.Trigger.ESCALATION
    assert run(MON_10 + timedelta(hours=5)) == {}  # the new assignment's clock runs from 14:00
    assert list(Escalation.objects.filter(assignment=a).values_list("level", flat=True)) == [1, 2, 3]


def test_sla_clock_counts_business_hours_only(setup):
    late = datetime(2026, 3, 6, 16, 30, tzinfo=dt_tz.utc)  # Friday 16:30
    a, _ = services.lead_route(lead_id=LeadFactory().pk, trigger="api", now=late)
    assert a.sla_due_at == datetime(2026, 3, 9, 10, 30, tzinfo=dt_tz.utc)  # Monday 10:30


def test_first_touch_from_task_completion_stops_the_clock(setup, django_capture_on_commit_callbacks):
    slow, _ = setup
    lead = LeadFactory()
    a, _ = services.lead_route(lead_id=lead.pk, trigger="api", now=MON_10)
    task, _ = task_create(key="call-1", lead=lead, subject="Call", source="test")
    with django_capture_on_commit_callbacks(execute=True):
        task_complete(task=task, source="crm", at=MON_10 + timedelta(minutes=30))
    a.refresh_from_db()
    assert a.first_touch_at == MON_10 + timedelta(minutes=30) and a.first_touch_source == "task:crm"
    assert services.sla_escalate(now=MON_10 + timedelta(hours=9)) == {}


def test_first_touch_from_stage_change(setup, django_capture_on_commit_callbacks):
    from martech.services.leads import lead_change_stage

    lead = LeadFactory()
    a, _ = services.lead_route(lead_id=lead.pk, trigger="api", now=MON_10)
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="sql", reason="qualified on call", at=MON_10 + timedelta(hours=1))
    a.refresh_from_db()
    assert a.first_touch_source == "stage:sql"
    assert Assignment.objects.filter(lead=lead).count() == 1  # the stage trigger found it assigned


def test_first_touch_from_an_activity_event(setup, settings):
    from martech.models import EventType
    from tests.factories import EventFactory
    from routing.receivers import on_events_ingested

    lead = LeadFactory()
    a, _ = services.lead_route(lead_id=lead.pk, trigger="api", now=MON_10)
    kind = EventType.objects.create(name="call_logged")
    event = EventFactory(lead=lead, event_type=kind, occurred_at=MON_10 + timedelta(minutes=10))
    other = EventFactory(lead=lead, occurred_at=MON_10 + timedelta(minutes=5))  # not a touch type
    on_events_ingested(sender=None, event_ids=[other.pk, event.pk])
    a.refresh_from_db()
    assert a.first_touch_at == MON_10 + timedelta(minutes=10) and a.first_touch_source == "event:call_logged"


def test_sla_report_per_team_and_rep(setup):
    from routing.selectors import sla_report

    slow, quick = setup
    leads = [LeadFactory() for _ in range(4)]
    made = [services.lead_route(lead_id=l.pk, trigger="api", now=MON_10)[0] for l in leads]
    # Round robin: slow, quick, slow, quick. Touch: slow in 30 min (within), quick in 3 h (late), slow never.
    services.first_touch_record(lead_id=leads[0].pk, source="t", at=MON_10 + timedelta(minutes=30))
    services.first_touch_record(lead_id=leads[1].pk, source="t", at=MON_10 + timedelta(hours=3))
    services.first_touch_record(lead_id=leads[3].pk, source="t", at=MON_10 + timedelta(minutes=90))
    assert [a.rep.name for a in made] == ["Slow", "Quick", "Slow", "Quick"]
    report = sla_report(since=MON_10 - timedelta(days=1), until=MON_10 + timedelta(days=1), now=MON_10 + timedelta(hours=5))
    reps = {r["name"]: r for r in report["reps"]}
    assert reps["Slow"] == {"name": "Slow", "assigned": 2, "within_sla": 1, "breached": 1, "open": 0,
                            "share_within_sla": 0.5, "median_minutes_to_first_touch": 30.0}
    assert reps["Quick"]["share_within_sla"] == 0.5 and reps["Quick"]["median_minutes_to_first_touch"] == 135.0
    [team] = report["teams"]
    assert team["assigned"] == 4 and team["within_sla"] == 2 and team["breached"] == 2
    early = sla_report(since=MON_10 - timedelta(days=1), until=MON_10 + timedelta(days=1), now=MON_10 + timedelta(hours=1))
    assert {r["name"]: r["open"] for r in early["reps"]} == {"Quick": 0, "Slow": 1}


def test_sla_deadlines_skip_the_reps_out_of_office_periods(setup, django_capture_on_commit_callbacks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from routing.models import OutOfOffice

    slow, quick = setup
    # Slow is at their desk at 10:00 but away 11-13 and 14:30-16:00 (UTC, their zone) later that Monday.
    OutOfOffice.objects.create(rep=slow, starts_at=MON_10 + timedelta(hours=1), ends_at=MON_10 + timedelta(hours=3))
    OutOfOffice.objects.create(rep=slow, starts_at=MON_10 + timedelta(hours=4, minutes=30), ends_at=MON_10 + timedelta(hours=6))
    lead = LeadFactory()
    with CaptureQueriesContext(connection) as ctx:
        a, _ = services.lead_route(lead_id=lead.pk, trigger="api", now=MON_10)
    assert a.rep == slow
    # 10-11 (1 h), away 11-13, 13-14 (1 h).
    assert a.sla_due_at == MON_10 + timedelta(hours=4)
    # The absences that decide availability also give the deadline: one read.
    assert sum('"routing_outofoffice"' in q["sql"] for q in ctx.captured_queries) == 1

    def run(at):
        with django_capture_on_commit_callbacks(execute=True):
            return services.sla_escalate(now=at)

    assert run(MON_10 + timedelta(hours=4)) == {"reminded": 1}
    # Manager after 1 more business hour: 14:00-14:30, away until 16:00, 16:00-16:30.
    assert run(MON_10 + timedelta(hours=6)) == {}
    assert run(MON_10 + timedelta(hours=6, minutes=30)) == {"manager_notified": 1}


def test_batch_route_sla_deadline_skips_absences_and_holidays(setup):
    from routing.models import OutOfOffice

    slow, quick = setup
    quick.is_active = False
    quick.save()
    slow.holidays = ["2026-03-03"]  # Tuesday
    slow.save()
    OutOfOffice.objects.create(rep=slow, starts_at=MON_10 + timedelta(hours=6), ends_at=MON_10 + timedelta(days=2, hours=1))
    lead = LeadFactory()
    counts = services.leads_route_batch(lead_ids=[lead.pk], trigger="api", now=MON_10 + timedelta(hours=5))
    assert counts["assigned"] == 1
    a = Assignment.objects.get(lead=lead)
    # Monday 15:00-16:00 (1 h), away until Wednesday 11:00 (Tuesday a holiday anyway), then 1 h -> Wednesday 12:00.
    assert a.rep == slow and a.sla_due_at == datetime(2026, 3, 4, 12, tzinfo=dt_tz.utc)
