"""Per-process caches of configuration, current across processes and
transactions.

Hot paths read configuration on every call: the scoring rules on every
rescoring, nurture's active workflows on every score change or event, the
CRM push mappings on every lead change. Reading them from the database each
time was most of an incremental rescoring's work. Each kind of configuration
has a key here and a token in ``ConfigVersion``; a change to the
configuration sets a new random token *in the same transaction* (``bump``),
so:

- another process sees the new token exactly when the change commits, and
  reloads;
- a rolled-back change rolls its token back too, and a value loaded inside
  that transaction (under the token that vanished) is never used again;
- the token is random, not a counter, so a token rolled back and set again
  (test transactions, a flush) cannot come back to a value loaded before.

Tokens are bumped by ``watch``-ed models' post_save / post_delete (the admin,
services and fixtures all save through the model) and explicitly by the
services that change configuration with ``QuerySet.update()``.

``cached(key, loader)`` reads the key's token (one small query) and returns
the value loaded under it, loading it if the token moved; a caller that read
the token already, in a statement of its own unit of work (routing reads it
with the lead it routes), passes it as ``token=`` and costs no query. Inside
``snapshot()`` the tokens of every key are read once, with one query, and
serve every ``cached`` call of that unit of work (a rescoring, its hooks and
its after-commit receivers): configuration committed by another process
during that unit of work is seen by the next one.

Values are shared by the process's threads: loaders must return data that
is not modified afterwards (tuples, frozen dataclasses, or model instances
treated as read-only).
"""
from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import connection
from django.db.models.signals import post_delete, post_save

T = TypeVar("T")

_values: dict[str, tuple[int | None, Any]] = {}
_local = threading.local()


def _table() -> str:
    from martech.models import ConfigVersion

    return connection.ops.quote_name(ConfigVersion._meta.db_table)


def _read(key: str | None = None) -> dict[str, int]:
    # Plain SQL: this runs on every hot-path call, and building it through
    # the ORM cost more CPU than running it.
    with connection.cursor() as cursor:
        if key is None:
            cursor.execute(f"SELECT key, token FROM {_table()}")
        else:
            cursor.execute(f"SELECT key, token FROM {_table()} WHERE key = %s", [key])
        return dict(cursor.fetchall())


def bump(*keys: str) -> None:
    """Give these keys a new token, in the current transaction."""
    from martech.models import ConfigVersion

    tokens = {key: secrets.randbits(62) for key in keys}
    ConfigVersion.objects.bulk_create(
        [ConfigVersion(key=key, token=token) for key, token in tokens.items()],
        update_conflicts=True, unique_fields=["key"], update_fields=["token"])
    snap = getattr(_local, "tokens", None)
    if snap is not None:
        snap.update(tokens)


@contextmanager
def snapshot():
    """Read every token once for the enclosed work (nested: the outer one holds)."""
    if getattr(_local, "tokens", None) is not None:
        yield
        return
    _local.tokens = _read()
    try:
        yield
    finally:
        _local.tokens = None


_UNREAD: Any = object()


def cached(key: str, loader: Callable[[], T], *, token: Any = _UNREAD) -> T:
    if token is _UNREAD:
        snap = getattr(_local, "tokens", None)
        token = snap.get(key) if snap is not None else _read(key).get(key)
    hit = _values.get(key)
    if hit is not None and hit[0] == token:
        return hit[1]
    value = loader()
    _values[key] = (token, value)
    return value


def clear() -> None:
    """Forget every loaded value (this process only)."""
    _values.clear()


def watch(key: str, *models) -> None:
    """Bump ``key`` whenever one of ``models`` is saved or deleted."""
    def changed(sender, **kwargs):
        bump(key)

    for model in models:
        uid = f"configcache:{key}:{model._meta.label}"
        post_save.connect(changed, sender=model, weak=False, dispatch_uid=uid + ":save")
        post_delete.connect(changed, sender=model, weak=False, dispatch_uid=uid + ":delete")
