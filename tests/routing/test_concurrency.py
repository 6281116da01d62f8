"""Fair round robin with several workers at once (PostgreSQL row locks)."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection, connections

from routing import services
from routing.models import Assignment, Team
from tests.factories import LeadFactory
from tests.routing.factories import RepFactory, RuleSetFactory, TeamFactory

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]


def test_workers_routing_the_same_leads_at_once_assign_each_once_and_keep_weights():
    team = TeamFactory(method=Team.Method.WEIGHTED)
    weights = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
    for name, w in weights.items():
        RepFactory(team=team, name=name, weight=w)
    services.rule_set_publish(rule_set=RuleSetFactory(fallback_team=team))
    lead_ids = [LeadFactory().pk for _ in range(400)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(offset: int):
        try:
            barrier.wait()
            # Every worker tries every lead (rotated), so each lead is raced.
            for lead_id in lead_ids[offset:] + lead_ids[:offset]:
                services.lead_route(lead_id=lead_id, trigger="api")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    per_lead = Counter(Assignment.objects.values_list("lead_id", flat=True))
    assert len(per_lead) == 400 and set(per_lead.values()) == {1}
    shares = Counter(Assignment.objects.values_list("rep__name", flat=True))
    # 400 leads over weights 1:2:3:4 = 40/80/120/160, exactly, whatever the interleaving.
    assert shares == {"w1": 40, "w2": 80, "w3": 120, "w4": 160}
    assert connection.vendor == "postgresql"
