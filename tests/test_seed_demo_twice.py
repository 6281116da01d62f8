"""seed_demo twice, as ``scripts/run`` does on every start: the second run
adds, changes and deletes nothing in any installed app's tables (ours and
the third-party apps': django-q2, history, auth...) and queues no task.

A transactional test: the demo's services register their side effects with
``transaction.on_commit``, which only runs on a real commit."""
from __future__ import annotations

import io
import re
from contextlib import contextmanager
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django_q.brokers import get_broker
from django_q.signals import pre_enqueue

from martech.models import Lead
from routing.demo import ROUTED_LEADS
from routing.models import Assignment
from tests.conftest import reference_data_seed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reference_data")]

# More leads than the demo routes: a second run finds unrouted leads and must
# leave them alone.
LEADS = ROUTED_LEADS + 100

Snapshot = dict[str, dict[Any, tuple]]


def _snapshot() -> Snapshot:
    """Every row of every concrete model (auto-created many-to-many tables
    included), by primary key, with every column. No column is left out as
    volatile: a run that changes nothing writes no timestamp either."""
    snapshot: Snapshot = {}
    for model in apps.get_models(include_auto_created=True):
        if model._meta.proxy:
            continue
        fields = [f.attname for f in model._meta.concrete_fields]
        pk = fields.index(model._meta.pk.attname)
        snapshot[model._meta.label] = {row[pk]: row for row in model._base_manager.values_list(*fields)}
    return snapshot


def _differences(before: Snapshot, after: Snapshot) -> dict[str, str]:
    out = {}
    for label in sorted(before.keys() | after.keys()):
        old, new = before.get(label, {}), after.get(label, {})
        if old == new:
            continue
        model = apps.get_model(label)
        names = [f.attname for f in model._meta.concrete_fields]
        changed = sorted(pk for pk in old.keys() & new.keys() if old[pk] != new[pk])
        columns = sorted({n for pk in changed for n, a, b in zip(names, old[pk], new[pk]) if a != b})
        out[label] = (f"{len(old)} -> {len(new)} rows; added {sorted(new.keys() - old.keys())[:5]}, "
                      f"removed {sorted(old.keys() - new.keys())[:5]}, changed {changed[:5]} in {columns}")
    return out


@contextmanager
def _enqueued():
    """The functions of the tasks handed to django-q2 inside the block (its
    pre_enqueue signal, whichever broker the settings use)."""
    funcs: list[str] = []

    def receiver(sender, task, **kwargs):
        funcs.append(str(task["func"]))

    pre_enqueue.connect(receiver)
    try:
        yield funcs
    finally:
        pre_enqueue.disconnect(receiver)


def _seed() -> dict[str, int]:
    out = io.StringIO()
    call_command("seed_demo", leads=LEADS, no_progress=True, stdout=out)
    created = out.getvalue().split("Created:", 1)[1]
    return {kind.strip(): int(n) for n, kind in re.findall(r"(\d+) ([^,.]+)", created)}


def test_second_run_adds_changes_and_queues_nothing():
    broker = get_broker()  # the ORM broker on SQLite, Redis when REDIS_URL is set
    queued_before = broker.queue_size()
    with _enqueued() as first_tasks:
        first = _seed()
    # The measures see work: the first run does wake scoring and attribution up.
    assert first_tasks and broker.queue_size() - queued_before == len(first_tasks)
    assert first["leads"] == Lead.objects.count() == LEADS
    assert first["routing assignments"] == Assignment.objects.count() == ROUTED_LEADS
    assert all(first[kind] > 0 for kind in ("attribution credits", "spend days", "leads scored",
                                            "nurture workflows", "crm field mappings"))

    before = _snapshot()
    queued = broker.queue_size()
    # The reference data the migrations seeded (and that transactional tests
    # seed again) lives beside the demo data: re-seeding it changes nothing.
    reference_data_seed()
    with _enqueued() as second_tasks:
        second = _seed()
    after = _snapshot()

    assert _differences(before, after) == {}
    assert {label: len(rows) for label, rows in after.items()} == {label: len(rows) for label, rows in before.items()}
    assert second_tasks == []
    assert broker.queue_size() == queued
    assert {kind: n for kind, n in second.items() if n} == {}  # and it says so
