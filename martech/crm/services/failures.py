"""Pull failures: what a pull run did to each record, settled into PullFailure, retried later."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Value
from django.db.models.functions import Concat
from django.utils import timezone

from martech.crm.connectors.base import AuthError, Connector, PermanentError
from martech.crm.models import Connection, PullFailure, SyncRun
from martech.crm.services.push import _backoff, lease

log = logging.getLogger(__name__)


# --- pull failures ------------------------------------------------------------
# A pulled record (or link) that cannot be applied is kept as a PullFailure
# with its error, and each later pull of its type first fetches the due ones
# again (in batch) and applies them; after MAX_ATTEMPTS it is a dead letter
# (admin: pull failures, "retry now"). The cursor still moves past it, so one
# bad record never holds the others back.

# Due failures one pull run takes again (the rest wait for the next run).
PULL_RETRY_BATCH = 500


@dataclass
class PullOutcomes:
    """What one pull run did to each record, settled into PullFailure at its end."""

    result: dict[str, str | None] = field(default_factory=dict)  # remote id -> its error, None once applied
    retried: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # retried and no longer in the CRM

    def failed(self, remote_id: str, exc: ValidationError) -> str:
        self.result[remote_id] = _rejection(exc)
        return self.result[remote_id]

    def applied(self, remote_id: str) -> None:
        self.result[remote_id] = None


def _rejection(exc: ValidationError) -> str:
    """The field and the reason, as the run's error has always shown them."""
    return str(exc.message_dict if hasattr(exc, "message_dict") else exc)


def _errors_summary(errors: list[str], limit: int = 2000) -> str:
    """A run's error: every failure, not only the last, cut to the column
    with the count of those left out (each is kept as a PullFailure)."""
    text = "; ".join(errors)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    for error in errors:
        tail = f"; ... and {len(errors) - len(shown)} more (see pull failures)"
        if len("; ".join([*shown, error])) + len(tail) > limit:
            break
        shown.append(error)
    if not shown:  # one error longer than the column
        return errors[0][:limit]
    return "; ".join(shown) + f"; ... and {len(errors) - len(shown)} more (see pull failures)"


def _pull_failures_due(connection: Connection, key: str) -> list[str]:
    """Take the due pending failures of one object or link type under a
    lease (like the outbox's ``_claim``), so two overlapping pulls do not
    both retry them; a run that dies leaves them due again after the lease."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(PullFailure.objects.select_for_update(skip_locked=True)
                    .filter(connection=connection, object=key, status=PullFailure.Status.PENDING,
                            next_attempt_at__lte=now)
                    .order_by("next_attempt_at", "pk").values_list("pk", "remote_id")[:PULL_RETRY_BATCH])
        if rows:
            PullFailure.objects.filter(pk__in=[pk for pk, _ in rows]).update(next_attempt_at=now + lease())
    return [remote_id for _, remote_id in rows]


def _tally_page(run: SyncRun, outcomes: PullOutcomes, errors: list[str], page: list,
                results: list[str | ValidationError]) -> None:
    """Count a pulled page's outcomes into its run and note each record's
    (a refused one with its field and reason, in the run's error too)."""
    for pulled, outcome in zip(page, results):
        if isinstance(outcome, ValidationError):
            run.failed += 1
            errors.append(f"{pulled.remote_id}: {outcomes.failed(pulled.remote_id, outcome)}")
            continue
        if outcome == "pulled":
            run.pulled += 1
        else:
            run.skipped += 1
        outcomes.applied(pulled.remote_id)


def _refetch_refused(exc: PermanentError, remote_ids: list[str], run: SyncRun, outcomes: PullOutcomes,
                    errors: list[str]) -> None:
    """The CRM refused the fetch itself (not a 429/5xx, which stop the run
    and leave the failures due after the lease): an attempt of each, so a
    bad row goes dead instead of holding the type's pulls back."""
    if isinstance(exc, AuthError):
        raise exc
    for remote_id in remote_ids:
        outcomes.result[remote_id] = f"fetching it again: {exc}"
    run.failed += len(remote_ids)
    errors.append(f"fetching {len(remote_ids)} earlier failure(s) again: {exc}")


def _link_retry(connection: Connection, connector: Connector, link: str, run: SyncRun,
                outcomes: PullOutcomes, errors: list[str]) -> list:
    """The due failed links of type ``link``, fetched again (one query per
    page, ``fetch_links``), for ``links_pull`` to apply ahead of the changed ones."""
    fetch = getattr(connector, "fetch_links", None)
    remote_ids = _pull_failures_due(connection, link) if fetch is not None else []
    if not remote_ids:
        return []
    run.retried += len(remote_ids)
    outcomes.retried.update(remote_ids)
    try:
        fetched = fetch(link, remote_ids)
    except PermanentError as exc:
        _refetch_refused(exc, remote_ids, run, outcomes, errors)
        return []
    found = {p.remote_id for p in fetched}
    outcomes.gone.update(r for r in remote_ids if r not in found)
    return fetched


def _pull_failure_note(connection: Connection, key: str, remote_id: str, error: str, now: dt.datetime) -> None:
    """Record one failure: a new row, or the same row again (a retry, or a
    new version from the CRM that fails too), so there is never a second
    one. A resolved row opens again from its first attempt; a dead one stays
    dead (the admin's "retry now" brings it back) with the newest error."""
    max_attempts = settings.MARTECH_CRM["MAX_ATTEMPTS"]
    with transaction.atomic():
        row, created = PullFailure.objects.select_for_update().get_or_create(
            connection=connection, object=key, remote_id=remote_id,
            defaults={"error": error[:4000], "attempts": 1, "first_failed_at": now, "last_failed_at": now,
                      "next_attempt_at": now + _backoff(1),
                      "status": PullFailure.Status.DEAD if max_attempts <= 1 else PullFailure.Status.PENDING})
        if created:
            return
        if row.status == PullFailure.Status.RESOLVED:
            row.status, row.attempts, row.first_failed_at, row.resolved_at = PullFailure.Status.PENDING, 0, now, None
        row.attempts += 1
        row.error, row.last_failed_at = error[:4000], now
        if row.attempts >= max_attempts:
            row.status = PullFailure.Status.DEAD
        else:
            row.next_attempt_at = now + _backoff(row.attempts)
        row.save()


def _pull_failures_settle(connection: Connection, key: str, outcomes: PullOutcomes) -> int:
    """At the end of a pull: record each record that failed, resolve the
    failures of records now applied (or gone from the CRM); returns how
    many retried records went through."""
    now = timezone.now()
    for remote_id, error in sorted(outcomes.result.items()):  # (one lock order: by remote id)
        if error is not None:
            _pull_failure_note(connection, key, remote_id, error, now)
    applied = {r for r, error in outcomes.result.items() if error is None}
    # The open failures of this type are few; the records a pull applied can be many.
    open_ids = set(PullFailure.objects.filter(
        connection=connection, object=key, status__in=[PullFailure.Status.PENDING, PullFailure.Status.DEAD])
        .values_list("remote_id", flat=True)) if applied or outcomes.gone else set()
    done = sorted(open_ids & applied)
    if done:
        PullFailure.objects.filter(connection=connection, object=key, remote_id__in=done).update(
            status=PullFailure.Status.RESOLVED, resolved_at=now, next_attempt_at=now)
    gone = sorted((open_ids & outcomes.gone) - set(outcomes.result))
    for remote_id in gone:
        # Nothing left to apply: kept as resolved, with why.
        PullFailure.objects.filter(connection=connection, object=key, remote_id=remote_id).update(
            status=PullFailure.Status.RESOLVED, resolved_at=now, next_attempt_at=now,
            error=Concat(Value("No longer in the CRM. Last error: "), "error"))
    return len(outcomes.retried & applied)


@transaction.atomic
def pull_failure_retry(*, items: Iterable[PullFailure], actor=None) -> int:
    """Make pending or dead pull failures due now with fresh attempts (the
    admin's "retry now"), then wake one pull per connection and type after
    the commit; the pull fetches and applies them. Resolved ones are left."""
    keys: set[tuple[int, str]] = set()
    ids = []
    for failure in items:
        if failure.status == PullFailure.Status.RESOLVED:
            continue
        ids.append(failure.pk)
        keys.add((failure.connection_id, failure.object))
    PullFailure.objects.filter(pk__in=ids).update(status=PullFailure.Status.PENDING, attempts=0,
                                                  next_attempt_at=timezone.now())
    for connection_id, key in sorted(keys):
        transaction.on_commit(lambda c=connection_id, k=key: _enqueue_pull(c, k))
    log.info("pull failures retried: %s by %s", len(ids), actor)
    return len(ids)


def _enqueue_pull(connection_id: int, key: str) -> None:
    from django_q.tasks import async_task

    async_task("martech.crm.tasks.pull_one", connection_id, key)
