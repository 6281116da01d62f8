from __future__ import annotations

import pytest
from decimal import Decimal

from martech.models import EventType
from martech.scoring.models import ScoringModel


@pytest.fixture(autouse=True)
def _tasks_inline(settings):
    # django-q2 tasks run inline, so a test sees what the worker would do.
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "TASKS_SYNC": True, "HANDOFF_WEBHOOK_URL": "",
                                "HANDOFF_NOTIFY_EMAILS": [], "HANDOFF_DEFAULT_OWNER": ""}


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
