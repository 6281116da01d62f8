from __future__ import annotations

import pytest
from decimal import Decimal

from martech.models import EventType
from martech.scoring.models import ScoringModel


@pytest.fixture(autouse=True)
def _tasks_inline(scoring_inline):
    """Every scoring test runs its tasks inline (tests/conftest.py)."""


@pytest.fixture
def model(db):
    return ScoringModel.objects.create(name="Test", is_active=True, half_life_days=None)


@pytest.fixture
def page_view(db):
    return EventType.objects.get(name="page_view")


@pytest.fixture
def demo_requested(db):
    return EventType.objects.get(name="demo_requested")


def half_life(model, days):
    model.half_life_days = Decimal(days)
    model.save()
