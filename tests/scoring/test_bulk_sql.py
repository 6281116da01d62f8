"""The bulk recompute gives exactly the scores (and breakdowns) of the
in-memory path, on randomized data: on PostgreSQL the bulk path is the
set-based SQL of martech.scoring.bulk, on SQLite it is the in-memory path in
batches (both a batch evaluated in memory and one through to_q)."""
from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.db import connection

from martech.models import EventType, Lead
from martech.scoring import services
from martech.scoring.models import EngagementRule, FitRule, ScoreHistory
from tests.factories import AccountFactory, EventFactory, LeadFactory

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=dt.UTC)
URLS = ["/a", "/b", "/pricing", "/Pricing/x", "", None, 1, 1.0, "1", True]


def _build(seed: int, model):
    rnd = random.Random(seed)
    pv = EventType.objects.get(name="page_view")
    demo = EventType.objects.get(name="demo_requested")
    model.half_life_days = rnd.choice([None, Decimal("7.5"), Decimal("30")])
    model.save()
    FitRule.objects.create(model=model, name="US/DE", condition='country in ("us", "DE")', points=10)
    FitRule.objects.create(model=model, name="Manager", condition='job_title contains "manager"', points=15)
    FitRule.objects.create(model=model, name="Big", condition="account.employee_count >= 200", points=7)
    FitRule.objects.create(model=model, name="No account", condition="account is empty", points=-5)
    rules = [
        dict(event_type=pv, points=3, cap_points=10, cap_period="day", distinct_property="url"),
        dict(event_type=pv, points=5, cap_points=12, cap_period="week"),
        dict(event_type=pv, points=4, cap_points=9, cap_period="month", condition='properties.url contains "pricing"'),
        dict(event_type=pv, points=2, cap_points=5, cap_period="ever", distinct_property="url"),
        dict(event_type=pv, points=-1),
        dict(event_type=demo, points=25, distinct_property="url"),
        dict(event_type=pv, points=-2, cap_points=4),
    ]
    for i, r in enumerate(rules):
        EngagementRule.objects.create(model=model, name=f"E{i}", **r)
    accounts = [AccountFactory(employee_count=c) for c in (10, 200, 5000, None)]
    leads = []
    for _ in range(40):
        leads.append(LeadFactory(country=rnd.choice(["US", "de", "FR", "", "Us"]),
                                 job_title=rnd.choice(["Marketing Manager", "Dev", "", "MANAGER of x"]),
                                 account=rnd.choice([*accounts, None])))
    # Times on whole minutes over 45 days, many ties (the order within a tie
    # is by event id in both paths).
    for n in range(500):
        lead = rnd.choice(leads)
        at = NOW - dt.timedelta(minutes=rnd.randrange(0, 45 * 24 * 60, rnd.choice([1, 60, 1440])))
        url = rnd.choice(URLS)
        EventFactory(lead=lead, client_event_id=f"r{seed}-{n}", event_type=rnd.choice([pv, pv, pv, demo]),
                     occurred_at=at, properties={} if url is None else {"url": url})
    return [lead.pk for lead in leads]


def _state(ids):
    scores = dict((pk, (f, e, t)) for pk, f, e, t in Lead.objects.filter(pk__in=ids).values_list(
        "pk", "fit_score", "engagement_score", "total_score"))
    latest = {}
    for row in ScoreHistory.objects.filter(lead_id__in=ids).order_by("changed_at", "id"):
        latest[row.lead_id] = [
            (e["kind"], e["rule_id"], e["rule"], e["events"],
             dt.datetime.fromisoformat(e["last_at"]) if e["last_at"] else None, e["points"])
            for e in row.breakdown]
    return scores, latest


def _same_breakdown(a, b):
    assert a.keys() == b.keys()
    for lead_id in a:
        assert [x[:5] for x in a[lead_id]] == [x[:5] for x in b[lead_id]], lead_id
        for x, y in zip(a[lead_id], b[lead_id]):
            assert abs(float(x[5]) - float(y[5])) <= 0.01, (lead_id, x, y)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_path_equals_in_memory_path(model, seed):
    ids = _build(seed, model)
    for lead_id in ids:  # the one-lead path events and tasks use
        services.scores_recompute(lead_ids=[lead_id], reason="one", now=NOW)
    expected_scores, expected_breakdown = _state(ids)
    assert any(t for _, _, t in expected_scores.values()), "the data set gives some scores"
    assert any(e for _, e, _ in expected_scores.values())

    ScoreHistory.objects.all().delete()
    Lead.objects.update(fit_score=0, engagement_score=0, total_score=0)
    # Small chunks so leads fall in several ranges; on SQLite both batch sizes
    # of the in-memory path (evaluate for <= 50 leads, to_q above).
    for batch_size in (7, 100):
        ScoreHistory.objects.all().delete()
        Lead.objects.update(fit_score=0, engagement_score=0, total_score=0)
        changed = services.scores_recompute_all(batch_size=batch_size, reason="bulk", now=NOW)
        scores, breakdown = _state(ids)
        assert scores == expected_scores
        _same_breakdown(breakdown, expected_breakdown)
        assert changed == len(expected_breakdown)
        # A second run finds nothing to change (idempotent).
        assert services.scores_recompute_all(batch_size=batch_size, reason="again", now=NOW) == 0


def test_set_based_path_is_postgresql_only_and_in_memory_forced_works(model):
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    lead = LeadFactory(country="US")
    if connection.vendor == "postgresql":
        assert services.scores_recompute_all(set_based=False, now=NOW) == 1
        Lead.objects.update(total_score=0, fit_score=0)
        assert services.scores_recompute_all(set_based=True, now=NOW) == 1
    else:
        with pytest.raises(ValueError, match="needs PostgreSQL"):
            services.scores_recompute_all(set_based=True, now=NOW)
        assert services.scores_recompute_all(now=NOW) == 1
    lead.refresh_from_db()
    assert lead.total_score == 10


def test_bulk_announces_score_moves_once_per_chunk(model, django_capture_on_commit_callbacks):
    from martech import signals

    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    leads = [LeadFactory(country=c) for c in ("US", "US", "CA", "US")]
    calls, single = [], []

    def on_scores(sender, changes, **kw):
        calls.append(sorted(changes))

    def on_score(sender, **kw):
        single.append(kw)

    signals.scores_changed.connect(on_scores)
    signals.score_changed.connect(on_score)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.scores_recompute_all(batch_size=1000, reason="bulk", now=NOW)
    finally:
        signals.scores_changed.disconnect(on_scores)
        signals.score_changed.disconnect(on_score)
    assert calls == [[(leads[0].pk, 0, 10), (leads[1].pk, 0, 10), (leads[3].pk, 0, 10)]]
    assert single == []


def test_nurture_score_trigger_enrolls_from_a_bulk_recompute(model, django_capture_on_commit_callbacks):
    # Nurture's receiver of the batch signal: a lead crossing the workflow's
    # threshold in a bulk recompute is enrolled, one below it is not.
    from nurture.models import Enrollment, Workflow
    from nurture.services import workflow_publish

    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    wf = Workflow.objects.create(name="Hot leads", definition={"start": "end", "steps": {"end": {"type": "end"}}},
                                 trigger="score", trigger_config={"threshold": 10})
    workflow_publish(workflow=wf)
    us, ca = LeadFactory(country="US"), LeadFactory(country="CA")
    with django_capture_on_commit_callbacks(execute=True):
        services.scores_recompute_all(reason="bulk", now=NOW)
    assert list(Enrollment.objects.values_list("lead_id", flat=True)) == [us.pk]
    assert ca.pk not in Enrollment.objects.values_list("lead_id", flat=True)


def test_in_memory_writes_split_long_id_lists(model, monkeypatch):
    # Many leads with the same new score are written a few ids per UPDATE
    # (SQLite's parameter limit); every one of them is written.
    monkeypatch.setattr(services, "IDS_PER_STATEMENT", 2)
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    ids = [LeadFactory(country="US").pk for _ in range(5)]
    assert services.scores_recompute(lead_ids=ids, reason="t", now=NOW) == 5
    assert list(Lead.objects.filter(pk__in=ids).values_list("total_score", flat=True)) == [10] * 5


def test_a_big_bulk_run_refreshes_planner_statistics(model, monkeypatch):
    # After a run that changed many scores the lead table is ANALYZEd, so
    # segment counts are planned with the new score distribution. (3 leads:
    # the estimate it leaves behind stays below the admin paginator's cap.)
    monkeypatch.setattr(services, "ANALYZE_AFTER_CHANGED", 3)
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    for _ in range(3):
        LeadFactory(country="US")
    if connection.vendor != "postgresql":
        assert services.scores_recompute_all(now=NOW) == 3  # the in-memory path; no ANALYZE there
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [Lead._meta.db_table])
        assert cursor.fetchone()[0] != 3  # a fresh test database: never analyzed with these rows
        assert services.scores_recompute_all(now=NOW) == 3
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [Lead._meta.db_table])
        assert cursor.fetchone()[0] == 3
