"""The lead 360 page (martech.selectors.lead_360 and its sections from
routing, scoring, nurture, attribution and the CRM sync) and the lead list
that fits a laptop screen, with its owner/rep, score and segment filters."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from attribution.models import AttributionCredit, Opportunity, OpportunityContactRole, OpportunityStage, Pipeline, Touchpoint
from martech.crm.models import Connection, OutboxItem, PushState
from martech.models import ConsentRecord, Lead, LifecycleStage, SalesTask
from martech.scoring.models import ScoreHistory
from martech.scoring.services import segment_save
from martech.selectors import lead_360
from martech.services.leads import lead_change_stage
from nurture.models import Enrollment, Message, StepExecution, Workflow, WorkflowVersion
from routing.models import Assignment, Escalation
from tests.factories import EventFactory, LeadFactory, UserFactory
from tests.routing.factories import RepFactory, TeamFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:martech_lead_changelist")
NOW = timezone.now()

DEFINITION = {"start": "e1", "steps": {
    "e1": {"type": "send_email", "subject": "Your ebook", "body": "Here it is", "next": "w1"},
    "w1": {"type": "wait", "days": 5, "next": "e2"},
    "e2": {"type": "send_email", "subject": "Three ideas", "body": "More", "next": "end"},
    "end": {"type": "end"}}}


def _page(lead_id: int) -> str:
    return reverse("admin:martech_lead_360", args=[lead_id])


def _workflow() -> tuple[Workflow, WorkflowVersion]:
    wf = Workflow.objects.create(name="Ebook drip", status="active", definition=DEFINITION)
    version = WorkflowVersion.objects.create(workflow=wf, number=1, definition=DEFINITION)
    return wf, version


def _history(lead: Lead, n: int, *, rep, team, wf, version, opportunity_stage) -> None:
    """``n`` of everything the page lists: events, assignments with an
    escalation, enrollments with a message each, tasks, consent records,
    score computations, opportunities with credit."""
    for i in range(n):
        event = EventFactory(lead=lead, occurred_at=NOW - dt.timedelta(hours=i + 1))
        current = i == 0
        a = Assignment.objects.create(lead=lead, status="assigned", is_current=current, rep=rep, team=team,
                                      rule_name="Inbound", method="round_robin", trigger="new_lead",
                                      reason="new lead", created_at=NOW - dt.timedelta(hours=i),
                                      explanation={"rule": "Inbound", "method": "round_robin",
                                                   "steps": [{"step": "team", "team": team.name, "candidates": [
                                                       {"rep": "Bob", "skipped": "outside_hours"},
                                                       {"rep": rep.name, "skipped": None}]}]})
        Escalation.objects.create(assignment=a, level=1, detail={"manager": None})
        other_wf = wf if i == 0 else Workflow.objects.create(name=f"Journey {lead.pk}-{i}", definition=DEFINITION)
        other_version = version if i == 0 else WorkflowVersion.objects.create(workflow=other_wf, number=1,
                                                                              definition=DEFINITION)
        e = Enrollment.objects.create(workflow=other_wf, version=other_version, lead=lead, step="w1", seq=1,
                                      due_at=NOW + dt.timedelta(days=5))
        ex = StepExecution.objects.create(enrollment=e, workflow=other_wf, step="e1", step_type="send_email",
                                          key=f"k{lead.pk}-{i}", outcome="sent")
        Message.objects.create(key=f"m{lead.pk}-{i}", execution=ex, enrollment=e, lead=lead, workflow=other_wf,
                               step="e1", channel="email", to=lead.email, subject=f"Your ebook {i}", status="sent",
                               sent_at=NOW, delivered_at=NOW, opened_at=NOW, clicked_at=NOW if i == 0 else None)
        SalesTask.objects.create(key=f"t{lead.pk}-{i}", lead=lead, subject=f"Call back {i}")
        ConsentRecord.objects.create(lead=lead, channel="email", status="granted", source="form:ebook",
                                     evidence={"ip": "203.0.113.9", "text": "Send me news"},
                                     recorded_at=NOW - dt.timedelta(hours=i))
        ScoreHistory.objects.create(lead=lead, fit_score=10, engagement_score=i, total_score=10 + i, old_total=0,
                                    reason="event", breakdown=[{"kind": "fit", "rule": "Title is a manager",
                                                                "points": 10}])
        opp = Opportunity.objects.create(name=f"Deal {i}", amount=Decimal("1000"), pipeline=opportunity_stage.pipeline,
                                         stage=opportunity_stage)
        OpportunityContactRole.objects.create(opportunity=opp, lead=lead, role="Decision maker", is_primary=True)
        touch = Touchpoint.objects.create(lead=lead, event=event, occurred_at=event.occurred_at, channel="email")
        for model, credit in (("first_touch", "1000.00"), ("linear", "250.00")):
            AttributionCredit.objects.create(
                model=model, opportunity=opp, touchpoint=touch, channel="email", weight=1.0, credit=Decimal(credit),
                currency="USD", is_won=False, is_closed=False, opportunity_created_at=NOW)


@pytest.fixture
def setting():
    team = TeamFactory(name="Inbound")
    rep = RepFactory(team=team, name="Ann Rep", user=None)
    wf, version = _workflow()
    stage = OpportunityStage.objects.filter(pipeline=Pipeline.objects.get(is_default=True)).order_by("order").first()
    return {"rep": rep, "team": team, "wf": wf, "version": version, "opportunity_stage": stage}


@pytest.fixture
def grace(setting):
    lead = LeadFactory(email="grace@acme.example", first_name="Grace", last_name="Hopper", company_name="Acme",
                       hubspot_id="501", salesforce_lead_id="00Q000000000001AAA")
    lead_change_stage(lead=lead, to_stage="mql", reason="visited pricing twice", source="scoring")
    _history(lead, 2, **setting)
    return lead


# --- the selector -------------------------------------------------------------------


def test_the_360_gathers_every_section_for_marketing_ops(grace, marketing_ops):
    data = lead_360(lead_id=grace.pk, user=marketing_ops)
    keys = [s.key for s in data.sections]
    assert keys == ["routing", "score", "stages", "consent", "journeys", "messages", "tasks", "opportunities", "crm",
                    "timeline"]
    sections = {s.key: s.context for s in data.sections}
    # The owner field is empty (the rep has no user account); the routed rep is named.
    assert ("Owner", "—") in data.facts and ("Routed rep", "Ann Rep (Inbound)") in data.facts
    assert sections["routing"]["current"].rep.name == "Ann Rep"
    assert len(sections["routing"]["history"]) == 2
    assert sections["journeys"]["rows"][0]["step"] == "Wait 5 days"
    assert {r["m"].subject for r in sections["messages"]["rows"]} == {"Your ebook 0", "Your ebook 1"}
    email = next(r for r in sections["consent"]["rows"] if r["channel"] == "Email")
    assert email["status"] == "Granted" and ("IP address", "203.0.113.9") in email["evidence"]
    assert [r["to"] for r in sections["stages"]["rows"]][0] == "Marketing qualified lead (MQL)"
    opportunity = sections["opportunities"]["rows"][0]
    assert opportunity["role"].role == "Decision maker"
    assert opportunity["credit"] == [("First touch", Decimal("1000.00"), "USD"), ("Linear", Decimal("250.00"), "USD")]


def test_the_360_query_count_does_not_grow_with_the_history(setting, marketing_ops):
    small, big = LeadFactory(), LeadFactory()
    _history(small, 2, **setting)
    _history(big, 9, **setting)
    Connection.objects.create(provider="hubspot", name="HubSpot")
    counts = []
    for lead in (small, big):
        marketing_ops = type(marketing_ops).objects.get(pk=marketing_ops.pk)  # a fresh permission cache
        with CaptureQueriesContext(connection) as ctx:
            data = lead_360(lead_id=lead.pk, user=marketing_ops)
        counts.append(len(ctx.captured_queries))
        assert len({r["m"].pk for r in next(s for s in data.sections if s.key == "messages").context["rows"]}) \
            == Message.objects.filter(lead=lead).count()
    assert counts[0] == counts[1], counts
    assert counts[1] <= 22, counts


def test_sections_follow_the_users_view_permissions(grace, sales_ops, analyst):
    # Sales Ops may not view nurture: no journeys or messages, and their queries never run.
    keys = [s.key for s in lead_360(lead_id=grace.pk, user=sales_ops).sections]
    assert "routing" in keys and "opportunities" in keys
    assert "journeys" not in keys and "messages" not in keys
    assert "journeys" in [s.key for s in lead_360(lead_id=grace.pk, user=analyst).sections]
    nobody = UserFactory(username="viewer")
    nobody.user_permissions.add(*_perms("martech.view_lead"))
    nobody = type(nobody).objects.get(pk=nobody.pk)
    data = lead_360(lead_id=grace.pk, user=nobody)
    assert [s.key for s in data.sections] == ["crm"]  # the lead's own CRM ids only
    assert not data.sections[0].context["show_sync"]
    assert all(label != "Routed rep" for label, _ in data.facts)


def _perms(*names):
    from django.contrib.auth.models import Permission

    out = []
    for name in names:
        app, codename = name.split(".")
        out.append(Permission.objects.get(content_type__app_label=app, codename=codename))
    return out


def test_crm_section_links_records_when_a_record_url_is_set(grace, marketing_ops, settings):
    hub = Connection.objects.create(provider="hubspot", name="HubSpot")
    PushState.objects.create(connection=hub, object="contact", local_id=grace.pk, remote_id="501", pushed_at=NOW)
    OutboxItem.objects.create(connection=hub, object="contact", local_id=grace.pk, attempts=2, last_error="HTTP 502")
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_RECORD_URL": "https://app.hubspot.com/contacts/42/record/0-1/{id}",
                            "SALESFORCE_RECORD_URL": "https://acme.lightning.force.com/lightning/r/{object}/{id}/view"}
    crm = next(s for s in lead_360(lead_id=grace.pk, user=marketing_ops).sections if s.key == "crm").context
    urls = {r["what"] + r["provider"]: r["url"] for r in crm["records"]}
    assert urls["ContactHubSpot"] == "https://app.hubspot.com/contacts/42/record/0-1/501"
    assert urls["LeadSalesforce"] == "https://acme.lightning.force.com/lightning/r/Lead/00Q000000000001AAA/view"
    assert urls["ContactSalesforce"] == ""  # no such record
    (sync,) = crm["sync"]
    assert sync["remote_id"] == "501" and sync["item"].attempts == 2


def test_no_record_url_configured_shows_the_ids_only(grace, marketing_ops):
    crm = next(s for s in lead_360(lead_id=grace.pk, user=marketing_ops).sections if s.key == "crm").context
    assert [r["url"] for r in crm["records"]] == ["", "", ""]
    assert [r["id"] for r in crm["records"]][:2] == ["501", "00Q000000000001AAA"]


# --- the page ---------------------------------------------------------------------


def test_marketing_ops_reads_the_360_page(client, grace, marketing_ops):
    client.force_login(marketing_ops)
    response = client.get(_page(grace.pk))
    assert response.status_code == 200
    html = response.content.decode()
    for title in ("Owner and routing", "Score and why", "Stage history", "Consent per channel", "Journeys", "Messages",
                  "Sales tasks", "Opportunities and credit", "CRM records", "Timeline"):
        assert f"<h2>{title}</h2>" in html, title
    # Routing in words: the skip reason's label, not its code.
    assert "skipped (outside working hours)" in html and "outside_hours" not in html
    assert "none (no manager set: nobody was notified)" in html
    assert "this rep has no user account here" in html
    assert "Wait 5 days" in html and "Ebook drip" in html
    assert "Your ebook 0" in html and "Call back 1" in html and "Decision maker (primary)" in html
    assert "Send me news" in html and "visited pricing twice" in html and "Title is a manager" in html
    assert "Page viewed" in html  # the timeline's event type by its catalog label
    # The full lists it links to are this lead's.
    decisions = f'{reverse("admin:routing_assignment_changelist")}?lead__id__exact={grace.pk}'
    assert decisions in html
    listed = client.get(decisions)
    assert listed.status_code == 200 and {a.lead_id for a in listed.context["cl"].result_list} == {grace.pk}
    assert len(listed.context["cl"].result_list) == 2
    # Linked both ways with the change page.
    assert reverse("admin:martech_lead_change", args=[grace.pk]) in html
    change = client.get(reverse("admin:martech_lead_change", args=[grace.pk])).content.decode()
    assert f'href="{_page(grace.pk)}"' in change


def test_sales_ops_page_has_no_nurture_sections(client, grace, sales_ops):
    client.force_login(sales_ops)
    html = client.get(_page(grace.pk)).content.decode()
    assert "<h2>Owner and routing</h2>" in html and "<h2>Opportunities and credit</h2>" in html
    assert "<h2>Journeys</h2>" not in html and "<h2>Messages</h2>" not in html
    assert "Your ebook 0" not in html
    assert "Lead details" in html  # may not edit: the link back says so


def test_a_user_who_may_not_view_leads_gets_403(client, grace):
    client.force_login(UserFactory(username="nobody"))
    assert client.get(_page(grace.pk)).status_code == 403


def test_an_unknown_lead_goes_back_to_the_list_with_a_message(client, marketing_ops):
    client.force_login(marketing_ops)
    for bad in ("999999", "abc"):
        response = client.get(f"/admin/martech/lead/{bad}/360/")
        assert response.status_code == 302, bad
        assert any("doesn’t exist" in str(m) for m in get_messages(response.wsgi_request))


def test_page_query_count_does_not_grow_with_the_history(client, setting, marketing_ops):
    small, big = LeadFactory(), LeadFactory()
    _history(small, 1, **setting)
    _history(big, 8, **setting)
    client.force_login(marketing_ops)
    counts = []
    for lead in (small, big):
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(_page(lead.pk)).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


# --- the list -----------------------------------------------------------------------


def test_list_shows_the_routed_rep_when_the_rep_has_no_user(client, grace, marketing_ops):
    owned = LeadFactory(email="owned@acme.example", owner=UserFactory(username="kim", first_name="Kim", last_name="Lee"))
    client.force_login(marketing_ops)
    response = client.get(CHANGELIST)
    rows = {lead.pk: lead for lead in response.context["cl"].result_list}
    admin_ = response.context["cl"].model_admin
    assert admin_.owner_or_rep(rows[grace.pk]) == "Ann Rep"
    assert admin_.owner_or_rep(rows[owned.pk]) == "Kim Lee"
    html = response.content.decode()
    assert f'href="{_page(grace.pk)}"' in html
    assert [c for c in ("lead_cell", "stage", "score", "owner_or_rep", "country", "created_on")
            if f"column-{c}" not in html] == []


def test_list_query_count_does_not_grow_with_rows(client, setting, marketing_ops):
    client.force_login(marketing_ops)
    LeadFactory()
    with CaptureQueriesContext(connection) as ctx:
        client.get(CHANGELIST)
    few = len(ctx.captured_queries)
    for _ in range(6):
        lead = LeadFactory()
        Assignment.objects.create(lead=lead, status="assigned", rep=setting["rep"], team=setting["team"],
                                  trigger="new_lead")
    with CaptureQueriesContext(connection) as ctx:
        client.get(CHANGELIST)
    assert len(ctx.captured_queries) == few


def _shown(client, **params) -> set[str]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200, params
    return {lead.email for lead in response.context["cl"].result_list}


def test_filter_by_owner_or_rep(client, setting, marketing_ops):
    rep, team = setting["rep"], setting["team"]
    user = UserFactory(username="bo")
    rep_with_user = RepFactory(team=team, name="Bo Rep", user=user)
    routed = LeadFactory(email="routed@x.example")
    Assignment.objects.create(lead=routed, status="assigned", rep=rep, team=team, trigger="new_lead")
    was_routed = LeadFactory(email="before@x.example")  # an older decision, not the current one
    Assignment.objects.create(lead=was_routed, status="assigned", rep=rep, team=team, trigger="new_lead",
                              is_current=False)
    owned = LeadFactory(email="owned@x.example", owner=user)  # owner set by hand, no assignment
    waiting = LeadFactory(email="waiting@x.example")
    Assignment.objects.create(lead=waiting, status="waiting", team=team, trigger="new_lead")
    client.force_login(marketing_ops)
    assert _shown(client, rep=rep.pk) == {"routed@x.example"}
    assert _shown(client, rep=rep_with_user.pk) == {"owned@x.example"}
    assert _shown(client, rep="none") == {"before@x.example", "waiting@x.example"}
    page = client.get(CHANGELIST).content.decode()
    assert "By owner / rep" in page and "Ann Rep" in page and "No owner or rep" in page
    bad = client.get(CHANGELIST, {"rep": "999999"}, follow=True)
    assert any("no rep '999999'" in str(m) for m in bad.context["messages"])
    assert owned and was_routed


def test_filter_by_score_range(client, marketing_ops):
    for score in (10, 30, 60, 85):
        LeadFactory(email=f"s{score}@x.example", total_score=score)
    client.force_login(marketing_ops)
    assert _shown(client, score="50-79") == {"s60@x.example"}
    assert _shown(client, score="80-") == {"s85@x.example"}
    assert _shown(client, score="-24") == {"s10@x.example"}
    assert _shown(client, score="25-100") == {"s30@x.example", "s60@x.example", "s85@x.example"}
    bad = client.get(CHANGELIST, {"score": "high"}, follow=True)
    shown = [str(m) for m in bad.context["messages"]]
    assert any("Score filter 'high'" in m and "min-max" in m for m in shown), shown
    reversed_ = client.get(CHANGELIST, {"score": "80-50"}, follow=True)
    assert any("above the maximum" in str(m) for m in reversed_.context["messages"])


def test_filter_by_segment_and_stage(client, marketing_ops):
    LeadFactory(email="de@x.example", country="DE")
    LeadFactory(email="us@x.example", country="US")
    segment = segment_save(name="Germany", condition='country = "DE"')
    client.force_login(marketing_ops)
    assert _shown(client, segment=segment.pk) == {"de@x.example"}
    mql = LifecycleStage.objects.get(key="mql")
    assert _shown(client, segment=segment.pk, lifecycle_stage__id__exact=mql.pk) == set()
    Lead.objects.filter(email="de@x.example").update(lifecycle_stage=mql)
    assert _shown(client, segment=segment.pk, lifecycle_stage__id__exact=mql.pk) == {"de@x.example"}
    page = client.get(CHANGELIST).content.decode()
    assert "By segment" in page and "By score" in page
    bad = client.get(CHANGELIST, {"segment": "999999"}, follow=True)
    assert any("no segment '999999'" in str(m) for m in bad.context["messages"])
