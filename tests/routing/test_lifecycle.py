"""Issue 17, item 6: assignments have a lifecycle (open, worked, closed) and
caps count open ones; SLA reassignment never goes back to an earlier rep;
escalation always has somebody to tell; leads are routed again after their
first score when a rule reads it; publishing refuses an empty fallback team."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_tz

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.urls import reverse

from martech import hooks
from martech.services.leads import lead_change_stage, lead_merge, lead_set_owner
from routing import services
from routing.models import Assignment, Escalation, Rep, RuleSet, Team
from tests.factories import LeadFactory, UserFactory
from tests.routing.factories import RepFactory, RuleFactory, RuleSetFactory, SlaPolicyFactory, TeamFactory

pytestmark = pytest.mark.django_db
Lifecycle = Assignment.Lifecycle
MON_10 = datetime(2026, 3, 2, 10, tzinfo=dt_tz.utc)


def _route(lead, **kw):
    kw.setdefault("trigger", "api")
    return services.lead_route(lead_id=lead.pk, **kw)[0]


@pytest.fixture
def capped():
    """One rep with room for one open lead, in a capacity team."""
    team = TeamFactory(name="Inbound", method=Team.Method.CAPACITY)
    rep = RepFactory(team=team, name="Ann", max_open_leads=1)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    return rep


def test_a_converted_lead_frees_the_cap(capped, django_capture_on_commit_callbacks):
    first = LeadFactory()
    a = _route(first)
    assert a.rep == capped and a.lifecycle == Lifecycle.OPEN
    assert _route(LeadFactory()).status == Assignment.Status.WAITING  # at capacity
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=first, to_stage="customer", reason="won")
    a.refresh_from_db()
    assert (a.lifecycle, a.close_reason, a.is_current) == (Lifecycle.CLOSED, "converted", True)
    assert a.closed_at is not None
    assert _route(LeadFactory()).rep == capped  # a closed assignment no longer counts


def test_disqualified_and_repeated_close(capped, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    a = _route(lead)
    with django_capture_on_commit_callbacks(execute=True):
        lead_change_stage(lead=lead, to_stage="other", reason="junk")
    a.refresh_from_db()
    assert a.close_reason == "disqualified"
    assert services.assignment_close(lead_id=lead.pk, reason="converted") is None  # already closed: unchanged
    a.refresh_from_db()
    assert a.close_reason == "disqualified"
    with pytest.raises(ValidationError) as info:
        services.assignment_close(lead_id=lead.pk, reason="bored")
    assert "reason" in info.value.message_dict


def test_a_closed_waiting_lead_leaves_the_queue(capped):
    _route(LeadFactory())
    lead = LeadFactory()
    waiting = _route(lead)
    assert waiting.status == Assignment.Status.WAITING
    services.assignment_close(lead_id=lead.pk, reason="disqualified")
    waiting.refresh_from_db()
    assert not waiting.is_current and waiting.lifecycle == Lifecycle.CLOSED
    assert services.waiting_assign() == 0


def test_first_touch_makes_it_worked_and_it_still_counts(capped):
    lead = LeadFactory()
    a = _route(lead)
    services.first_touch_record(lead_id=lead.pk, source="task:done")
    a.refresh_from_db()
    assert a.lifecycle == Lifecycle.WORKED
    assert _route(LeadFactory()).status == Assignment.Status.WAITING


def test_reassignment_closes_the_previous_one():
    team = TeamFactory()
    RepFactory(team=team)
    RepFactory(team=team)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    a = _route(lead)
    b = _route(lead, reroute=True)
    a.refresh_from_db()
    assert (a.is_current, a.lifecycle, a.close_reason) == (False, Lifecycle.CLOSED, "reassigned")
    assert b.lifecycle == Lifecycle.OPEN and b.rep != a.rep


def test_crm_owner_change_closes_the_assignment(capped):
    capped.user = UserFactory(username="ann")
    capped.save()
    lead = LeadFactory()
    a = _route(lead)
    lead.refresh_from_db()
    assert lead.owner == capped.user
    lead_set_owner(lead=lead, owner=UserFactory(username="crm-person").pk, reason="pulled", source="crm:hubspot")
    a.refresh_from_db()
    assert (a.lifecycle, a.close_reason) == (Lifecycle.CLOSED, "crm_owner_changed")
    # An owner change made by routing itself, or to the same rep, closes nothing.
    other = LeadFactory()
    services.assignment_close(lead_id=lead.pk, reason="converted")
    b = _route(other)
    hooks.leads_changed(ids=[other.pk], fields=["owner"], source="crm:hubspot")
    b.refresh_from_db()
    assert b.lifecycle == Lifecycle.OPEN


def test_merged_and_deleted_leads_stop_counting(capped):
    capped.max_open_leads = 2
    capped.save()
    primary, duplicate = LeadFactory(), LeadFactory()
    _route(primary)
    _route(duplicate)
    lead_merge(primary=primary, duplicate=duplicate)
    assert Assignment.objects.filter(rep=capped, is_current=True).count() == 1
    third = LeadFactory()
    assert _route(third).rep == capped
    third.delete()
    assert _route(LeadFactory()).rep == capped


# --- SLA: no loop, always somebody to tell ---------------------------------------


def _sla_team(**team_kw):
    policy = SlaPolicyFactory(first_touch_hours=1, notify_manager_after_hours=1, reassign_after_hours=2)
    return TeamFactory(sla_policy=policy, **team_kw)


def test_sla_reassign_never_returns_to_an_earlier_rep(django_capture_on_commit_callbacks):
    team = _sla_team()
    a_rep, b_rep = RepFactory(team=team, name="A"), RepFactory(team=team, name="B")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead = LeadFactory()
    first = _route(lead, now=MON_10)
    second = _route(lead, reroute=True, now=MON_10)  # B now; A had it before
    assert {first.rep, second.rep} == {a_rep, b_rep}
    with django_capture_on_commit_callbacks(execute=True):
        for hours in (1, 2, 3):
            services.sla_escalate(now=MON_10 + timedelta(hours=hours))
    current = Assignment.objects.get(lead=lead, is_current=True)
    assert current.trigger == Assignment.Trigger.ESCALATION
    assert current.status == Assignment.Status.WAITING and current.rep is None  # nobody new: waits, no loop
    step = Escalation.objects.get(assignment=second, level=3)
    assert step.detail["status"] == "waiting"


@pytest.mark.parametrize("path", ["contact", "admins", "nobody"])
def test_escalation_without_a_manager(path, django_capture_on_commit_callbacks):
    contact = UserFactory(username="lead-of-team", email="teamlead@sales.example")
    team = _sla_team(escalation_contact=contact if path == "contact" else None)
    RepFactory(team=team, name="NoBoss")
    if path == "admins":
        UserFactory(username="sops1", email="sops@sales.example", groups=["Sales Ops"])
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    a = _route(LeadFactory(), now=MON_10)
    with django_capture_on_commit_callbacks(execute=True):
        services.sla_escalate(now=MON_10 + timedelta(hours=1))
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sla_escalate(now=MON_10 + timedelta(hours=2)) == {"manager_notified": 1}
    detail = Escalation.objects.get(assignment=a, level=2).detail
    assert detail["manager"] is None
    if path == "contact":
        assert detail["via"] == "team escalation contact" and mail.outbox[0].to == ["teamlead@sales.example"]
    elif path == "admins":
        assert detail["via"] == "routing admins" and mail.outbox[0].to == ["sops@sales.example"]
    else:
        assert detail["via"] is None and "no escalation path" in detail["error"] and not mail.outbox


def test_team_admin_warns_about_teams_without_an_escalation_path(client, sales_ops):
    bare = TeamFactory(name="Bare")
    RepFactory(team=bare)
    covered = TeamFactory(name="Covered", escalation_contact=sales_ops)
    RepFactory(team=covered)
    sales_ops.email = ""  # no routing admin to fall back on
    sales_ops.save()
    client.force_login(sales_ops)
    page = client.get(reverse("admin:routing_team_changelist")).content.decode()
    assert "No escalation path for Bare:" in page and "Covered" not in page.split("No escalation path")[1][:200]
    sales_ops.email = "sops@sales.example"
    sales_ops.save()
    page = client.get(reverse("admin:routing_team_changelist")).content.decode()
    assert "No escalation contact for Bare: reps there have no manager, so their SLA breaches go to the routing admins." in page


# --- Publishing, first score ------------------------------------------------------


def test_publish_refuses_a_fallback_team_without_active_reps():
    team = TeamFactory(name="Empty")
    RepFactory(team=team, is_active=False)
    draft = RuleSetFactory(fallback_team=team)
    with pytest.raises(ValidationError) as info:
        services.rule_set_publish(rule_set=draft)
    assert info.value.message_dict["fallback_team"] == ["The fallback team 'Empty' has no active reps to take leads."]
    assert RuleSet.objects.get(pk=draft.pk).is_draft


def test_a_new_lead_is_rerouted_once_after_its_first_score(settings, django_capture_on_commit_callbacks):
    from martech.scoring.models import ScoreHistory

    cold, hot = TeamFactory(name="Cold"), TeamFactory(name="Hot")
    RepFactory(team=cold, name="cold-rep")
    hot_rep = RepFactory(team=hot, name="hot-rep")
    draft = RuleSetFactory(fallback_team=cold)
    RuleFactory(rule_set=draft, name="Hot", condition="score >= 50", action="team", team=hot)
    services.rule_set_publish(rule_set=draft)
    lead = LeadFactory()
    first = _route(lead, trigger=Assignment.Trigger.NEW_LEAD)
    assert first.team == cold  # routed before the score existed
    Rep.objects.filter(pk=first.rep_id)  # (no touch yet)
    from martech.models import Lead

    Lead.objects.filter(pk=lead.pk).update(total_score=80)
    ScoreHistory.objects.create(lead=lead, changed_at=MON_10, fit_score=80, engagement_score=0, total_score=80,
                                old_total=0, reason="first", breakdown=[])
    from martech import signals

    signals.score_changed.send(sender=Lead, lead_id=lead.pk, old_total=0, new_total=80)
    current = Assignment.objects.get(lead=lead, is_current=True)
    assert (current.rep, current.trigger, current.rule_name) == (hot_rep, "first_score", "Hot")
    first.refresh_from_db()
    assert first.close_reason == "reassigned"
    # Later score moves never reroute again, even one from 0 that changes the rule.
    Lead.objects.filter(pk=lead.pk).update(total_score=10)
    signals.scores_changed.send(sender=Lead, changes=[(lead.pk, 0, 10)])
    signals.score_changed.send(sender=Lead, lead_id=lead.pk, old_total=0, new_total=10)
    assert Assignment.objects.get(lead=lead, is_current=True).pk == current.pk
    # A new lead whose first scoring keeps it under the same rule keeps its rep.
    other = LeadFactory()
    kept = _route(other, trigger=Assignment.Trigger.NEW_LEAD)
    Lead.objects.filter(pk=other.pk).update(total_score=20)
    signals.scores_changed.send(sender=Lead, changes=[(other.pk, 0, 20)])
    assert Assignment.objects.get(lead=other, is_current=True).pk == kept.pk
