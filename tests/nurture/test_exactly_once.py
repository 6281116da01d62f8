"""Exactly-once under faults, on PostgreSQL with real processes: two workers
on the same due set, and a worker SIGKILLed mid-batch then restarted. Every
due step runs once, none is lost, none is sent twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from martech.models import ConsentRecord, Lead, LifecycleStage
from nurture.models import Enrollment, Message, StepExecution
from tests.nurture.backends import journal
from tests.nurture.conftest import email_flow

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]
ROOT = Path(__file__).resolve().parents[2]


def _db_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _seed(make_workflow, n: int) -> set[str]:
    wf = make_workflow(email_flow(1))
    stage = LifecycleStage.objects.get(key="lead")
    now = timezone.now()
    leads = Lead.objects.bulk_create([Lead(email=f"x{i}@once.example", lifecycle_stage=stage) for i in range(n)])
    ConsentRecord.objects.bulk_create([ConsentRecord(lead=l, channel="email", status="granted", source="t") for l in leads])
    Enrollment.objects.bulk_create([Enrollment(workflow=wf, version=wf.current_version, lead=l, step="e1", due_at=now)
                                    for l in leads])
    return {f"n:{e}:0:e1" for e in Enrollment.objects.values_list("pk", flat=True)}


def _worker(tmp_path, batch: int, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.nurture.worker", str(batch)], cwd=ROOT,
        env={**os.environ, "DATABASE_URL": _db_url(), "NURTURE_JOURNAL": str(tmp_path / "journal"),
             "DATABASE_CONN_MAX_AGE": "0", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _assert_exactly_once(tmp_path, keys: set[str]) -> None:
    sent = Counter(journal(tmp_path / "journal"))
    assert {k for k, c in sent.items() if c > 1} == set(), "sent twice"
    assert set(sent) == keys, f"lost: {len(keys - set(sent))}"
    assert StepExecution.objects.filter(step="e1").count() == len(keys)
    assert StepExecution.objects.filter(step="end").count() == len(keys)
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}
    assert not Enrollment.objects.filter(status="active").exists()


def test_two_workers_share_the_due_set_and_send_each_step_once(make_workflow, tmp_path):
    keys = _seed(make_workflow, 600)
    workers = [_worker(tmp_path, 25, NURTURE_JOURNAL_DELAY="0.003") for _ in range(2)]
    outs = [w.communicate(timeout=180) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    steps = [int(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(steps) == 2 * len(keys)
    assert all(s > 0 for s in steps), f"one worker did all the work: {steps}"  # SKIP LOCKED shared it
    _assert_exactly_once(tmp_path, keys)


def test_worker_killed_mid_batch_then_restarted(make_workflow, tmp_path):
    keys = _seed(make_workflow, 400)
    w = _worker(tmp_path, 50, NURTURE_JOURNAL_DELAY="0.005")
    deadline = time.monotonic() + 120
    while len(journal(tmp_path / "journal")) < 75 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    done_before = len(journal(tmp_path / "journal"))
    assert 75 <= done_before < len(keys), "the kill must land mid-run"
    # Killed inside a batch: its messages are committed (queued, or sending
    # for the one in flight); some went out.
    assert Message.objects.filter(status__in=["queued", "sending"]).exists()
    again = _worker(tmp_path, 50, LEASE="0")  # restart; the dead worker's lease is over
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    _assert_exactly_once(tmp_path, keys)
