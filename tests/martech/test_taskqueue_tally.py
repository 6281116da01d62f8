"""MARTECH_TASK_CPU_TALLY: each worker adds its tasks' CPU seconds per
function to a Redis hash (the speed-to-lead bench reads it)."""
from __future__ import annotations

from martech import taskqueue


class _Pipe:
    def __init__(self, calls):
        self.calls = calls

    def hincrbyfloat(self, key, field, amount):
        self.calls.append(("float", key, field, amount))

    def hincrby(self, key, field, amount):
        self.calls.append(("int", key, field, amount))

    def execute(self):
        self.calls.append(("execute",))


class _Client:
    def __init__(self):
        self.calls: list[tuple] = []

    def pipeline(self, transaction=True):
        return _Pipe(self.calls)


def test_a_task_adds_its_cpu_seconds_and_count_under_its_function(settings, monkeypatch):
    settings.REDIS_URL = "redis://127.0.0.1:6379/15"
    client = _Client()
    monkeypatch.setattr(taskqueue, "_tally_client", client)
    task = {"func": "martech.tasks.capture_process"}
    taskqueue._on_pre_execute("django_q", func=None, task=task)
    sum(i * i for i in range(200_000))  # some CPU
    taskqueue._on_post_execute("django_q", func=None, task=task)
    (kind, key, field, seconds), count, done = client.calls
    assert (kind, key, field) == ("float", taskqueue.TALLY_KEY, "martech.tasks.capture_process") and seconds > 0
    assert count == ("int", taskqueue.TALLY_KEY, "martech.tasks.capture_process:n", 1) and done == ("execute",)
    # A post without its pre (the tally switched on mid-task) records nothing.
    taskqueue._on_post_execute("django_q", func=None, task=task)
    assert len(client.calls) == 3


def test_the_tally_is_off_by_default(settings):
    from django_q.signals import pre_execute

    assert settings.MARTECH_TASK_CPU_TALLY is False
    assert not any(r[1]() is taskqueue._on_pre_execute for r in pre_execute.receivers if callable(r[1]))
