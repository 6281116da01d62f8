"""The Redis broker enqueues on one pooled client per process, not a new
connection per task."""
from __future__ import annotations

import pytest
from django_q.conf import Conf

from martech.taskqueue import PooledRedisBroker


@pytest.fixture
def redis_conf(monkeypatch):
    # Clients connect lazily: nothing here needs a Redis server.
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:6399/3")
    monkeypatch.setattr("martech.taskqueue._clients", {})


def test_every_broker_of_a_process_shares_one_client(redis_conf):
    first, second = PooledRedisBroker(), PooledRedisBroker(list_key="other")
    assert first.connection is second.connection
    assert first.connection.connection_pool.connection_kwargs["db"] == 3
    assert first.list_key == "django_q:martech:q" and second.list_key == "django_q:other:q"


def test_another_url_gets_its_own_client(redis_conf, monkeypatch):
    first = PooledRedisBroker().connection
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:6399/4")
    assert PooledRedisBroker().connection is not first


def test_the_redis_cache_reuses_one_client_per_pool():
    # No server needed: clients connect on their first command.
    from martech.rediscache import PooledRedisCache

    cache = PooledRedisCache("redis://127.0.0.1:6399/3", {})
    client = cache._cache.get_client("k", write=True)
    assert cache._cache.get_client("other", write=True) is client
    assert cache._cache.get_client("k") is client  # one server: reads share the pool
    assert client.connection_pool is cache._cache._get_connection_pool(True)
