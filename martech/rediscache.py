"""Django's Redis cache with one client per connection pool.

Django's ``RedisCacheClient.get_client`` builds a new ``redis.Redis`` for
every cache call (about 60 µs of CPU: redis-py fills its table of response
callbacks each time); a form's request makes four (the rate limit's read and
write, the CRM drains' wake-up marks) and every woken task one. A
``redis.Redis`` is thread-safe and its pool starts afresh in a forked process,
so one client per pool is kept and reused, as ``taskqueue.PooledRedisBroker``
does for the task queue.
"""
from __future__ import annotations

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class PooledRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class PooledRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = PooledRedisCacheClient
