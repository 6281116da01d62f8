"""Hand-computed scores: fit rules, caps, distinct counting, decay, history,
the score_changed signal, idempotent recomputation."""
from __future__ import annotations

import datetime as dt
import itertools

from django.core.management import call_command

from martech import signals
from martech.models import Lead
from martech.scoring.models import EngagementRule, FitRule, ScoreHistory
from martech.scoring.services import score_breakdown, scores_recompute
from tests.factories import AccountFactory, EventFactory, LeadFactory
from tests.scoring.conftest import half_life

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


_view_ids = itertools.count(1)


def _view(lead, url, at):
    n = next(_view_ids)
    return EventFactory(lead=lead, client_event_id=f"pv-{lead.pk}-{n}", occurred_at=at,
                        properties={"url": url})


def _scores(lead):
    lead.refresh_from_db()
    return lead.fit_score, lead.engagement_score, lead.total_score


def test_fit_rules_add_points_of_matching_conditions(model):
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=20)
    FitRule.objects.create(model=model, name="Big", condition="account.employee_count >= 200", points=15)
    FitRule.objects.create(model=model, name="Gmail", condition='email_domain = "gmail.com"', points=-10)
    FitRule.objects.create(model=model, name="Off", condition="score >= 0", points=99, is_active=False)
    a = LeadFactory(job_title="VP Sales", account=AccountFactory(employee_count=500))
    b = LeadFactory(email="x@gmail.com", job_title="Engineer", account=None)
    scores_recompute(lead_ids=[a.pk, b.pk], reason="test", now=NOW)
    assert _scores(a) == (35, 0, 35)
    assert _scores(b) == (-10, 0, -10)


def test_cap_per_period_limits_points(model, page_view):
    # 5 points per view, at most 12 per day: day 1 has 4 views -> 5+5+2 = 12;
    # day 2 has 1 view -> 5. Total 17.
    EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=5, cap_points=12,
                                  cap_period="day")
    lead = LeadFactory()
    day1 = NOW - dt.timedelta(days=1)
    for i in range(4):
        _view(lead, "/a", day1 + dt.timedelta(minutes=i))
    _view(lead, "/a", NOW - dt.timedelta(hours=1))
    scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW)
    assert _scores(lead) == (0, 17, 17)


def test_distinct_counts_each_page_once(model, page_view):
    # Reloading one blog post does not inflate: 3 distinct urls x 3 points = 9;
    # an event without the url property does not count.
    EngagementRule.objects.create(model=model, name="Pages", event_type=page_view, points=3,
                                  distinct_property="url")
    lead = LeadFactory()
    for url in ["/blog/1", "/blog/1", "/blog/1", "/blog/2", "/pricing", "/blog/2"]:
        _view(lead, url, NOW - dt.timedelta(minutes=5))
    EventFactory(lead=lead, client_event_id="no-url", occurred_at=NOW, properties={})
    scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW)
    assert _scores(lead) == (0, 9, 9)


def test_property_condition_selects_events(model, page_view):
    EngagementRule.objects.create(model=model, name="Pricing", event_type=page_view, points=10,
                                  condition='properties.url contains "/pricing"')
    lead = LeadFactory()
    _view(lead, "/PRICING/enterprise", NOW)
    _view(lead, "/blog", NOW)
    scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW)
    assert _scores(lead) == (0, 10, 10)


def test_decay_halves_points_every_half_life(model, page_view):
    # half-life 10 days: 40 points 10 days old -> 20; 40 points 20 days old -> 10;
    # 40 points now -> 40. Total 70.
    half_life(model, 10)
    EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=40)
    lead = LeadFactory()
    for age in (0, 10, 20):
        _view(lead, f"/p{age}", NOW - dt.timedelta(days=age))
    scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW)
    assert _scores(lead) == (0, 70, 70)
    # Ten days later everything halves again: 20 + 10 + 5 = 35.
    scores_recompute(lead_ids=[lead.pk], reason="decay", now=NOW + dt.timedelta(days=10))
    assert _scores(lead) == (0, 35, 35)


def test_cap_then_decay_with_distinct(model, page_view):
    # distinct urls, 10 points, cap 15 per week, half-life 7 days.
    # Week A (14 days ago): /a, /b, /a -> /a 10, /b 5 (cap), each at 1/4 -> 3.75
    # Now: /c 10, /a again ignored (already counted) -> 10. Total 13.75 -> 14.
    half_life(model, 7)
    EngagementRule.objects.create(model=model, name="Pages", event_type=page_view, points=10, cap_points=15,
                                  cap_period="week", distinct_property="url")
    lead = LeadFactory()
    old = NOW - dt.timedelta(days=14)
    for i, url in enumerate(["/a", "/b", "/a"]):
        _view(lead, url, old + dt.timedelta(minutes=i))
    _view(lead, "/c", NOW)
    _view(lead, "/a", NOW)
    scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW)
    assert _scores(lead) == (0, 14, 14)
    parts = score_breakdown([lead.pk], now=NOW)[lead.pk]
    assert [(p.rule, round(p.points, 2), p.events) for p in parts] == [("Pages", 13.75, 3)]


def test_history_signal_and_idempotence(model, page_view, django_capture_on_commit_callbacks):
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    lead = LeadFactory(country="US")
    received = []

    def on_score(sender, **kw):
        received.append(kw)

    signals.score_changed.connect(on_score)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert scores_recompute(lead_ids=[lead.pk], reason="test", now=NOW) == 1
        with django_capture_on_commit_callbacks(execute=True):
            assert scores_recompute(lead_ids=[lead.pk], reason="again", now=NOW) == 0
    finally:
        signals.score_changed.disconnect(on_score)
    assert [(r["lead_id"], r["old_total"], r["new_total"]) for r in received] == [(lead.pk, 0, 10)]
    history = list(ScoreHistory.objects.filter(lead=lead).values_list("old_total", "total_score", "reason"))
    assert history == [(0, 10, "test")]


def test_recompute_scores_command_covers_every_lead(model, capsys):
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=7)
    leads = [LeadFactory(country="US") for _ in range(5)] + [LeadFactory(country="CA")]
    call_command("recompute_scores", batch_size=2, no_progress=True)
    assert sorted(Lead.objects.filter(pk__in=[l.pk for l in leads]).values_list("total_score", flat=True)) == [
        0, 7, 7, 7, 7, 7]
    assert "5 lead(s) changed score." in capsys.readouterr().out


def test_no_active_model_scores_nothing(db):
    lead = LeadFactory()
    assert scores_recompute(lead_ids=[lead.pk], reason="test") == 0


def test_event_and_field_change_rescore_through_tasks(model, page_view, django_capture_on_commit_callbacks):
    from martech.services.leads import lead_upsert

    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=20)
    EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=3)
    lead = LeadFactory(job_title="Engineer")
    with django_capture_on_commit_callbacks(execute=True):
        lead_upsert(data={"email": lead.email, "job_title": "VP Marketing"}, source="test", overwrite=True)
    assert _scores(lead) == (20, 0, 20)
    event = _view(lead, "/x", dt.datetime.now(dt.UTC))
    with django_capture_on_commit_callbacks(execute=True):
        signals.events_ingested.send(sender=type(event), event_ids=[event.pk])
    assert _scores(lead) == (20, 3, 23)


def test_incremental_rescore_query_count(model, page_view, django_assert_max_num_queries):
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=5)
    EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=1, cap_points=5)
    lead = LeadFactory()
    _view(lead, "/a", NOW)
    # cold rules cache: fingerprint + model + rules (2) + lead + events + update + history + hook + savepoints
    with django_assert_max_num_queries(12):
        scores_recompute(lead_ids=[lead.pk], reason="event", now=NOW)


def test_in_memory_and_database_fit_paths_agree(model, monkeypatch):
    from martech.scoring import services

    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=20)
    FitRule.objects.create(model=model, name="Big", condition="not account.employee_count < 200", points=15)
    FitRule.objects.create(model=model, name="Owned", condition='owner is empty or lifecycle_stage = "mql"', points=3)
    leads = [LeadFactory(job_title="VP", account=AccountFactory(employee_count=500)),
             LeadFactory(job_title="Dev", account=AccountFactory(employee_count=None)),
             LeadFactory(job_title="vp ops", account=None)]
    ids = [l.pk for l in leads]
    in_memory = {k: sorted(c.rule for c in v) for k, v in score_breakdown(ids, now=NOW).items()}
    monkeypatch.setattr(services, "IN_MEMORY_MAX", 0)
    in_db = {k: sorted(c.rule for c in v) for k, v in score_breakdown(ids, now=NOW).items()}
    assert in_memory == in_db == {ids[0]: ["Big", "Owned", "VP"], ids[1]: ["Big", "Owned"], ids[2]: ["Big", "Owned", "VP"]}
