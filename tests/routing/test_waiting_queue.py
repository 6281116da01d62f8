"""The waiting queue drains every lead that has an eligible rep, however
many leads wait ahead of it for full teams."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from martech.models import Lead, LifecycleStage
from routing import services
from routing.services import queue as waiting_queue
from routing.models import Assignment, Team
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory

pytestmark = pytest.mark.django_db
NOW = timezone.now()


def waiting_for(team: Team, n: int, *, start, prefix: str) -> list[int]:
    stage = LifecycleStage.objects.get_or_create(key="lead", defaults={"name": "Lead", "order": 1})[0]
    leads = Lead.objects.bulk_create([Lead(email=f"{prefix}{i}@w.example", lifecycle_stage=stage) for i in range(n)])
    Assignment.objects.bulk_create([
        Assignment(lead=lead, status=Assignment.Status.WAITING, team=team, trigger="new_lead",
                   created_at=start + timedelta(seconds=i))
        for i, lead in enumerate(leads)])
    return [lead.pk for lead in leads]


@pytest.fixture
def tried(monkeypatch) -> list[int]:
    """The leads a run tried (locked and looked at), in order."""
    seen: list[int] = []
    real = waiting_queue._waiting_one

    def spy(assignment_id, lead_id, now):
        seen.append(lead_id)
        return real(assignment_id, lead_id, now)

    monkeypatch.setattr(waiting_queue, "_waiting_one", spy)
    return seen


def test_leads_waiting_for_full_teams_do_not_hold_back_a_team_with_room(tried):
    full = TeamFactory(name="Full")
    RepFactory(team=full, name="busy", max_open_leads=0)
    room = TeamFactory(name="Room", method=Team.Method.ROUND_ROBIN)
    for i in range(3):
        RepFactory(team=room, name=f"free{i}")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=room))
    waiting_for(full, 600, start=NOW - timedelta(days=2), prefix="full")  # the oldest 600
    served = waiting_for(room, 150, start=NOW - timedelta(days=1), prefix="room")
    assert services.waiting_assign(now=NOW) == 150
    assigned = Assignment.objects.filter(is_current=True, status="assigned")
    assert set(assigned.values_list("lead_id", flat=True)) == set(served)
    assert assigned.filter(rep__name="free0").count() == 50  # turns kept
    assert Assignment.objects.filter(is_current=True, status="waiting", team=full).count() == 600
    assert tried == served  # the full team was looked at once (nobody eligible), not lead by lead
    assert services.waiting_assign(now=NOW) == 0  # nothing left that can be served


def test_a_team_that_fills_up_during_the_run_is_left_for_the_next_team(tried):
    small = TeamFactory(name="Small")
    RepFactory(team=small, name="two", max_open_leads=2)
    other = TeamFactory(name="Other")
    RepFactory(team=other, name="many")
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=other))
    first = waiting_for(small, 20, start=NOW - timedelta(days=2), prefix="small")
    later = waiting_for(other, 5, start=NOW - timedelta(days=1), prefix="other")
    assert services.waiting_assign(now=NOW) == 7
    assert set(Assignment.objects.filter(is_current=True, rep__name="many").values_list("lead_id", flat=True)) == set(later)
    # Two leads assigned, the third found the team full: the other 17 were not tried.
    assert tried == first[:3] + later


def test_the_limit_bounds_the_leads_tried_in_one_run():
    team = TeamFactory(name="Team")
    RepFactory(team=team)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    waiting_for(team, 30, start=NOW - timedelta(days=1), prefix="lim")
    assert services.waiting_assign(limit=10, now=NOW) == 10
    assert services.waiting_assign(limit=100, now=NOW) == 20
