"""Shared fixtures: named users per role (docs/style.md, 14), API clients."""
from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection

from tests.factories import UserFactory


def pytest_collection_modifyitems(config, items):
    # postgres_only tests prove PostgreSQL behaviour (row locks, concurrent
    # inserts). They run in the PostgreSQL CI leg; on SQLite they are not
    # collected as passing: they are deselected, and the count is printed.
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("postgres_only") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _no_axes_lockout_state(settings):
    # django-axes needs the request in authenticate(); the test client's
    # login() has none. Axes is exercised on purpose in tests/martech/test_login_throttle.py.
    settings.AXES_ENABLED = False


@pytest.fixture(autouse=True)
def _touchpoints_refresh_at_once(settings):
    # A woken touchpoint refresh reads at once in tests (its gather window is
    # tested in tests/attribution/test_touchpoints_pending.py).
    settings.MARTECH_ATTRIBUTION = {**settings.MARTECH_ATTRIBUTION, "TOUCHPOINTS_GATHER_SECONDS": 0}


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_superuser=True)


@pytest.fixture
def marketing_ops(db):
    return UserFactory(username="mops", groups=["Marketing Ops"])


@pytest.fixture
def sales_ops(db):
    return UserFactory(username="sops", groups=["Sales Ops"])


@pytest.fixture
def analyst(db):
    return UserFactory(username="analyst", groups=["Analyst"])


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"


# Every data migration that seeds reference data, and its seeding function.
REFERENCE_SEEDS = [
    ("martech.migrations.0002_seed_reference_data", "seed"),  # stages, channel rules, UTM aliases, event catalog
    ("martech.migrations.0005_campaign_member_event_type", "seed"),
    ("martech.migrations.0010_gallery_event_types", "seed"),  # the gallery journeys' events
    ("nurture.migrations.0002_event_types", "add"),
    ("nurture.migrations.0004_esp_event_types", "add"),  # email_delivered, email_bounced, email_complained
    ("attribution.migrations.0002_seed_default_pipeline", "seed"),  # the default sales pipeline
]


def reference_data_seed() -> None:
    """Run the data migrations' seeds again (each is idempotent)."""
    for module, function in REFERENCE_SEEDS:
        getattr(importlib.import_module(module), function)(apps, None)


@pytest.fixture
def reference_data():
    """For transactional tests: a transactional test's teardown flushes every
    table, including the stages, event catalog, nurture event types and the
    default pipeline the data migrations seeded; seed them again.
    serialized_rollback would collide with the groups post_migrate
    re-creates after such a flush."""
    reference_data_seed()


@pytest.fixture
def task_completions():
    """(task id, source) of every ``task_completed`` announced during the test."""
    from martech import signals

    heard: list[tuple[int, str]] = []

    def receiver(sender, task, source, **kwargs):
        heard.append((task.pk, source))

    signals.task_completed.connect(receiver)
    yield heard
    signals.task_completed.disconnect(receiver)


@pytest.fixture
def scoring_inline(settings):
    """Scoring's django-q2 tasks run inline (a test sees what the worker
    would do), with the SQL handoff's notifications off."""
    settings.MARTECH_SCORING = {**settings.MARTECH_SCORING, "TASKS_SYNC": True, "HANDOFF_WEBHOOK_URL": "",
                                "HANDOFF_NOTIFY_EMAILS": [], "HANDOFF_DEFAULT_OWNER": ""}
