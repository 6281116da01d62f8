"""Routing API: CRUD, route, preview, versions; scopes and role permissions."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from routing.models import Assignment, RuleSet
from routing import services
from tests.factories import LeadFactory, UserFactory
from tests.martech.api_support import *  # noqa: F403
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/routing"


@pytest.fixture
def api(token_api):
    return token_api("routing:read", "routing:write")


def test_crud_reps_teams_territories(api):
    team = api.post(f"{BASE}/teams", {"name": "EMEA", "method": "weighted"}, format="json")
    assert team.status_code == 201, team.json()
    rep = api.post(f"{BASE}/reps", {"name": "Ann", "email": "ann@x.example", "team": team.json()["id"], "weight": 2,
                                     "working_hours": {"mon": [["09:00", "17:00"]]}, "time_zone": "Europe/Berlin"}, format="json")
    assert rep.status_code == 201, rep.json()
    bad = api.post(f"{BASE}/reps", {"name": "Bob", "email": "bob@x.example", "working_hours": {"monday": []},
                                     "time_zone": "Mars/Base"}, format="json")
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) == {"working_hours", "time_zone"}
    terr = api.post(f"{BASE}/territories", {"name": "DACH", "countries": ["de", "AT"], "min_employees": 500,
                                             "max_employees": 10}, format="json")
    assert terr.status_code == 400 and "max_employees" in terr.json()["error"]["fields"]
    terr = api.post(f"{BASE}/territories", {"name": "DACH", "countries": ["de", "AT"]}, format="json")
    assert terr.status_code == 201 and terr.json()["countries"] == ["DE", "AT"]
    assert [r["name"] for r in api.get(f"{BASE}/reps").json()["results"]] == ["Ann"]
    assert api.patch(f"{BASE}/reps/{rep.json()['id']}", {"weight": 5}, format="json").json()["weight"] == 5
    # A team in use by an assignment cannot be deleted: a 400 naming why, not a 500.
    Assignment.objects.create(lead=LeadFactory(), status="waiting", team_id=team.json()["id"], trigger="api")
    gone = api.delete(f"{BASE}/teams/{team.json()['id']}")
    assert gone.status_code == 400 and "deactivate" in gone.json()["error"]["message"]


def test_rule_set_draft_publish_route_preview_rollback(api):
    team = TeamFactory(name="US")
    de = TeamFactory(name="DE")
    RepFactory(team=team, name="Ann")
    dirk = RepFactory(team=de, name="Dirk")
    draft = api.post(f"{BASE}/rule-sets", {"fallback_team": team.pk, "rules": [
        {"name": "Germany", "action": "team", "team": de.pk, "territory": None},
    ]}, format="json")
    assert draft.status_code == 201, draft.json()
    bad = api.post(f"{BASE}/rule-sets", {"rules": [{"name": "x", "action": "rep"}], "colour": 1}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["fields"] == {"colour": ["Unknown field."]}
    bad = api.post(f"{BASE}/rule-sets", {"rules": [{"name": "ok", "action": "nurture"}, {"name": "x", "action": "rep"}]}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["fields"] == {"rules[1].rep": ["Choose the rep this rule assigns to."]}
    assert RuleSet.objects.count() == 1  # the failed draft was rolled back whole
    v1 = api.post(f"{BASE}/rule-sets/{draft.json()['id']}/publish")
    assert v1.status_code == 200 and v1.json()["version"] == 1
    assert api.patch(f"{BASE}/rule-sets/{draft.json()['id']}", {"note": "x"}, format="json").status_code == 400

    lead = LeadFactory()
    preview = api.post(f"{BASE}/preview", {"lead_id": lead.pk}, format="json")
    assert preview.status_code == 200 and preview.json()["result"]["rep"] == "Dirk"
    assert not Assignment.objects.exists()
    routed = api.post(f"{BASE}/route", {"lead_id": lead.pk}, format="json")
    assert routed.status_code == 201 and routed.json()["rep"] == dirk.pk and routed.json()["rule_set_version"] == 1
    assert routed.json()["explanation"]["rule"] == "Germany"
    again = api.post(f"{BASE}/route", {"lead_id": lead.pk}, format="json")
    assert again.status_code == 200 and again.json()["created"] is False
    assert api.post(f"{BASE}/route", {"lead_id": 10**9}, format="json").status_code == 404

    copy = api.post(f"{BASE}/rule-sets/{v1.json()['id']}/copy")
    assert copy.status_code == 201 and copy.json()["status"] == "draft" and len(copy.json()["rules"]) == 1
    api.patch(f"{BASE}/rule-sets/{copy.json()['id']}", {"rules": []}, format="json")
    assert api.post(f"{BASE}/rule-sets/{copy.json()['id']}/publish").json()["version"] == 2
    back = api.post(f"{BASE}/rule-sets/{v1.json()['id']}/rollback")
    assert back.json()["version"] == 3 and [r["name"] for r in back.json()["rules"]] == ["Germany"]


def test_scopes(token_api):
    reader = token_api("routing:read")
    assert reader.get(f"{BASE}/teams").status_code == 200
    assert reader.post(f"{BASE}/teams", {"name": "x"}, format="json").status_code == 403
    assert token_api("leads:read").get(f"{BASE}/reps").status_code == 403


def test_roles_sales_ops_edit_marketing_ops_read(sales_ops, marketing_ops):
    TeamFactory(name="T")
    sops, mops = APIClient(), APIClient()
    sops.force_authenticate(sales_ops)
    mops.force_authenticate(marketing_ops)
    assert sops.post(f"{BASE}/teams", {"name": "New"}, format="json").status_code == 201
    assert mops.get(f"{BASE}/teams").status_code == 200
    assert mops.post(f"{BASE}/teams", {"name": "Nope"}, format="json").status_code == 403
    assert mops.post(f"{BASE}/route", {"lead_id": LeadFactory().pk}, format="json").status_code == 403


@pytest.fixture
def live_team():
    team = TeamFactory(name="Inbound")
    RepFactory(team=team, name="Ivy")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    return team


def test_preview_needs_read_access_only_route_needs_write(token_api, live_team):
    """Preview writes nothing, so the read scope is enough; route assigns,
    so it needs the write scope. A client without routing scopes gets neither."""
    lead = LeadFactory()
    reader = token_api("routing:read")
    preview = reader.post(f"{BASE}/preview", {"lead_id": lead.pk}, format="json")
    assert preview.status_code == 200 and preview.json()["result"]["rep"] == "Ivy"
    denied = reader.post(f"{BASE}/route", {"lead_id": lead.pk}, format="json")
    assert denied.status_code == 403 and "routing:write" in denied.json()["error"]["message"]
    other = token_api("leads:read", "leads:write").post(f"{BASE}/preview", {"lead_id": lead.pk}, format="json")
    assert other.status_code == 403 and "routing:read" in other.json()["error"]["message"]
    # Bad input still gets a clear error naming the field.
    bad = reader.post(f"{BASE}/preview", {"lead_id": "x"}, format="json")
    assert bad.status_code == 400 and "lead_id" in bad.json()["error"]["fields"]
    assert not Assignment.objects.exists()
    writer = token_api("routing:read", "routing:write")
    assert writer.post(f"{BASE}/route", {"lead_id": lead.pk}, format="json").status_code == 201


@pytest.mark.parametrize("role,can_route", [("sales_ops", True), ("marketing_ops", False), ("analyst", False)])
def test_preview_by_role(request, live_team, role, can_route):
    """The roles (docs/admin.md): Sales Ops edit routing; Marketing Ops and Analysts read
    it, and previewing is reading."""
    api = APIClient()
    api.force_authenticate(request.getfixturevalue(role))
    lead = LeadFactory()
    preview = api.post(f"{BASE}/preview", {"lead_id": lead.pk}, format="json")
    assert preview.status_code == 200 and preview.json()["result"]["status"] == "assigned"
    assert not Assignment.objects.exists()
    routed = api.post(f"{BASE}/route", {"lead_id": lead.pk}, format="json")
    assert routed.status_code == (201 if can_route else 403)
    assert Assignment.objects.filter(lead=lead).exists() is can_route


def test_preview_refused_without_a_routing_role(live_team, marketing_ops):
    api = APIClient()
    api.force_authenticate(UserFactory(username="plain-staff"))  # staff, no group
    assert api.post(f"{BASE}/preview", {"lead_id": LeadFactory().pk}, format="json").status_code == 403
    # Read actions are only those listed: publishing a draft is still a write.
    draft = RuleSetFactory(fallback_team=live_team)
    mops = APIClient()
    mops.force_authenticate(marketing_ops)
    assert mops.post(f"{BASE}/rule-sets/{draft.pk}/publish").status_code == 403
