"""Crashes with a backend that cannot say whether a message went out (SMTP
to a loopback sink), on PostgreSQL with real worker processes killed with
SIGKILL; and consent withdrawn during delivery.

- A worker killed at the worst moment (the sink has taken a message and
  holds its answer): after recovery, no message that never went out is left
  in doubt, every due step went out once, and each enrollment's steps went
  out in order (the step after the in-doubt one waits for a person).
- Consent withdrawn for random leads while workers deliver: nothing reaches
  a lead after the withdrawal committed."""
from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest
from django.utils import timezone

from martech.models import ConsentRecord, Lead, LifecycleStage
from martech.services.leads import consent_record
from nurture.engine import messages_recover
from nurture.models import Enrollment, Message, StepExecution
from nurture.services import messages_mark_sent
from tests.factories import UserFactory
from tests.nurture.conftest import email_flow
from tests.nurture.smtp_sink import SmtpSink
from tests.nurture.test_exactly_once import _worker

pytestmark = [
    pytest.mark.postgres_only, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reference_data"),  # tests/conftest.py
]

# Both emails of a journey go out in one run (no frequency cap in the way).
CAPS = {"NURTURE_EMAIL_DAILY_CAP": "5", "NURTURE_EMAIL_WEEKLY_CAP": "5"}


def _seed(make_workflow, n: int, steps: int) -> list[Lead]:
    wf = make_workflow(email_flow(steps))
    stage = LifecycleStage.objects.get(key="lead")
    now = timezone.now()
    leads = Lead.objects.bulk_create([Lead(email=f"c{i}@crash.example", lifecycle_stage=stage) for i in range(n)])
    ConsentRecord.objects.bulk_create([ConsentRecord(lead=l, channel="email", status="granted", source="t") for l in leads])
    Enrollment.objects.bulk_create([Enrollment(workflow=wf, version=wf.current_version, lead=l, step="e1", due_at=now)
                                    for l in leads])
    return leads


def _in_order(sink: SmtpSink) -> None:
    """Each enrollment's e2 (key n:<enrollment>:1:e2) went out after its e1 (n:<enrollment>:0:e1)."""
    at = {r["key"]: r["at"] for r in sink.received}
    for key, t in at.items():
        if key.endswith(":1:e2"):
            first = key.removesuffix(":1:e2") + ":0:e1"
            assert first in at and at[first] < t, f"{key} went out before {first}"


def test_worker_killed_at_the_point_of_no_return_leaves_nothing_unsent_in_doubt(make_workflow, tmp_path):
    n = 150
    _seed(make_workflow, n, steps=2)
    with SmtpSink(hold_at=101) as sink:
        w = _worker(tmp_path, 50, NURTURE_SMTP_PORT=str(sink.port), **CAPS)
        assert sink.holding.wait(120), "the worker never reached message 101"
        os.kill(w.pid, signal.SIGKILL)  # it sent the ".", the sink took it, the "250" never came
        w.wait()
        sink.release.set()
        taken = set(sink.keys())
        unsettled = Counter(Message.objects.exclude(status="sent").values_list("status", flat=True))
        # One message between its "." and its commit; every other unsent one is known unsent (queued).
        assert unsettled["sending"] == 1, unsettled
        in_flight = Message.objects.get(status="sending")
        assert in_flight.key in taken
        assert set(Message.objects.filter(status="sent").values_list("key", flat=True)) == taken - {in_flight.key}

        again = _worker(tmp_path, 50, NURTURE_SMTP_PORT=str(sink.port), LEASE="0", **CAPS)
        out, err = again.communicate(timeout=180)
        assert again.returncode == 0, err
        keys = sink.keys()
        assert [k for k, c in Counter(keys).items() if c > 1] == [], "sent twice"
        doubt = list(Message.objects.filter(status="in_doubt").values_list("key", flat=True))
        assert doubt == [in_flight.key], "only the message that did go out may be in doubt"
        assert set(doubt) <= set(keys), "a message that never went out is in doubt"
        # Its enrollment's next step waits behind it (steps go out in order) ...
        held = Message.objects.get(key=in_flight.key.removesuffix(":0:e1") + ":1:e2") if in_flight.step == "e1" else None
        if held is not None:
            assert held.status == "queued" and held.key not in keys
        # ... everything else went out, once, in order.
        assert Message.objects.exclude(status__in=["sent", "in_doubt", "queued"]).count() == 0
        assert Message.objects.filter(status="sent").count() == 2 * n - 1 - (held is not None)
        _in_order(sink)

        # A person checks the ESP's log: it did go out. The held step follows.
        assert messages_mark_sent(ids=[in_flight.pk], actor=UserFactory(username="ops")) == 1
        with _smtp(sink.port):
            messages_recover(lease_seconds=0)
        assert Message.objects.filter(status="sent").count() == 2 * n
        assert sorted(sink.keys()) == sorted(Message.objects.values_list("key", flat=True))
        _in_order(sink)
    assert not Enrollment.objects.filter(status="active").exists()


class _smtp:
    def __init__(self, port):
        self.port = port

    def __enter__(self):
        from django.conf import settings

        self.saved = {k: getattr(settings, k) for k in ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT")}
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", self.port

    def __exit__(self, *exc):
        from django.conf import settings

        for k, v in self.saved.items():
            setattr(settings, k, v)


def test_no_send_after_a_withdrawal_commits(make_workflow, tmp_path):
    n = 300
    leads = _seed(make_workflow, n, steps=1)
    rng = random.Random(14)
    targets = rng.sample(leads, 120)
    withdrawn: dict[str, float] = {}  # address -> a moment after its withdrawal committed
    with SmtpSink(reply_delay=0.01) as sink:
        workers = [_worker(tmp_path, 25, NURTURE_SMTP_PORT=str(sink.port)) for _ in range(2)]
        deadline = time.monotonic() + 120
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.005)
        for lead in targets:
            consent_record(lead=lead, channel="email", granted=False, source="test")  # its own transaction
            withdrawn[lead.email] = time.time()
            time.sleep(rng.uniform(0, 0.02))
        outs = [w.communicate(timeout=180) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outs
        late = [(r["to"], r["at"] - withdrawn[r["to"][0]]) for r in sink.received
                if r["to"][0] in withdrawn and r["at"] > withdrawn[r["to"][0]]]
        assert late == [], f"sent after the withdrawal committed: {late[:5]}"
    skipped = Message.objects.filter(status="skipped")
    # The withdrawals raced the sends: some landed first (sent), some were seen at send time.
    assert skipped.exists() and Message.objects.filter(status="sent", lead__in=targets).exists()
    assert set(skipped.values_list("status_reason", flat=True)) == {"no_consent"}
    assert set(skipped.values_list("lead__email", flat=True)) <= set(withdrawn)
    # Every step was decided once; a withdrawal that landed before its step
    # was decided left no message at all (the decision skipped it).
    assert StepExecution.objects.filter(step="e1").count() == n
    assert Message.objects.filter(status="sent").count() + skipped.count() == Message.objects.count()
    unmessaged = set(Lead.objects.exclude(nurture_messages__isnull=False).values_list("email", flat=True))
    assert unmessaged <= set(withdrawn)
    assert Counter(sink.keys()).most_common(1)[0][1] == 1
