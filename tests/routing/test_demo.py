import pytest

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
