"""API writes run again when the database aborts them for a concurrent one."""
from __future__ import annotations

from martech.db import retry_on_conflict

_SAFE = frozenset({"get", "head", "options"})


class ConflictRetryMixin:
    """For every API view: a write whose transaction PostgreSQL aborted
    (deadlock, serialization failure; ``martech.db``) is handled again from
    the start instead of answering 500. Wrapped after ``initial``, so
    authentication, permissions and throttles run once per request, and
    the parsed body (``request.data``) is read once and reused. Each
    handler's writes are services with their own transactions (no
    ATOMIC_REQUESTS), so the handler is the transaction boundary; a write
    handler must be safe to run again, as an HTTP retry would run it."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        method = request.method.lower()
        handler = getattr(self, method, None)
        if method not in _SAFE and handler is not None and not getattr(handler, "_retries_conflicts", False):
            wrapped = retry_on_conflict(handler)
            wrapped._retries_conflicts = True
            setattr(self, method, wrapped)
