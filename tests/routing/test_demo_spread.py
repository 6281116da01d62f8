"""The demo shows routing at work whatever the hour it is seeded: at 03:00
UTC on a Monday (night in Europe and America) its routed leads still spread
over the North American and European reps, not onto the one rep whose
hours cover that moment."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_tz

import pytest

from routing.demo import business_moment, demo_seed
from routing.models import Assignment
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db

MONDAY_NIGHT = datetime(2026, 3, 2, 3, 0, tzinfo=dt_tz.utc)


def test_business_moment_is_the_latest_weekday_afternoon():
    assert business_moment(MONDAY_NIGHT) == datetime(2026, 2, 27, 15, 0, tzinfo=dt_tz.utc)  # the Friday before
    tuesday_evening = datetime(2026, 3, 3, 19, 30, tzinfo=dt_tz.utc)
    assert business_moment(tuesday_evening) == datetime(2026, 3, 3, 15, 0, tzinfo=dt_tz.utc)
    assert business_moment(datetime(2026, 3, 3, 15, 0, tzinfo=dt_tz.utc)) == datetime(2026, 3, 3, 15, 0, tzinfo=dt_tz.utc)


def test_seeded_at_night_the_leads_spread_over_the_reps():
    created = MONDAY_NIGHT - timedelta(days=5)  # demo leads convert days before the seeding
    for country in ["US"] * 30 + ["DE"] * 30:
        LeadFactory(country=country, created_at=created)
    assert demo_seed(progress=False, now=MONDAY_NIGHT)["routing_assignments"] == 60
    by_rep = Counter(Assignment.objects.filter(rep__isnull=False).values_list("rep__name", flat=True))
    assert sum(by_rep.values()) == 60  # nobody left waiting for working hours
    assert len(by_rep) >= 4
    assert max(by_rep.values()) <= 20  # no one rep takes most of them
    assert set(Assignment.objects.values_list("created_at", flat=True)) == {business_moment(MONDAY_NIGHT)}


def test_a_lead_created_after_the_moment_is_routed_when_it_came():
    lead = LeadFactory(country="US", created_at=MONDAY_NIGHT - timedelta(hours=2))
    demo_seed(progress=False, now=MONDAY_NIGHT)
    assert Assignment.objects.get(lead=lead).created_at == lead.created_at + timedelta(minutes=5)
