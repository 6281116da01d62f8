"""Speed to lead: the figures on hand-made timelines (per day, per source,
per both), the queries they take, the API with a token and its errors, and
the admin page for a non-superuser role."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone as dt_tz

import pytest
from django.urls import reverse

from attribution.selectors import speed_to_lead
from martech.crm.models import Connection, PushState
from martech.models import ApiClient, Event, EventType
from nurture.models import Enrollment, Message, StepExecution, Workflow, WorkflowVersion
from routing.models import Assignment
from tests.factories import EventFactory, LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields

pytestmark = pytest.mark.django_db

MON, TUE = date(2026, 3, 2), date(2026, 3, 3)
NOW = datetime(2026, 3, 3, 16, 0, tzinfo=dt_tz.utc)
S, M, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=dt_tz.utc)


class Timelines:
    """Leads with a form and whatever followed it, by hand."""

    def __init__(self):
        self.form_type = EventType.objects.get(name="form_submitted")
        self.hubspot = Connection.objects.create(provider="hubspot", name="HubSpot")
        self.salesforce = Connection.objects.create(provider="salesforce", name="Salesforce")
        self.workflow = Workflow.objects.create(name="Welcome", definition={})
        self.version = WorkflowVersion.objects.create(workflow=self.workflow, number=1, definition={})

    def form(self, lead, when: datetime, channel: str) -> None:
        EventFactory(lead=lead, event_type=self.form_type, kind=Event.Kind.FORM, occurred_at=when, channel=channel,
                     properties={"form": "demo-request"})

    def lead(self, when: datetime, channel: str, *, owner=None, sla=None, touch=None, hubspot=None,
             salesforce=None, email=None):
        lead = LeadFactory()
        self.form(lead, when, channel)
        if owner is not None:
            Assignment.objects.create(lead=lead, status=Assignment.Status.ASSIGNED, trigger="new_lead",
                                      assigned_at=when + owner, sla_due_at=when + sla if sla else None,
                                      first_touch_at=when + touch if touch else None)
        for conn, after in ((self.hubspot, hubspot), (self.salesforce, salesforce)):
            if after is not None:
                PushState.objects.create(connection=conn, object="contact", local_id=lead.pk, remote_id=f"r{lead.pk}",
                                         owner_pushed_at=when + after)
        if email is not None:
            self.message(lead, sent_at=when + email)
        return lead

    def message(self, lead, *, sent_at, status=Message.Status.SENT, channel=Message.Channel.EMAIL):
        enr = Enrollment.objects.create(workflow=self.workflow, version=self.version, lead=lead,
                                        status=Enrollment.Status.COMPLETED)
        ex = StepExecution.objects.create(enrollment=enr, workflow=self.workflow, step="e1", step_type="send_email",
                                          key=f"n:{enr.pk}:e1:{channel}:{status}", outcome="sent")
        Message.objects.create(key=ex.key, execution=ex, enrollment=enr, lead=lead, workflow=self.workflow,
                               step="e1", channel=channel, to=lead.email or "", status=status,
                               sent_at=sent_at if status == Message.Status.SENT else None)


@pytest.fixture
def timelines():
    t = Timelines()
    # Monday, paid search: three leads.
    t.a = t.lead(at(MON, 10), "paid_search", owner=2 * S, sla=4 * H, touch=1 * H, hubspot=30 * S,
                 salesforce=60 * S, email=10 * S)
    t.b = t.lead(at(MON, 11), "paid_search", owner=4 * S, sla=4 * H, touch=5 * H, hubspot=40 * S, email=20 * S)
    t.c = t.lead(at(MON, 12), "paid_search", owner=1 * S, sla=30 * H)  # untouched, due Tuesday 18:00: open
    # Monday, direct: untouched past its deadline (breached); its only email was skipped (not sent).
    t.d = t.lead(at(MON, 13), "direct", owner=10 * S, sla=4 * H)
    t.message(t.d, sent_at=None, status=Message.Status.SKIPPED)
    # Tuesday, direct: no assignment at all (no SLA), an SMS is no email.
    t.e = t.lead(at(TUE, 9), "direct")
    t.message(t.e, sent_at=at(TUE, 9) + M, channel=Message.Channel.SMS)
    # Not counted: a lead whose first form was before the range (its second form is in it) ...
    t.old = LeadFactory()
    t.form(t.old, at(MON, 9) - timedelta(days=7), "email")
    t.form(t.old, at(MON, 9), "email")
    # ... a second form of a counted lead, and an event that is no form.
    t.form(t.a, at(TUE, 10), "email")
    EventFactory(lead=LeadFactory(), occurred_at=at(MON, 14))
    # Stages before the form are not its stages: an owner pushed a day before.
    PushState.objects.filter(local_id=t.b.pk, connection=t.hubspot).update(owner_pushed_at=at(MON, 11) - timedelta(days=1))
    return t


def _by(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


def test_figures_per_day(timelines):
    report = speed_to_lead(start=MON, end=TUE, group_by="day", now=NOW)
    assert [s["key"] for s in report["stages"]] == ["owner", "crm_hubspot", "crm_salesforce", "first_email",
                                                    "rep_touch"]
    days = _by(report["results"], "day")
    mon, tue = days[(MON.isoformat(),)], days[(TUE.isoformat(),)]
    assert (mon["leads"], tue["leads"]) == (4, 1)
    # Owner: 1, 2, 4, 10 s -> median 3, p95 = 4 + (10 - 4) * 0.85.
    assert mon["stages"]["owner"] == {"reached": 4, "p50_seconds": 3.0, "p95_seconds": 9.1}
    # HubSpot: only A's 30 s (B's owner went a day before its form).
    assert mon["stages"]["crm_hubspot"] == {"reached": 1, "p50_seconds": 30.0, "p95_seconds": 30.0}
    assert mon["stages"]["crm_salesforce"] == {"reached": 1, "p50_seconds": 60.0, "p95_seconds": 60.0}
    assert mon["stages"]["first_email"] == {"reached": 2, "p50_seconds": 15.0, "p95_seconds": 19.5}
    assert mon["stages"]["rep_touch"] == {"reached": 2, "p50_seconds": 3 * 3600.0, "p95_seconds": 4.8 * 3600}
    # A within, B late, D past due untouched; C's deadline is still ahead.
    assert mon["sla"] == {"within": 1, "breached": 2, "open": 1, "no_sla": 0, "share_within": 0.3333}
    assert tue["sla"] == {"within": 0, "breached": 0, "open": 0, "no_sla": 1, "share_within": None}
    assert all(tue["stages"][k]["reached"] == 0 and tue["stages"][k]["p50_seconds"] is None for k in tue["stages"])
    assert report["total"]["leads"] == 5 and report["total"]["stages"]["owner"]["reached"] == 4
    assert "day" not in report["total"]


def test_figures_per_source_and_per_day_and_source(timelines):
    sources = _by(speed_to_lead(start=MON, end=TUE, group_by="source", now=NOW)["results"], "source")
    assert {k: (r["leads"], r["source_label"]) for k, r in sources.items()} == {
        ("paid_search",): (3, "Paid search"), ("direct",): (2, "Direct")}
    assert sources[("paid_search",)]["stages"]["owner"]["p50_seconds"] == 2.0
    assert sources[("direct",)]["sla"]["share_within"] == 0.0
    both = _by(speed_to_lead(start=MON, end=TUE, group_by="day_source", now=NOW)["results"], "day", "source")
    assert {k: r["leads"] for k, r in both.items()} == {
        (MON.isoformat(), "paid_search"): 3, (MON.isoformat(), "direct"): 1, (TUE.isoformat(), "direct"): 1}
    only = speed_to_lead(start=MON, end=TUE, group_by="day", source="direct", now=NOW)
    assert only["total"]["leads"] == 2


def test_range_is_of_whole_utc_days(timelines):
    assert speed_to_lead(start=TUE, end=TUE, now=NOW)["total"]["leads"] == 1
    assert speed_to_lead(start=MON, end=MON, now=NOW)["total"]["leads"] == 4


def test_a_crm_without_a_connection_is_no_stage(timelines):
    Connection.objects.filter(provider="salesforce").delete()
    keys = [s["key"] for s in speed_to_lead(start=MON, end=TUE, now=NOW)["stages"]]
    assert "crm_salesforce" not in keys and "crm_hubspot" in keys


def test_two_queries_whatever_the_number_of_leads(timelines, django_assert_num_queries):
    with django_assert_num_queries(2):
        speed_to_lead(start=MON, end=TUE, group_by="day_source", now=NOW)
    for n in range(5):
        timelines.lead(at(MON, 15) + n * M, "referral", owner=S, sla=H, touch=M, hubspot=S, email=S)
    with django_assert_num_queries(2):
        assert speed_to_lead(start=MON, end=TUE, group_by="day_source", now=NOW)["total"]["leads"] == 10


# --- API ----------------------------------------------------------------------------------

URL = "/api/v1/speed-to-lead"


def test_api_with_a_token(timelines, token_api):
    api = token_api(ApiClient.Scope.ATTRIBUTION_READ.value)
    res = api.get(URL, {"start": MON.isoformat(), "end": TUE.isoformat(), "group_by": "source"})
    assert res.status_code == 200, res.json()
    body = res.json()
    assert body["group_by"] == "source" and body["total"]["leads"] == 5
    assert {r["source"] for r in body["results"]} == {"paid_search", "direct"}


def test_api_needs_its_scope(timelines, token_api):
    res = token_api(ApiClient.Scope.LEADS_READ.value).get(URL)
    assert res.status_code == 403
    assert res.json()["error"]["code"] == "permission_denied"
    assert "attribution:read" in res.json()["error"]["message"]


@pytest.mark.parametrize("params,field", [
    ({"start": "2026-03-05", "end": "2026-03-01"}, "end"),
    ({"start": "2024-01-01", "end": "2026-03-01"}, "start"),
    ({"start": "yesterday"}, "start"),
    ({"group_by": "week"}, "group_by"),
    ({"source": "carrier_pigeon"}, "source"),
])
def test_api_errors_name_the_field(token_api, params, field):
    res = token_api(ApiClient.Scope.ATTRIBUTION_READ.value).get(URL, params)
    assert res.status_code == 400
    assert res.json()["error"]["code"] == "invalid"
    assert error_fields(res) == {field}


def test_api_defaults_to_the_last_thirty_days(token_api):
    body = token_api(ApiClient.Scope.ATTRIBUTION_READ.value).get(URL).json()
    assert (date.fromisoformat(body["end"]) - date.fromisoformat(body["start"])).days == 29


def test_api_for_a_session_follows_the_role(timelines, session_api, analyst, django_user_model):
    assert session_api(analyst).get(URL, {"start": MON.isoformat(), "end": TUE.isoformat()}).status_code == 200
    nobody = django_user_model.objects.create_user(username="staff-no-role", password="x", is_staff=True)
    assert session_api(nobody).get(URL).status_code == 403


def test_api_is_in_the_schema(tmp_path):
    import yaml
    from django.core.management import call_command

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    op = yaml.safe_load(out.read_text())["paths"]["/api/v1/speed-to-lead/"]["get"]
    assert op["operationId"] == "speed_to_lead"
    assert {p["name"] for p in op["parameters"]} >= {"start", "end", "group_by", "source"}
    assert {"200", "400", "401", "403", "429"} <= set(op["responses"])
    assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ApiError")


# --- admin page ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["sales_ops", "marketing_ops", "analyst"])
def test_page_for_a_role_and_on_the_dashboards_navigation(client, request, role):
    user = request.getfixturevalue(role)
    client.force_login(user)
    url = reverse("admin:speed_to_lead")
    res = client.get(url)
    assert res.status_code == 200
    html = res.content.decode()
    assert 'id="chart-day"' in html and 'id="chart-day-table"' in html and 'id="chart-source"' in html
    assert "attribution/js/speed_to_lead.js" in html and "attribution/vendor/chart.umd.js" in html
    assert "https://" not in html.split("<body")[0]  # no CDN: every script is ours
    index = client.get(reverse("admin:index")).content.decode()
    assert f'href="{url}"' in index and "Speed to lead" in index


def test_page_refused_without_the_routing_view_permission(client, django_user_model):
    user = django_user_model.objects.create_user(username="staff-no-role", password="x", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("admin:speed_to_lead")).status_code == 403
    assert "Speed to lead" not in client.get(reverse("admin:index")).content.decode()
