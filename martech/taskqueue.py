"""django-q2 plumbing: the Redis broker with one connection pool per
process, debounced wake-ups on commit, the bulk work's cluster.

``async_task`` builds a new broker for every task it enqueues, and the stock
Redis broker makes a new client, so every enqueue opened a new TCP
connection (and redis-py read its package metadata for the handshake):
about 3 ms of CPU and a round trip or two per task, twice for every events
batch (scoring and attribution each wake a task). This broker hands every
instance the same client; redis-py's pool is thread-safe and starts afresh
in a forked process (qcluster's workers), so nothing is shared across a fork.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import redis
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf

log = logging.getLogger(__name__)
_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


class PooledRedisBroker(Redis):
    @staticmethod
    def get_connection(list_key: str | None = None) -> redis.Redis:
        url = Conf.REDIS if isinstance(Conf.REDIS, str) else repr(sorted(Conf.REDIS.items()))
        client = _clients.get(url)
        if client is None:
            with _lock:
                client = _clients.get(url)
                if client is None:
                    client = redis.from_url(Conf.REDIS) if isinstance(Conf.REDIS, str) else redis.StrictRedis(**Conf.REDIS)
                    _clients[url] = client
        return client


# --- Wake-ups on commit, debounced ----------------------------------------------
# A write that creates work (an outbox row, a due journey step) wakes its task
# when the transaction commits, instead of waiting for the once-a-minute
# schedule, which stays as the sweep for a lost wake-up. Debounced by key: a
# wake-up is enqueued only when none is waiting for that key; the task clears
# the mark (``woken``) before it reads, so a write that commits after the read
# began enqueues the next one: 20 writes a second make about one task per key
# per task run, never none. The mark expires after WAKE_TTL seconds, so a task
# lost from the queue blocks its key no longer than that (and the schedule
# sweeps meanwhile).
WAKE_TTL = 30


def _wake_key(key: str) -> str:
    return f"martech:wake:{key}"


def wake(func: str, *args, key: str, cluster: str | None = None) -> bool:
    """Enqueue ``func(*args)`` unless a wake-up for ``key`` is already
    waiting; True when enqueued. Call after commit (``wake_on_commit``)."""
    from django.core.cache import cache
    from django_q.tasks import async_task

    if not cache.add(_wake_key(key), 1, timeout=WAKE_TTL):
        return False
    options = {"task_name": f"wake: {key}"}
    if cluster:
        options["cluster"] = cluster
    try:
        async_task(func, *args, **options)
    except Exception:
        cache.delete(_wake_key(key))
        raise
    return True


def wake_on_commit(func: str, *args, key: str, cluster: str | None = None) -> None:
    """``wake`` when the current transaction commits (at once outside one).
    A failure to enqueue is logged, never raised into the committed write:
    the schedule sweeps what it left. Inside ``coalesced_wakes()`` the
    wake-up waits for the block's end, once per key."""
    from django.db import transaction

    def run():
        pending = getattr(_coalescing, "pending", None)
        if pending is not None:
            pending.setdefault(key, (func, args, cluster))
            return
        _wake_logged(func, args, key, cluster)

    transaction.on_commit(run)


def _wake_logged(func: str, args: tuple, key: str, cluster: str | None) -> None:
    try:
        wake(func, *args, key=key, cluster=cluster)
    except Exception:  # noqa: BLE001 - the schedule's sweep picks the work up
        log.exception("wake-up %s not enqueued; the schedule will sweep it", key)


_coalescing = threading.local()


@contextmanager
def coalesced_wakes():
    """The wake-ups of the transactions committed in this block (this
    thread) are enqueued when it ends, one per key, instead of one per
    commit: a capture task commits 4 transactions that each touch the CRM
    outbox of 2 connections, 8 debounce checks (Redis round trips) for 2
    wake-ups. Committed work is woken even when the block raises; a wake-up
    is late by the rest of the block at most. Nested: the outer one holds."""
    if getattr(_coalescing, "pending", None) is not None:
        yield
        return
    _coalescing.pending = pending = {}
    try:
        yield
    finally:
        _coalescing.pending = None
        for key, (func, args, cluster) in pending.items():
            _wake_logged(func, args, key, cluster)


def woken(key: str) -> None:
    """Called by a woken task before it reads its work: the next write wakes again."""
    from django.core.cache import cache

    cache.delete(_wake_key(key))


def bulk_cluster() -> str | None:
    """The django-q2 cluster bulk work goes to (MARTECH_BULK_CLUSTER: CRM
    full pulls, imports, retention, attribution recomputes), so a backlog of
    it never delays speed-to-lead work; None: the default cluster."""
    from django.conf import settings

    return settings.MARTECH_BULK_CLUSTER or None


# --- CPU per task function (measurement) -----------------------------------------------
# With MARTECH_TASK_CPU_TALLY (and Redis), each worker process adds the CPU
# seconds (user + system, this process) of every task it runs to the Redis
# hash TALLY_KEY, field "<func>" and "<func>:n" for the count: what a task
# costs where it runs, which django-q2's records (wall clock from the
# enqueue) do not say. Off by default: two Redis commands a task.
TALLY_KEY = "martech:task_cpu"
_started = threading.local()
_tally_client: redis.Redis | None = None


def _on_pre_execute(sender, func=None, task=None, **kwargs) -> None:
    import time

    _started.cpu = time.process_time()


def _on_post_execute(sender, func=None, task=None, **kwargs) -> None:
    import time

    from django.conf import settings

    started = getattr(_started, "cpu", None)
    if started is None or not settings.REDIS_URL:
        return
    _started.cpu = None
    name = task.get("func") if isinstance(task.get("func"), str) else getattr(func, "__qualname__", repr(func))
    global _tally_client
    if _tally_client is None:
        _tally_client = redis.from_url(settings.REDIS_URL)
    try:
        pipe = _tally_client.pipeline(transaction=False)
        pipe.hincrbyfloat(TALLY_KEY, name, time.process_time() - started)
        pipe.hincrby(TALLY_KEY, f"{name}:n", 1)
        pipe.execute()
    except redis.RedisError:
        log.warning("task CPU tally not recorded for %s", name, exc_info=True)


def task_cpu_tally_connect() -> None:
    """Connect the tally to django-q2's worker signals when the setting is on."""
    from django.conf import settings

    if not settings.MARTECH_TASK_CPU_TALLY:
        return
    from django_q.signals import post_execute_in_worker, pre_execute

    pre_execute.connect(_on_pre_execute, dispatch_uid="martech_task_cpu_pre")
    post_execute_in_worker.connect(_on_post_execute, dispatch_uid="martech_task_cpu_post")


def task_cpu_tally() -> dict[str, tuple[float, int]]:
    """{func: (CPU seconds, tasks)} tallied so far (see TALLY_KEY)."""
    from django.conf import settings

    raw = redis.from_url(settings.REDIS_URL).hgetall(TALLY_KEY)
    values = {k.decode(): v.decode() for k, v in raw.items()}
    return {k: (float(v), int(values.get(f"{k}:n", 0))) for k, v in values.items() if not k.endswith(":n")}
