"""Segments (selector, admin, CSV, API), score and history API, the admin
screens and permissions: Sales Ops and Analysts read scoring, only
Marketing Ops edit it."""
from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse

from martech.scoring import services
from martech.scoring.models import EngagementRule, FitRule, LifecycleRule, ScoringModel, Segment
from martech.scoring.selectors import segment_members
from tests.factories import AccountFactory, EventFactory, LeadFactory
from tests.martech.api_support import _private_cache, session_api, token_api  # noqa: F401


@pytest.fixture
def scored(model, page_view):
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=30)
    EngagementRule.objects.create(model=model, name="Views", event_type=page_view, points=5)
    us = LeadFactory(country="US", account=AccountFactory(employee_count=900))
    ca = LeadFactory(country="CA")
    EventFactory(lead=us, client_event_id="e1", occurred_at=dt.datetime.now(dt.UTC))
    services.scores_recompute(lead_ids=[us.pk, ca.pk], reason="test")
    segment = services.segment_save(name="Big US", condition='country = "US" and account.employee_count > 500')
    return {"us": us, "ca": ca, "segment": segment}


def test_segment_save_stores_parsed_form_and_refuses_bad_text(scored):
    seg = scored["segment"]
    assert seg.condition_json["tree"]["and"][0]["field"] == "country"
    assert list(segment_members(seg)) == [scored["us"]]
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        services.segment_save(name="Bad", condition="country >")
    assert info.value.message_dict["condition"] == ["column 10: expected a value, found the end of the text"]


def test_api_segments_members_score_and_history(scored, token_api):
    api = token_api("segments:read", "scores:read")
    seg, us = scored["segment"], scored["us"]
    listing = api.get("/api/v1/scoring/segments").json()
    assert [r["name"] for r in listing["results"]] == ["Big US"]
    detail = api.get(f"/api/v1/scoring/segments/{seg.pk}").json()
    assert detail["member_count"] == 1 and detail["fields_read"] == ["account.employee_count", "country"]
    members = api.get(f"/api/v1/scoring/segments/{seg.pk}/members").json()
    assert [m["id"] for m in members["results"]] == [us.pk]
    score = api.get(f"/api/v1/scoring/scores/{us.pk}").json()
    assert (score["fit_score"], score["engagement_score"], score["total_score"]) == (30, 5, 35)
    assert sorted((c["rule"], c["points"]) for c in score["contributions"]) == [("US", 30.0), ("Views", 5.0)]
    history = api.get(f"/api/v1/scoring/scores/{us.pk}/history").json()
    assert [(h["old_total"], h["total_score"]) for h in history["results"]] == [(0, 35)]
    assert api.get("/api/v1/scoring/scores/999999").status_code == 404


def test_api_scopes_are_enforced(scored, token_api):
    api = token_api("leads:read")
    response = api.get("/api/v1/scoring/segments")
    assert response.status_code == 403
    assert "segments:read" in response.json()["error"]["message"]
    assert api.get(f"/api/v1/scoring/scores/{scored['us'].pk}").status_code == 403


def test_sales_ops_reads_but_cannot_edit_scoring(client, sales_ops, scored):
    client.force_login(sales_ops)
    model = ScoringModel.objects.get()
    assert client.get(reverse("admin:scoring_scoringmodel_change", args=[model.pk])).status_code == 200
    assert client.get(reverse("admin:scoring_scoringmodel_add")).status_code == 403
    response = client.post(reverse("admin:scoring_scoringmodel_change", args=[model.pk]), {"name": "hijack"})
    assert response.status_code == 403
    model.refresh_from_db()
    assert model.name == "Test"
    assert client.get(reverse("admin:scoring_segment_add")).status_code == 403


def test_marketing_ops_edits_segments_with_column_errors(client, marketing_ops, scored):
    client.force_login(marketing_ops)
    response = client.post(reverse("admin:scoring_segment_add"), {"name": "Bad", "condition": "score >= 'x'"})
    assert response.status_code == 200
    assert "column 10: total_score needs an integer, not text" in response.content.decode()
    response = client.post(reverse("admin:scoring_segment_add"), {"name": "Good", "condition": "score >= 10"})
    assert response.status_code == 302
    seg = Segment.objects.get(name="Good")
    assert seg.condition_json["tree"]["field"] == "total_score"


def test_admin_pages_preview_and_csv(client, superuser, scored):
    client.force_login(superuser)
    seg = scored["segment"]
    LifecycleRule.objects.create(name="MQL", condition="score >= 75", to_stage_id=3)
    for name in ["scoringmodel", "segment", "lifecyclerule", "scorehistory", "handoff", "staleflag"]:
        assert client.get(reverse(f"admin:scoring_{name}_changelist")).status_code == 200, name
    page = client.get(reverse("admin:scoring_segment_change", args=[seg.pk])).content.decode()
    preview = reverse("admin:scoring_condition_preview")
    assert preview in page and "_preview" in page  # the live "matches N leads" script
    assert client.get(preview, {"condition": 'country = "US"'}).json() == {"count": 1}
    bad = client.get(preview, {"condition": "country ="})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("column 10:")
    response = client.post(reverse("admin:scoring_segment_changelist"),
                           {"action": "export_members", "_selected_action": [seg.pk]})
    body = b"".join(response.streaming_content).decode()
    lines = body.strip().splitlines()
    assert lines[0].startswith("id,email") and len(lines) == 2 and lines[1].startswith(f"{scored['us'].pk},")
    # Each rule shows when it last changed.
    model_page = client.get(reverse("admin:scoring_scoringmodel_change",
                                    args=[FitRule.objects.get(name="US").model_id])).content.decode()
    assert model_page.count("Updated at") == 2  # the fit and the engagement rules' column
    lead_page = client.get(reverse("admin:martech_lead_change", args=[scored["us"].pk])).content.decode()
    assert "Why this score" in lead_page and "Views" in lead_page


def test_sales_task_mark_done_action(client, marketing_ops, db):
    from martech.models import SalesTask
    from martech.services.tasks import task_create

    lead = LeadFactory()
    task, _ = task_create(key="t1", lead=lead, subject="Call", source="test")
    client.force_login(marketing_ops)
    client.post(reverse("admin:martech_salestask_changelist"), {"action": "mark_done", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.status == SalesTask.Status.DONE
