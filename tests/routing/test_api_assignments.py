"""Issue 17, item 7: the routing REST API lists and filters assignments,
gives a lead's routing history, edits reps' absences, simulates a draft
(distribution and the leads that move); the admin simulation offers the
moves as a formula-safe CSV; an edit wakes the waiting queue in the
background instead of running it in the request."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from routing import services
from routing.models import Assignment, OutOfOffice, Rep
from tests.factories import LeadFactory
from tests.martech.api_support import *  # noqa: F403
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/routing"


@pytest.fixture
def world():
    us, de = TeamFactory(name="US"), TeamFactory(name="DE")
    ann, bob = RepFactory(team=us, name="Ann"), RepFactory(team=us, name="Bob")
    dirk = RepFactory(team=de, name="Dirk")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=us))
    leads = [LeadFactory(country="US", email=f"u{i}@x.example") for i in range(3)] + [
        LeadFactory(country="DE", email="=hyperlink(\"http://evil\")@x.example")]
    for lead in leads:
        services.lead_route(lead_id=lead.pk, trigger="api")
    return {"us": us, "de": de, "ann": ann, "bob": bob, "dirk": dirk, "leads": leads}


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *a, **kw: calls.append(func))
    return calls


def test_list_and_filter_assignments(token_api, world):
    api = token_api("routing:read")
    everything = api.get(f"{BASE}/assignments").json()["results"]
    assert len(everything) == 4 and "explanation" not in everything[0]
    ann = api.get(f"{BASE}/assignments", {"rep": world["ann"].pk}).json()["results"]
    assert {a["rep"] for a in ann} == {world["ann"].pk} and len(ann) == 2
    lead = world["leads"][0]
    assert [a["lead"] for a in api.get(f"{BASE}/assignments", {"lead": lead.pk}).json()["results"]] == [lead.pk]
    assert len(api.get(f"{BASE}/assignments", {"team": world["de"].pk}).json()["results"]) == 0
    assert len(api.get(f"{BASE}/assignments", {"status": "assigned", "lifecycle": "open"}).json()["results"]) == 4
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert api.get(f"{BASE}/assignments", {"created_at_after": future}).json()["results"] == []
    bad = api.get(f"{BASE}/assignments", {"status": "lost", "rep": "x"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] and set(bad.json()["error"]["fields"]) == {"status", "rep"}
    one = api.get(f"{BASE}/assignments/{ann[0]['id']}").json()
    assert one["explanation"]["result"]["rep"] == "Ann"
    assert token_api("leads:read").get(f"{BASE}/assignments").status_code == 403


def test_touch_and_close_through_the_api(token_api, world):
    reader, writer = token_api("routing:read"), token_api("routing:read", "routing:write")
    a = Assignment.objects.filter(lead=world["leads"][0], is_current=True).get()
    assert reader.post(f"{BASE}/assignments/{a.pk}/close", {"reason": "converted"}, format="json").status_code == 403
    touched = writer.post(f"{BASE}/assignments/{a.pk}/touch", {"source": "call"}, format="json")
    assert touched.status_code == 200 and touched.json()["lifecycle"] == "worked"
    assert touched.json()["first_touch_source"].endswith(":call")
    bad = writer.post(f"{BASE}/assignments/{a.pk}/close", {"reason": "reassigned", "why": 1}, format="json")
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == {"reason", "why"}
    closed = writer.post(f"{BASE}/assignments/{a.pk}/close", {"reason": "converted"}, format="json")
    assert closed.status_code == 200 and closed.json()["lifecycle"] == "closed"
    assert closed.json()["close_reason"] == "converted"
    again = writer.post(f"{BASE}/assignments/{a.pk}/close", {"reason": "api"}, format="json")
    assert again.status_code == 400 and "already closed" in str(again.json()["error"]["fields"])


def test_a_leads_routing_history_with_explanations(token_api, world):
    lead = world["leads"][0]
    services.lead_route(lead_id=lead.pk, trigger="api", reroute=True)
    api = token_api("routing:read")
    history = api.get(f"{BASE}/leads/{lead.pk}/history")
    assert history.status_code == 200
    rows = history.json()["results"]
    assert [r["is_current"] for r in rows] == [True, False]
    assert rows[1]["close_reason"] == "reassigned"
    assert all(r["explanation"]["steps"] for r in rows)
    missing = api.get(f"{BASE}/leads/999999/history")
    assert missing.status_code == 404 and missing.json()["error"]["code"]


def test_absences_crud(token_api, world, queued, django_capture_on_commit_callbacks):
    api = token_api("routing:read", "routing:write")
    now = timezone.now()
    body = {"rep": world["ann"].pk, "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=3)).isoformat(),
            "note": "dentist"}
    made = api.post(f"{BASE}/absences", body, format="json")
    assert made.status_code == 201, made.json()
    bad = api.post(f"{BASE}/absences", {**body, "ends_at": (now - timedelta(hours=1)).isoformat()}, format="json")
    assert bad.status_code == 400 and "ends_at" in bad.json()["error"]["fields"]
    OutOfOffice.objects.create(rep=world["bob"], starts_at=now + timedelta(days=1), ends_at=now + timedelta(days=2))
    mine = api.get(f"{BASE}/absences", {"rep": world["ann"].pk}).json()["results"]
    assert [a["note"] for a in mine] == ["dentist"]
    # Ann is away now: the next US lead goes to Bob.
    a, _ = services.lead_route(lead_id=LeadFactory(country="US").pk, trigger="api")
    assert a.rep == world["bob"]
    changed = api.patch(f"{BASE}/absences/{made.json()['id']}", {"note": "doctor"}, format="json")
    assert changed.status_code == 200 and changed.json()["note"] == "doctor"
    assert token_api("routing:read").delete(f"{BASE}/absences/{made.json()['id']}").status_code == 403
    Rep.objects.filter(pk=world["bob"].pk).update(is_active=False)
    waiting, _ = services.lead_route(lead_id=LeadFactory(country="US").pk, trigger="api")
    assert waiting.status == "waiting"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{BASE}/absences/{made.json()['id']}").status_code == 204
    assert queued == ["routing.tasks.assign_waiting"]  # Ann is back: the queue runs in the background
    assert not OutOfOffice.objects.filter(pk=made.json()["id"]).exists()


def test_rep_patch_enqueues_the_waiting_queue_instead_of_running_it(token_api, world, queued,
                                                                    django_capture_on_commit_callbacks):
    api = token_api("routing:read", "routing:write")
    Rep.objects.filter(team=world["us"]).update(is_active=False)
    waiting, _ = services.lead_route(lead_id=LeadFactory(country="US").pk, trigger="api")
    assert waiting.status == "waiting"
    with django_capture_on_commit_callbacks(execute=True):
        resp = api.patch(f"{BASE}/reps/{world['ann'].pk}", {"is_active": True}, format="json")
    assert resp.status_code == 200
    assert queued == ["routing.tasks.assign_waiting"]  # enqueued after commit, once
    waiting.refresh_from_db()
    assert waiting.is_current and waiting.status == "waiting"  # not served inside the request


def test_simulate_a_draft_over_a_date_range(token_api, world):
    draft = RuleSetFactory(fallback_team=world["us"])
    RuleFactory(rule_set=draft, name="Germany", condition='country = "DE"', action="team", team=world["de"])
    reader = token_api("routing:read")  # simulation only reads
    start = (timezone.now() - timedelta(days=1)).isoformat()
    resp = reader.post(f"{BASE}/rule-sets/{draft.pk}/simulate", {"created_after": start}, format="json")
    assert resp.status_code == 200, resp.json()
    body = resp.json()
    assert body["leads"] == 4 and body["draft"]["by_team"]["DE"] == 1
    assert body["moves_total"] >= 1
    de_move = next(m for m in body["moves"] if m["to_team"] == "DE")
    assert (de_move["from_team"], de_move["to_rep"], de_move["to_rule"]) == ("US", "Dirk", "Germany")
    assert de_move["lead_id"] == world["leads"][3].pk
    limited = reader.post(f"{BASE}/rule-sets/{draft.pk}/simulate", {"days": 2, "moves_limit": 0}, format="json").json()
    assert limited["moves"] == [] and limited["moves_total"] == body["moves_total"]
    bad = reader.post(f"{BASE}/rule-sets/{draft.pk}/simulate", {"days": 2, "created_after": start, "x": 1}, format="json")
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) >= {"x"}
    bad = reader.post(f"{BASE}/rule-sets/{draft.pk}/simulate", {"days": 2, "created_after": start}, format="json")
    assert bad.status_code == 400 and "segment" in bad.json()["error"]["fields"]
    assert token_api("leads:read").post(f"{BASE}/rule-sets/{draft.pk}/simulate", {}, format="json").status_code == 403


def test_admin_simulation_lists_the_moves_and_downloads_them_as_safe_csv(client, sales_ops, world):
    draft = RuleSetFactory(fallback_team=world["us"])
    RuleFactory(rule_set=draft, name="Germany", condition='country = "DE"', action="team", team=world["de"])
    client.force_login(sales_ops)
    url = reverse("admin:routing_ruleset_simulate", args=[draft.pk])
    page = client.get(url, {"days": 30}).content.decode()
    assert 'id="simulation-moves"' in page and "<td>Dirk</td>" in page and 'id="simulation-csv"' in page
    resp = client.get(url, {"days": 30, "format": "csv"})
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    assert "attachment" in resp["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.content.decode())))
    evil = next(r for r in rows if r["to_team"] == "DE")
    assert evil["email"].startswith("'=hyperlink") and evil["to_rep"] == "Dirk" and evil["from_team"] == "US"


def test_schema_lists_the_new_endpoints_and_enum_overrides_match(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for path in ("/api/v1/routing/assignments", "/api/v1/routing/assignments/{id}/close",
                 "/api/v1/routing/leads/{id}/history", "/api/v1/routing/absences",
                 "/api/v1/routing/rule-sets/{id}/simulate"):
        assert any(p.rstrip("/") == path for p in paths), path
    overrides = settings.SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]
    assert overrides["AssignmentStatusEnum"] == list(Assignment.Status.choices)
    assert overrides["AssignmentTriggerEnum"] == list(Assignment.Trigger.choices)
