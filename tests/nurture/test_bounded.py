"""A worker's memory does not grow with the due set: every read of the
engine's loop is bounded by the batch size, and the benchmark measures a
worker's own peak (not its parent's)."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nurture import engine
from nurture.models import Message
from nurture.services import enrollment_create
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db(transaction=False)
ROOT = Path(__file__).resolve().parents[2]


def _due(make_workflow, consenting_lead, n):
    wf = make_workflow(email_flow(1))
    for _ in range(n):
        enrollment_create(workflow=wf, lead=consenting_lead(), source="test")
    return wf


def _engine_queries(batch_size):
    with CaptureQueriesContext(connection) as ctx:
        engine.enrollments_advance_due(batch_size=batch_size, max_batches=1, now=timezone.now())
    return [q["sql"] for q in ctx.captured_queries]


def test_one_batch_runs_the_same_queries_whatever_the_due_set(make_workflow, consenting_lead):
    _due(make_workflow, consenting_lead, 12)
    big = _engine_queries(2)  # 12 due, 2 taken
    few = _engine_queries(2)  # 10 due, 2 taken
    assert len(big) == len(few)
    reads = [q for q in big if q.lstrip().upper().startswith("SELECT") and "nurture_enrollment" in q.split("FROM", 1)[-1][:40]]
    assert reads and all(" LIMIT " in q.upper() for q in reads), reads
    assert Message.objects.count() == 4


def test_recovery_takes_at_most_its_limit_per_run(make_workflow, consenting_lead, monkeypatch):
    _due(make_workflow, consenting_lead, 5)
    # Workers that died in the middle of their sends: the messages stay "sending".
    monkeypatch.setattr(engine, "messages_deliver", lambda **kw: {})
    engine.enrollments_advance_due(now=timezone.now())
    monkeypatch.undo()
    Message.objects.update(status="sending", claimed_at=timezone.now() - timedelta(hours=2))
    assert Message.objects.filter(status="sending").count() == 5
    with CaptureQueriesContext(connection) as ctx:
        first = engine.messages_recover(lease_seconds=60, limit=2)
    # The sweeps (stale "sending", then unclaimed "queued") read at most the limit.
    sweeps = [q["sql"] for q in ctx.captured_queries if q["sql"].upper().startswith("SELECT")
              and " FROM \"NURTURE_MESSAGE\" WHERE" in q["sql"].upper() and "ORDER BY" in q["sql"].upper()]
    assert len(sweeps) == 2 and all(" LIMIT 2" in q.upper() for q in sweeps), sweeps
    assert sum(first.values()) == 2
    assert Message.objects.filter(status="sending").count() == 3
    second = engine.messages_recover(lease_seconds=60, limit=2)
    third = engine.messages_recover(lease_seconds=60, limit=2)
    assert (sum(second.values()), sum(third.values())) == (2, 1)
    assert not Message.objects.filter(status="sending").exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's /proc")
def test_bench_worker_reports_its_own_peak_not_its_parents():
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touched: resident in this (parent) process
    code = ("import resource, sys; sys.path.insert(0, 'bench'); from rss import own_peak_rss_kb; "
            "print(own_peak_rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    own_kb, inherited_kb = map(int, out.split())
    del ballast
    assert own_kb < 100 * 1024  # a bare interpreter: tens of MB
    assert inherited_kb > 300 * 1024  # what ru_maxrss reported: the parent's size


def _enroll_queries(wf, leads, now):
    from martech.models import Lead
    from nurture.services import workflow_enroll_bulk

    with CaptureQueriesContext(connection) as ctx:
        made = workflow_enroll_bulk(workflow=wf, leads=Lead.objects.filter(pk__in=[l.pk for l in leads]),
                                    source="segment:1", now=now)
    return made, [q["sql"][:90] for q in ctx.captured_queries]


def test_bulk_enrollment_is_one_insert_whatever_the_number_of_leads(make_workflow, consenting_lead):
    from nurture.models import Enrollment

    now = timezone.now()
    wf = make_workflow(email_flow(1))
    assert wf.current_version is not None  # loaded once, outside the counted calls
    few = [consenting_lead() for _ in range(2)]
    many = [consenting_lead() for _ in range(20)]
    made_few, q_few = _enroll_queries(wf, few, now)
    made_many, q_many = _enroll_queries(wf, many + few, now)  # the first two are already in: skipped
    assert (made_few, made_many) == (2, 20)
    assert len(q_few) == len(q_many), (q_few, q_many)
    enr = Enrollment.objects.get(lead=many[0])
    assert (enr.status, enr.step, enr.seq, enr.state, enr.source, enr.is_test, enr.version_id) == (
        "active", "e1", 0, {}, "segment:1", False, wf.current_version_id)
    assert enr.due_at == now and enr.enrolled_at == now
    # The inserted rows run like any other.
    assert engine.enrollments_advance_due(now=now) == 44
    assert Message.objects.filter(status="sent").count() == 22
