"""django-q2's Redis broker with one connection pool per process.

``async_task`` builds a new broker for every task it enqueues, and the stock
Redis broker makes a new client, so every enqueue opened a new TCP
connection (and redis-py read its package metadata for the handshake):
about 3 ms of CPU and a round trip or two per task, twice for every events
batch (scoring and attribution each wake a task). This broker hands every
instance the same client; redis-py's pool is thread-safe and starts afresh
in a forked process (qcluster's workers), so nothing is shared across a fork.
"""
from __future__ import annotations

import threading

import redis
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf

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
