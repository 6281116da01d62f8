import pytest

from martech.models import Lead
from routing import demo as routing_demo
from routing.demo import demo_seed
from routing.models import Assignment, Rep, RuleSet
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


def test_demo_seed_is_idempotent_and_routes_leads():
    LeadFactory.create_batch(5, country="DE")
    first = demo_seed(progress=False)
    assert first["routing_reps"] == 10 and first["routing_rule_sets"] == 1 and first["routing_assignments"] == 5
    assert RuleSet.objects.get().version == 1
    assert demo_seed(progress=False) == {"routing_teams": 0, "routing_reps": 0, "routing_territories": 0,
                                         "routing_rule_sets": 0, "routing_assignments": 0}
    assert Assignment.objects.count() == 5 and Rep.objects.count() == 10


def test_demo_routes_the_newest_leads_once(monkeypatch):
    # Fewer routed leads than leads: a second run must not take the next ones.
    monkeypatch.setattr(routing_demo, "ROUTED_LEADS", 3)
    LeadFactory.create_batch(5, country="DE")
    newest = set(Lead.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)[:3])
    assert demo_seed(progress=False)["routing_assignments"] == 3
    assert set(Assignment.objects.values_list("lead_id", flat=True)) == newest
    assert demo_seed(progress=False)["routing_assignments"] == 0
    assert set(Assignment.objects.values_list("lead_id", flat=True)) == newest


def test_demo_sets_managers_only_when_it_makes_the_reps():
    demo_seed(progress=False)
    cleared = Rep.objects.filter(manager__isnull=False).first()
    Rep.objects.filter(pk=cleared.pk).update(manager=None)
    demo_seed(progress=False)
    assert Rep.objects.get(pk=cleared.pk).manager is None
