"""Routing pages in words: skip reasons, methods and escalations by their
labels, and working hours edited per weekday rather than as JSON."""
from __future__ import annotations

import json
from datetime import datetime
from datetime import timezone as dt_tz

import pytest
from django.urls import reverse

from routing import labels, services
from routing.admin.widgets import WorkingHoursWidget
from routing.models import Assignment, Escalation, Rep, Team
from tests.factories import LeadFactory
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db

NIGHT_SHIFT = {"mon": [["09:00", "12:00"], ["13:00", "17:00"]], "fri": [["22:00", "06:00"]]}


def test_explanation_names_skip_reasons_and_methods(client, sales_ops):
    team = TeamFactory(name="Inbound", method=Team.Method.LEAST_LOADED)
    RepFactory(team=team, name="Owl", working_hours={"mon": [["22:00", "23:00"]]})
    RepFactory(team=team, name="Lark")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    monday_noon = datetime(2026, 3, 2, 12, 0, tzinfo=dt_tz.utc)
    assignment, _ = services.lead_route(lead_id=lead.pk, trigger="admin", now=monday_noon)
    assert assignment.rep.name == "Lark"
    client.force_login(sales_ops)
    for url in (reverse("admin:martech_lead_change", args=[lead.pk]),
                reverse("admin:routing_assignment_change", args=[assignment.pk])):
        html = client.get(url).content.decode()
        why = html.split('class="routing-explanation"', 1)[1].split("</div>", 1)[0]
        assert "Owl: skipped (outside working hours)" in why
        assert "Least loaded" in why
        assert "outside_hours" not in why and "least_loaded" not in why
    changelist = client.get(reverse("admin:routing_assignment_changelist")).content.decode()
    assert "Least loaded" in changelist


def test_escalation_detail_in_words(client, sales_ops):
    team = TeamFactory()
    rep = RepFactory(team=team)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    assignment, _ = services.lead_route(lead_id=LeadFactory().pk, trigger="admin")
    Escalation.objects.create(assignment=assignment, level=Escalation.Level.NOTIFY_MANAGER, detail={"manager": None})
    Escalation.objects.create(assignment=assignment, level=Escalation.Level.REASSIGN,
                              detail={"new_assignment": 7, "rep": None, "status": "waiting"})
    client.force_login(sales_ops)
    html = client.get(reverse("admin:routing_assignment_change", args=[assignment.pk])).content.decode()
    assert "Manager: none (no manager set: nobody was notified)" in html
    assert "New rep: nobody eligible; Status: Waiting for an eligible rep" in html
    assert "{&quot;manager&quot;: null}" not in html and "{'manager': None}" not in html
    assert rep.name


def test_skip_reason_labels_cover_the_engine():
    from routing import engine

    codes = {v for k, v in vars(engine).items() if k.isupper() and isinstance(v, str) and k != "WEEKDAYS"}
    assert codes <= set(labels.SKIP_REASONS)
    assert labels.skip_label("outside_hours") == "outside working hours"
    assert labels.method_label("fallback") == "fallback" and labels.method_label("") == "—"


def test_working_hours_widget_round_trip():
    widget = WorkingHoursWidget()
    html = widget.render("working_hours", json.dumps(NIGHT_SHIFT))
    for name, value in [("working_hours_mon_0_from", "09:00"), ("working_hours_mon_1_to", "17:00"),
                        ("working_hours_fri_0_from", "22:00"), ("working_hours_fri_0_to", "06:00"),
                        ("working_hours_mon_2_from", ""), ("working_hours_tue_1_to", "")]:
        assert f'name="{name}" value="{value}"' in html
    # pairs: mon 2 set + 1 empty, fri 1 set + 1 empty, the other five days 2 empty each
    assert html.count('type="time"') == 2 * (3 + 2 + 5 * 2)
    # What the inputs post comes back as the same JSON.
    posted = {}
    for day, pairs in NIGHT_SHIFT.items():
        for n, (start, end) in enumerate(pairs):
            posted[f"working_hours_{day}_{n}_from"], posted[f"working_hours_{day}_{n}_to"] = start, end
    posted.update({"working_hours_tue_0_from": "", "working_hours_tue_0_to": "", "working_hours_mon_0_from": "09:00"})
    assert json.loads(widget.value_from_datadict(posted, {}, "working_hours")) == NIGHT_SHIFT
    # Every day empty is always on; a post of the JSON itself is taken as is.
    assert widget.value_from_datadict({"working_hours_mon_0_from": ""}, {}, "working_hours") == "{}"
    assert widget.value_from_datadict({"working_hours": '{"sat": []}'}, {}, "working_hours") == '{"sat": []}'


def _rep_post(rep: Rep, **hours) -> dict:
    data = {"name": rep.name, "email": rep.email, "user": "", "team": rep.team_id, "is_active": "on",
            "time_zone": "Europe/Berlin", "holidays": "[]", "max_open_leads": "", "max_per_day": "", "weight": "1",
            "manager": "", "backup": "", "hubspot_owner_id": "", "salesforce_user_id": "",
            "absences-TOTAL_FORMS": "0", "absences-INITIAL_FORMS": "0", "absences-MIN_NUM_FORMS": "0",
            "absences-MAX_NUM_FORMS": "1000"}
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
        data[f"working_hours_{day}_0_from"] = data[f"working_hours_{day}_0_to"] = ""
    data.update(hours)
    return data


def test_sales_ops_sets_hours_per_weekday(client, sales_ops):
    rep = RepFactory(name="Lena")
    client.force_login(sales_ops)
    url = reverse("admin:routing_rep_change", args=[rep.pk])
    page = client.get(url).content.decode()
    assert 'class="working-hours"' in page and "Monday" in page
    response = client.post(url, _rep_post(rep, working_hours_mon_0_from="09:00", working_hours_mon_0_to="17:30",
                                          working_hours_fri_0_from="22:00", working_hours_fri_0_to="06:00"))
    assert response.status_code == 302, response.content.decode()[:3000]
    rep.refresh_from_db()
    assert rep.working_hours == {"mon": [["09:00", "17:30"]], "fri": [["22:00", "06:00"]]}
    page = client.get(url).content.decode()
    assert 'name="working_hours_mon_0_to" value="17:30"' in page


def test_half_filled_hours_are_refused_naming_the_day(client, sales_ops):
    rep = RepFactory(name="Tom", working_hours={"tue": [["08:00", "16:00"]]})
    client.force_login(sales_ops)
    response = client.post(reverse("admin:routing_rep_change", args=[rep.pk]),
                           _rep_post(rep, working_hours_wed_0_from="09:00"))
    assert response.status_code == 200
    assert "wed: [&#x27;09:00&#x27;, &#x27;&#x27;] is not a" in response.content.decode()
    rep.refresh_from_db()
    assert rep.working_hours == {"tue": [["08:00", "16:00"]]}
    assert not Assignment.objects.exists()
