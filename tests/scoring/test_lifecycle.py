"""Lifecycle rules forward and back, event rules, opportunities, stale MQLs,
and the SQL handoff (owner, task, email, webhook, SLA clock)."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import threading

import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from martech import hooks, signals
from martech.models import LifecycleStage, SalesTask, StageTransition
from martech.scoring import services
from martech.scoring.models import FitRule, Handoff, LifecycleRule, StaleFlag
from tests.factories import EventFactory, LeadFactory, UserFactory


def stage(key):
    return LifecycleStage.objects.get(key=key)


@pytest.fixture
def mql_rule(model):
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=80)
    return LifecycleRule.objects.create(name="MQL by score", condition="score >= 75 and fit_score >= 30",
                                        to_stage=stage("mql"))


def test_mql_rule_moves_forward_with_reason(mql_rule, django_capture_on_commit_callbacks):
    lead = LeadFactory(job_title="VP Sales")
    with django_capture_on_commit_callbacks(execute=True):
        services.scores_recompute(lead_ids=[lead.pk], reason="t")
        moved = services.lifecycle_apply(lead_ids=[lead.pk])
    assert [(t.from_stage.key, t.to_stage.key, t.reason, t.source) for t in moved] == [
        ("lead", "mql", "rule: MQL by score", "lifecycle_rule")]
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "mql"
    # A second run changes nothing.
    assert services.lifecycle_apply(lead_ids=[lead.pk]) == []


def test_rules_are_forward_only_by_default(mql_rule):
    lead = LeadFactory(job_title="VP Sales", lifecycle_stage=stage("sql"))
    services.scores_recompute(lead_ids=[lead.pk], reason="t")
    assert services.lifecycle_apply(lead_ids=[lead.pk]) == []
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "sql"


def test_backward_rule_recycles_when_allowed(model):
    LifecycleRule.objects.create(name="Recycle cold SQLs", condition="score < 10", to_stage=stage("lead"),
                                 allow_backward=True)
    lead = LeadFactory(lifecycle_stage=stage("sql"))
    moved = services.lifecycle_apply(lead_ids=[lead.pk])
    assert [(t.from_stage.key, t.to_stage.key) for t in moved] == [("sql", "lead")]


def test_explicit_recycle_needs_a_reason_and_is_recorded(db):
    user = UserFactory(username="sam")
    lead = LeadFactory(lifecycle_stage=stage("sql"))
    with pytest.raises(ValidationError) as info:
        services.lead_recycle(lead=lead, reason="  ", actor=user)
    assert "reason" in info.value.message_dict
    tr = services.lead_recycle(lead=lead, reason="no budget this year", actor=user)
    assert (tr.from_stage.key, tr.to_stage.key, tr.reason, tr.actor, tr.source) == (
        "sql", "lead", "recycled: no budget this year", user, "recycle")


def test_event_rule_demo_requested_makes_sql_and_hands_off(model, demo_requested, settings,
                                                          django_capture_on_commit_callbacks):
    queue = UserFactory(username="queue", email="queue@example.com")
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_DEFAULT_OWNER": "queue",
                                "HANDOFF_NOTIFY_EMAILS": ["sales@example.com"]}
    LifecycleRule.objects.create(name="Demo", event_type=demo_requested, to_stage=stage("sql"))
    lead = LeadFactory()
    event = EventFactory(lead=lead, event_type=demo_requested, client_event_id="demo-1")
    with django_capture_on_commit_callbacks(execute=True):
        signals.events_ingested.send(sender=type(event), event_ids=[event.pk])
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "sql"
    assert lead.owner == queue
    handoff = Handoff.objects.get(lead=lead)
    transition = StageTransition.objects.get(lead=lead, to_stage__key="sql")
    assert handoff.transition == transition
    assert handoff.started_at == transition.changed_at  # the SLA clock
    assert handoff.assigned_by == "default_queue"
    assert handoff.task.key == f"handoff:{transition.pk}" and handoff.task.owner == queue
    assert handoff.email_sent_at is not None
    assert sorted(mail.outbox[0].to) == ["queue@example.com", "sales@example.com"]
    # Retrying the handoff task makes nothing twice.
    services.handoff_start(transition_id=transition.pk)
    assert Handoff.objects.count() == 1 and SalesTask.objects.filter(lead=lead).count() == 1


def test_routing_provider_assigns_before_the_default_queue(db, settings, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    UserFactory(username="queue")
    rep = UserFactory(username="rep")
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_DEFAULT_OWNER": "queue"}
    calls = []

    def assign(*, lead_id, reason, actor=None):
        from martech.models import Lead
        from martech.services.leads import lead_set_owner

        calls.append((lead_id, reason))
        return lead_set_owner(lead=Lead.objects.get(pk=lead_id), owner=rep, reason=reason, source="routing")

    # The provider routing registered comes back after the test (popping it
    # left later tests' handoffs without routing).
    monkeypatch.setitem(hooks._providers, "assign_owner", assign)
    lead = LeadFactory(lifecycle_stage=stage("mql"))
    with django_capture_on_commit_callbacks(execute=True):
        from martech.services.leads import lead_change_stage

        lead_change_stage(lead=lead, to_stage="sql", reason="sales accepted")
    handoff = Handoff.objects.get(lead=lead)
    assert (handoff.owner, handoff.assigned_by) == (rep, "routing")
    assert calls and calls[0][0] == lead.pk


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    _Hook.received, _Hook.status = [], 200
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_is_sent_once_and_retried_after_failure(db, settings, webhook_server,
                                                        django_capture_on_commit_callbacks):
    url = f"http://127.0.0.1:{webhook_server.server_address[1]}/hook"
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_WEBHOOK_URL": url}
    from martech.scoring.tasks import handoffs_notify_sweep, handoffs_notify_woken
    from martech.services.leads import lead_change_stage

    _Hook.status = 500
    lead = LeadFactory(lifecycle_stage=stage("mql"))
    # The failed first try is kept on the handoff for the sweep's retry; the woken run does not retry it.
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="sql", reason="qualified")
    handoff = Handoff.objects.get(lead=lead)
    assert handoff.webhook_sent_at is None and "webhook" in handoff.last_error
    assert (handoff.notified_at, handoff.notify_attempts) == (None, 1)
    assert handoffs_notify_woken() == {"notified": 0, "failed": 0}
    _Hook.status = 200
    assert handoffs_notify_sweep() == {"notified": 1, "failed": 0}
    assert handoffs_notify_sweep() == {"notified": 0, "failed": 0}  # a repeated run sends nothing more
    handoffs_notify_woken()
    handoff.refresh_from_db()
    assert handoff.webhook_sent_at is not None and handoff.notified_at is not None
    assert len(_Hook.received) == 2  # the failed try and the one success
    assert _Hook.received[-1]["lead_id"] == lead.pk and "SQL handoff" in _Hook.received[-1]["text"]


def test_handoff_notifications_stop_after_the_attempts(db, settings, webhook_server,
                                                       django_capture_on_commit_callbacks):
    url = f"http://127.0.0.1:{webhook_server.server_address[1]}/hook"
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_WEBHOOK_URL": url, "HANDOFF_NOTIFY_ATTEMPTS": 2}
    from martech.scoring.tasks import handoffs_notify_sweep
    from martech.services.leads import lead_change_stage

    _Hook.status = 500
    lead = LeadFactory(lifecycle_stage=stage("mql"))
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="sql", reason="qualified")
    assert handoffs_notify_sweep() == {"notified": 0, "failed": 1}
    assert handoffs_notify_sweep() == {"notified": 0, "failed": 0}  # two tries: given up, the error kept
    handoff = Handoff.objects.get(lead=lead)
    assert handoff.notify_attempts == 2 and handoff.notified_at is None and "webhook" in handoff.last_error
    assert len(_Hook.received) == 2


def test_many_handoffs_are_notified_by_one_woken_task_once_each(db, settings, monkeypatch,
                                                                 django_capture_on_commit_callbacks):
    """Handoffs started one after another wake one debounced task, which
    notifies all of them; a second run (the sweep racing it) sends nothing."""
    from martech import taskqueue
    from martech.scoring import tasks
    from martech.services.leads import lead_change_stage

    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "HANDOFF_NOTIFY_EMAILS": ["sales@example.com"]}
    leads = [LeadFactory(lifecycle_stage=stage("mql")) for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=False):  # the handoffs are started below, as the worker would
        transitions = [lead_change_stage(lead=lead, to_stage="sql", reason="qualified") for lead in leads]
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "TASKS_SYNC": False}
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: queued.append(func))
    taskqueue.woken(tasks.HANDOFF_NOTIFY_WAKE_KEY)
    for transition in transitions:
        with django_capture_on_commit_callbacks(execute=True):
            services.handoff_start(transition_id=transition.pk)
    assert queued.count("martech.scoring.tasks.handoffs_notify_woken") == 1
    assert Handoff.objects.filter(notified_at__isnull=True).count() == 3
    assert tasks.handoffs_notify_woken() == {"notified": 3, "failed": 0}
    assert tasks.handoffs_notify_sweep() == {"notified": 0, "failed": 0}
    assert len(mail.outbox) == 3
    assert not Handoff.objects.filter(notified_at__isnull=True).exists()


def test_handoffs_with_nothing_to_send_are_notified_in_one_update(db, monkeypatch, django_capture_on_commit_callbacks,
                                                                  django_assert_num_queries):
    """No team address, no webhook, owners without an address: the batch
    marks them all in one UPDATE (then finds none left), sends nothing."""
    from martech.services.leads import lead_change_stage

    owner = UserFactory(username="rep", email="")
    leads = [LeadFactory(lifecycle_stage=stage("mql"), owner=owner if i else None) for i in range(3)]
    from martech.scoring import tasks

    monkeypatch.setattr(tasks, "handoffs_notify_wake_on_commit", lambda: None)  # the batch runs below
    with django_capture_on_commit_callbacks(execute=True):
        for lead in leads:
            lead_change_stage(lead=lead, to_stage="sql", reason="qualified")
    assert Handoff.objects.filter(notified_at__isnull=True).count() == 3
    with django_assert_num_queries(2):
        assert services.handoffs_notify() == {"notified": 3, "failed": 0}
    assert not Handoff.objects.filter(notified_at__isnull=True).exists() and mail.outbox == []


def test_opportunity_created_and_won(db, django_capture_on_commit_callbacks):
    a = LeadFactory(lifecycle_stage=stage("sql"))
    b = LeadFactory(lifecycle_stage=stage("customer"))
    with django_capture_on_commit_callbacks(execute=True):
        signals.opportunity_changed.send(sender=None, opportunity_id=1, lead_ids=[a.pk, b.pk], kind="created")
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.lifecycle_stage.key, b.lifecycle_stage.key) == ("opportunity", "customer")
    with django_capture_on_commit_callbacks(execute=True):
        signals.opportunity_changed.send(sender=None, opportunity_id=1, lead_ids=[a.pk], kind="won")
    a.refresh_from_db()
    assert a.lifecycle_stage.key == "customer"
    assert StageTransition.objects.filter(lead=a, reason="opportunity won").count() == 1
    signals.opportunity_changed.send(sender=None, opportunity_id=1, lead_ids=[a.pk], kind="lost")
    a.refresh_from_db()
    assert a.lifecycle_stage.key == "customer"


def test_stale_mqls_are_flagged_and_cleared(db, settings):
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "STALE_MQL_DAYS": 30}
    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    quiet = LeadFactory(lifecycle_stage=stage("mql"), latest_touch_at=now - dt.timedelta(days=45))
    active = LeadFactory(lifecycle_stage=stage("mql"), latest_touch_at=now - dt.timedelta(days=2))
    LeadFactory(lifecycle_stage=stage("lead"), latest_touch_at=now - dt.timedelta(days=90))
    assert services.stale_mqls_flag(now=now) == (1, 0)
    assert list(StaleFlag.objects.values_list("lead_id", flat=True)) == [quiet.pk]
    assert active.pk not in StaleFlag.objects.values_list("lead_id", flat=True)
    quiet.latest_touch_at = now
    quiet.save()
    assert services.stale_mqls_flag(now=now) == (0, 1)
    assert not StaleFlag.objects.exists()


def _lifecycle_rules(demo_requested):
    LifecycleRule.objects.create(name="MQL", order=1, condition='score >= 50 and account.industry = "Fintech"',
                                 to_stage=stage("mql"))
    LifecycleRule.objects.create(name="Demo", order=2, event_type=demo_requested, to_stage=stage("sql"))
    LifecycleRule.objects.create(name="Recycle", order=3, condition='country = "FR" and score < 10',
                                 to_stage=stage("lead"), allow_backward=True)


def _population(n):
    from tests.factories import AccountFactory

    fintech, retail = AccountFactory(industry="Fintech"), AccountFactory(industry="Retail")
    leads = []
    for i in range(n):
        leads.append(LeadFactory(total_score=(i * 7) % 100, account=(fintech, retail, None)[i % 3],
                                 country=("FR", "DE")[i % 2],
                                 lifecycle_stage=stage(("lead", "mql", "sql")[(i // 3) % 3])))
    return leads


@pytest.mark.parametrize("n", [services.IN_MEMORY_MAX, services.IN_MEMORY_MAX + 1])
def test_in_memory_and_sql_lifecycle_paths_move_the_same_leads(model, demo_requested, n):
    """Up to IN_MEMORY_MAX leads are read once and the conditions evaluated
    in memory, more are filtered in SQL rule by rule: both move exactly the
    leads the rules say (first matching rule wins, forward only unless allowed)."""
    _lifecycle_rules(demo_requested)
    leads = _population(n)
    with_event = {lead.pk for lead in leads[::4]}
    expected = {}
    for lead in leads:
        order = lead.lifecycle_stage.order
        if lead.total_score >= 50 and lead.account is not None and lead.account.industry == "Fintech" \
                and stage("mql").order > order:
            expected[lead.pk] = "mql"
        elif lead.pk in with_event and stage("sql").order > order:
            expected[lead.pk] = "sql"
        elif lead.country == "FR" and lead.total_score < 10 and lead.lifecycle_stage.key != "lead":
            expected[lead.pk] = "lead"
    moved = services.lifecycle_apply(lead_ids=[lead.pk for lead in leads if lead.pk not in with_event])
    moved += services.lifecycle_apply(lead_ids=sorted(with_event), event_type_ids={demo_requested.pk})
    assert {t.lead_id: t.to_stage.key for t in moved} == expected
    assert len(expected) > 5  # the population exercises every rule


def test_an_event_task_reads_configuration_once(model, demo_requested, django_assert_num_queries):
    """The event task (rescoring and lifecycle rules) with warm caches: one
    configuration-token query for the scoring rules, the lifecycle rules and
    the hooks; one lead read for the lifecycle rules whatever their number."""
    from martech.scoring import tasks

    _lifecycle_rules(demo_requested)
    lead = LeadFactory(country="DE")
    tasks.events_arrived([EventFactory(lead=lead, client_event_id="life-1").pk])  # warms the caches
    event = EventFactory(lead=lead, client_event_id="life-2")
    # event ids, tokens, savepoint, lead (locked), release (the model has
    # no engagement rules: no events read), lead for the lifecycle rules (no
    # rule moves it).
    with django_assert_num_queries(6):
        tasks.events_arrived([event.pk])
    LifecycleRule.objects.create(name="Any", order=0, condition='country = "DE"', to_stage=stage("mql"))
    tasks.events_arrived([EventFactory(lead=lead, client_event_id="life-3").pk])  # the new rule is seen at once
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "mql"
