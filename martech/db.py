"""Running a write again when the database aborted it for a concurrent one.

PostgreSQL ends one of two transactions that wait on each other's row locks
(deadlock_detected, SQLSTATE 40P01), and under REPEATABLE READ or
SERIALIZABLE one that read what another changed (serialization_failure,
40001); a NOWAIT or lock_timeout lock it could not take is 55P03. The
transaction is rolled back whole, so running it again from the start is
safe: that is done here, a few times, after a short random wait so the two
do not meet again in step.

Only at a transaction boundary: inside an outer ``atomic`` block the
transaction that failed is the caller's, already aborted, and re-running the
inner part cannot help; there the error goes up to whoever owns the
transaction. The boundaries that use this: every API write (``ConflictRetryMixin``
on the API views), every admin write (``martech.admin.base.BaseAdmin``),
every django-q2 task, the event batch (``events_ingest``) and the CRM
drain's settle step.

Every write path takes its row locks in one order (docs/architecture.md, "Write paths"),
so a deadlock should not happen at all; this is the net under it.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

# deadlock_detected, serialization_failure, lock_not_available
CONFLICT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
ATTEMPTS = 4
# The wait before attempt n is random in [0, JITTER * 2 ** (n - 1)] seconds.
JITTER = 0.05


def is_conflict(exc: BaseException) -> bool:
    """A database error that aborted the transaction because of a
    concurrent one (see CONFLICT_SQLSTATES), found by the driver error's
    SQLSTATE (psycopg's ``DeadlockDetected``, ``SerializationFailure``...),
    which Django keeps as the cause of its own ``OperationalError``."""
    seen = 0
    while exc is not None and seen < 5:
        diag = getattr(exc, "diag", None)
        sqlstate = getattr(exc, "sqlstate", None) or getattr(diag, "sqlstate", None)
        if sqlstate in CONFLICT_SQLSTATES:
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def _in_transaction(using: str) -> bool:
    return connections[using].in_atomic_block


def _retrying(fn: Callable[[], T], *, using: str, attempts: int, atomic: bool,
              on_retry: Callable[[], None] | None, name: str) -> T:
    if _in_transaction(using):
        # Not a transaction boundary: the outer block owns the retry.
        if atomic:
            with transaction.atomic(using=using):
                return fn()
        return fn()
    for attempt in range(1, attempts + 1):
        try:
            if atomic:
                with transaction.atomic(using=using):
                    return fn()
            return fn()
        except DatabaseError as exc:
            if attempt >= attempts or not is_conflict(exc) or _in_transaction(using):
                raise
            log.warning("%s: %s (attempt %s of %s); running it again", name, exc, attempt, attempts)
            if on_retry is not None:
                on_retry()
            time.sleep(random.uniform(0, JITTER * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def run_in_transaction(fn: Callable[[], T], *, using: str = DEFAULT_DB_ALIAS, attempts: int = ATTEMPTS,
                       on_retry: Callable[[], None] | None = None) -> T:
    """``fn()`` in its own transaction, run again (up to ``attempts`` times
    in all) when the database aborts it for a concurrent one. ``on_retry``
    resets what ``fn`` kept in memory from the failed attempt. Inside an
    outer atomic block it runs once, in a savepoint."""
    return _retrying(fn, using=using, attempts=attempts, atomic=True, on_retry=on_retry,
                     name=getattr(fn, "__qualname__", "transaction"))


def retry_on_conflict(fn: Callable[..., T] | None = None, *, using: str = DEFAULT_DB_ALIAS,
                      attempts: int = ATTEMPTS):
    """Decorator for a function that is a transaction boundary and opens
    its own transactions (a task, a view handler, a service that commits in
    steps): called again when one of them is aborted for a concurrent one.
    It must be safe to call again, as everything django-q2 runs already is.
    Called inside an outer atomic block, it runs once."""

    def wrap(f: Callable[..., T]) -> Callable[..., T]:
        name = getattr(f, "__qualname__", type(f).__name__)

        @functools.wraps(f)
        def wrapper(*args, **kwargs) -> T:
            return _retrying(lambda: f(*args, **kwargs), using=using, attempts=attempts, atomic=False,
                             on_retry=None, name=name)

        return wrapper

    return wrap(fn) if fn is not None else wrap


_VARCHAR_N = re.compile(r"^varchar\(\d+\)$")


def update_rows(model, instances: list, fields: list[str], *, using: str = DEFAULT_DB_ALIAS,
                batch_size: int = 1000) -> None:
    """Write ``fields`` of each instance to its row, per row values (what
    ``bulk_update`` does). On PostgreSQL one ``UPDATE ... FROM (VALUES ...)``
    per ``batch_size`` rows, joined by primary key: ``bulk_update`` writes a
    ``CASE WHEN`` per field over every id, which the server evaluates for
    each row (quadratic: most of a CRM drain's database time for the ids it
    writes back) and which costs the client more to build than to run.
    Elsewhere ``bulk_update`` itself. No signals, as with ``bulk_update``."""
    if not instances:
        return
    db = connections[using]
    if db.vendor != "postgresql":
        model.objects.using(using).bulk_update(instances, fields, batch_size=batch_size)
        return
    qn = db.ops.quote_name
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    row = "(%s, " + ", ".join("%s" for _ in columns) + ")"
    # Each value cast to its column's type, without a varchar's length: an
    # explicit cast to varchar(n) would cut a longer value silently, where the
    # column's own (assignment) cast refuses it, as bulk_update's UPDATE does.
    assignments = ", ".join(f"{qn(f.column)} = v.{qn(f.column)}::{_VARCHAR_N.sub('varchar', f.db_type(db))}"
                            for f in columns)
    names = ", ".join(qn(f.column) for f in columns)
    # In primary-key order, the order bulk_update's id-list scan locks rows in
    # (and every other lead writer's): the join follows the VALUES list.
    ordered = sorted(instances, key=lambda instance: instance.pk)
    with db.cursor() as cursor:
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            params: list = []
            for instance in chunk:
                params.append(instance.pk)
                params.extend(f.get_db_prep_save(getattr(instance, f.attname), db) for f in columns)
            cursor.execute(
                f"UPDATE {qn(meta.db_table)} AS t SET {assignments} "
                f"FROM (VALUES {', '.join([row] * len(chunk))}) AS v(pk, {names}) "
                f"WHERE t.{qn(meta.pk.column)} = v.pk", params)
