"""The stored per-rule breakdown (hand-computed), the compiled-rules cache
and the incremental path's query count."""
from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.urls import reverse

from martech.scoring import services
from martech.scoring.models import EngagementRule, FitRule, ScoreHistory
from martech.scoring.selectors import score_explanation
from tests.factories import EventFactory, LeadFactory
from tests.martech.api_support import _private_cache, session_api, token_api  # noqa: F401
from tests.scoring.conftest import half_life

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


_view_ids = itertools.count(1)


def _view(lead, url, at):
    n = next(_view_ids)
    return EventFactory(lead=lead, client_event_id=f"bd-{lead.pk}-{n}", occurred_at=at, properties={"url": url})


@pytest.fixture
def setup(model, page_view):
    # Half-life 10 days. Fit: US +30 (matches), VP +20 (does not).
    # Views: 40 points per view; one view now (40), one 10 days ago (20) -> 60.
    half_life(model, 10)
    us = FitRule.objects.create(model=model, name="US", condition='country = "US"', points=30)
    FitRule.objects.create(model=model, name="VP", condition='job_title contains "vp"', points=20)
    views = EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=40)
    lead = LeadFactory(country="US", job_title="Engineer")
    _view(lead, "/old", NOW - dt.timedelta(days=10))
    _view(lead, "/new", NOW)
    return {"lead": lead, "us": us, "views": views}


def test_breakdown_is_stored_with_each_computation(setup):
    lead, us, views = setup["lead"], setup["us"], setup["views"]
    assert services.scores_recompute(lead_ids=[lead.pk], reason="first", now=NOW) == 1
    row = score_explanation(lead.pk)
    assert (row.fit_score, row.engagement_score, row.total_score, row.changed_at) == (30, 60, 90, NOW)
    assert row.breakdown == [
        {"kind": "fit", "rule_id": us.pk, "rule": "US", "points": 30, "events": 0, "last_at": None},
        {"kind": "engagement", "rule_id": views.pk, "rule": "Views", "points": 60.0, "events": 2,
         "last_at": NOW.isoformat()},
    ]
    # The rule is renamed and re-weighted; ten days later the views decay to
    # 40/2 + 40/4 = 30, fit is 25: the new row says so, the old row keeps what
    # was true when it was computed.
    us.name, us.points = "United States", 25
    us.save()
    later = NOW + dt.timedelta(days=10)
    assert services.scores_recompute(lead_ids=[lead.pk], reason="decay", now=later) == 1
    rows = list(ScoreHistory.objects.filter(lead=lead).order_by("changed_at"))
    assert [(r.old_total, r.total_score) for r in rows] == [(0, 90), (90, 55)]
    assert [(e["rule"], e["points"], e["events"]) for e in rows[0].breakdown] == [("US", 30, 0), ("Views", 60.0, 2)]
    assert [(e["rule"], e["points"], e["events"]) for e in rows[1].breakdown] == [
        ("United States", 25, 0), ("Views", 30.0, 2)]


def test_same_total_from_other_rules_is_recorded(setup, model):
    # Fit "US" +30 is swapped for "Software title" +30: the totals stay 90, the
    # reason changed, so a history row records the new breakdown.
    lead, us = setup["lead"], setup["us"]
    services.scores_recompute(lead_ids=[lead.pk], reason="first", now=NOW)
    us.is_active = False
    us.save()
    other = FitRule.objects.create(model=model, name="Engineer", condition='job_title = "engineer"', points=30)
    assert services.scores_recompute(lead_ids=[lead.pk], reason="rules", now=NOW) == 1
    row = score_explanation(lead.pk)
    assert (row.old_total, row.total_score) == (90, 90)
    assert [(e["rule_id"], e["points"]) for e in row.breakdown] == [(other.pk, 30), (setup["views"].pk, 60.0)]
    assert services.scores_recompute(lead_ids=[lead.pk], reason="again", now=NOW) == 0


def test_lead_page_and_api_show_the_stored_breakdown(setup, client, superuser, token_api):
    lead = setup["lead"]
    services.scores_recompute(lead_ids=[lead.pk], reason="first", now=NOW)
    # A rule edited after the computation does not change what is shown
    # until the lead is scored again.
    FitRule.objects.filter(pk=setup["us"].pk).update(name="Renamed later")
    api = token_api("scores:read")
    score = api.get(f"/api/v1/scoring/scores/{lead.pk}").json()
    assert score["computed_at"] == "2026-11-23T12:00:00Z"
    assert [(c["rule"], c["points"], c["events"]) for c in score["contributions"]] == [
        ("US", 30.0, 0), ("Views", 60.0, 2)]
    history = api.get(f"/api/v1/scoring/scores/{lead.pk}/history").json()["results"]
    assert [c["rule"] for c in history[0]["breakdown"]] == ["US", "Views"]
    client.force_login(superuser)
    page = client.get(reverse("admin:martech_lead_change", args=[lead.pk])).content.decode()
    assert "As computed at 2026-11-23 12:00 UTC" in page and "<td>US</td>" in page and "Renamed later" not in page
    never = LeadFactory()
    assert api.get(f"/api/v1/scoring/scores/{never.pk}").json()["computed_at"] is None
    assert "has not been scored yet" in client.get(
        reverse("admin:martech_lead_change", args=[never.pk])).content.decode()


def test_rule_edits_and_deletes_invalidate_the_rules_cache(setup):
    lead, views = setup["lead"], setup["views"]
    services.scores_recompute(lead_ids=[lead.pk], reason="t", now=NOW)
    assert services.active_rules() is services.active_rules()  # cached while nothing changes
    views.points = 4
    views.save()
    services.scores_recompute(lead_ids=[lead.pk], reason="t", now=NOW)
    lead.refresh_from_db()
    assert lead.total_score == 30 + 4 + 2
    views.delete()
    services.scores_recompute(lead_ids=[lead.pk], reason="t", now=NOW)
    lead.refresh_from_db()
    assert lead.total_score == 30


def test_incremental_rescore_queries(setup, django_assert_num_queries):
    # Warm caches: the configuration tokens (one query for the rules, the
    # CRM outbox's mappings and nurture's score workflows), the lead (locked,
    # with the last breakdown), its events, UPDATE, INSERT history, plus the
    # savepoint pair of the service's transaction inside the test's. No query
    # per rule, none for the hooks' configuration.
    lead = setup["lead"]
    services.scores_recompute(lead_ids=[lead.pk], reason="t", now=NOW)
    _view(lead, "/newer", NOW)
    with django_assert_num_queries(7):
        assert services.scores_recompute(lead_ids=[lead.pk], reason="event", now=NOW) == 1
    # Nothing new: no write at all.
    with django_assert_num_queries(5):
        assert services.scores_recompute(lead_ids=[lead.pk], reason="event", now=NOW) == 0


def test_the_narrow_lead_read_evaluates_every_kind_of_path(model, django_assert_num_queries):
    """The one-lead path reads only the columns the fit rules need (.only):
    every kind of field path is still evaluated on real values, with no
    deferred field loaded behind the scenes."""
    from martech.models import LifecycleStage
    from tests.factories import AccountFactory, UserFactory

    rules = [
        ("Country", 'country = "DE"', 1),
        ("Domain", 'email_domain = "acme.example"', 2),
        ("Plan", 'properties.plan = "pro"', 4),
        ("Industry", 'account.industry = "Fintech"', 8),
        ("Account owner", 'account.owner = "ada"', 16),
        ("Owner", 'owner = "bob"', 32),
        ("Stage", 'lifecycle_stage = "mql"', 64),
        ("Recent", "created_at > now - 30 days", 128),
        ("Has account", "account is not empty", 256),
    ]
    for name, condition, points in rules:
        FitRule.objects.create(model=model, name=name, condition=condition, points=points)
    account = AccountFactory(industry="Fintech", owner=UserFactory(username="ada"))
    matches = LeadFactory(email="x@acme.example", country="DE", properties={"plan": "pro"}, account=account,
                          owner=UserFactory(username="bob"), lifecycle_stage=LifecycleStage.objects.get(key="mql"))
    misses = LeadFactory(email="y@other.example", country="FR", properties={"plan": "free"})
    services.scores_recompute(lead_ids=[matches.pk, misses.pk], reason="t")
    matches.refresh_from_db()
    misses.refresh_from_db()
    assert (matches.fit_score, misses.fit_score) == (511, 128)
    # Nothing new: tokens, savepoint, the narrow lead read (with account,
    # its owner, the owner and the stage joined), release. No deferred load.
    with django_assert_num_queries(4):
        assert services.scores_recompute(lead_ids=[matches.pk], reason="t") == 0
