"""The connector interface and the retry policy every connector shares."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings


@dataclass
class PushRecord:
    local_id: int
    key: str  # the CRM's upsert key (email for contacts, domain for companies, our id for deals)
    properties: dict[str, str]
    # Associated records to link, as remote ids by object key: {"company": ["123"]}.
    associations: dict[str, list[str]] = field(default_factory=dict)
    remote_id: str = ""  # known from an earlier push or pull (Salesforce updates by it)
    # What the last push linked (or the last pull agreed), remote ids by object
    # key; a link there and no longer in ``associations`` is stale and removed.
    # None: not known (a record pushed before this was kept).
    linked_before: dict[str, list[str]] | None = None
    # Fields of links the connector declares (objects.Link), by link key, then
    # by the associated record's remote id: {"contact_role": {"003...": {"role": "", "is_primary": True}}}.
    link_details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Removable links (objects.Link.removable) as both sides had them at the last
    # sync (PushState.links), same shape as link_details: the connector deletes
    # those gone from link_details (no other), and updates only those changed here.
    link_synced: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class PushResult:
    local_id: int
    remote_id: str = ""
    error: str = ""  # a per-record refusal by the CRM


@dataclass
class Pulled:
    remote_id: str
    properties: dict[str, str]
    modified_at: str  # ISO 8601, the cursor's unit
    # Associated records' remote ids by object key, when the connector reads them ({"company": ["12"]}).
    associations: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PulledLink:
    """One link record changed in the CRM (a CampaignMember, an OpportunityContactRole)."""
    remote_id: str
    parent_id: str  # the parent record's remote id (CampaignId, OpportunityId)
    other_id: str  # the associated record's remote id (LeadId or ContactId)
    fields: dict[str, Any]  # the link's own fields, under the Link's local names ("status", "is_primary")
    modified_at: str  # ISO 8601, the cursor's unit


@dataclass
class DeletedPage:
    """Records deleted in the CRM in one window (Salesforce Get Deleted)."""
    records: list[tuple[str, str]]  # (remote id, deleted at ISO 8601), oldest first
    cursor: str  # where the next window starts (the CRM's last date covered)
    gap: str = ""  # the stored cursor when it was older than the CRM still answers for


@dataclass
class ListChange:
    """What one membership call of a segment mirror did (martech.crm.lists),
    by the person's CRM id: members now (new or already there, with the
    member record's id where the CRM has one: a Salesforce CampaignMember),
    not members now (removed, or already not), and the adds refused, each
    with the CRM's reason. Every id sent is in exactly one of the three."""
    added: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class CallStats:
    api_calls: int = 0
    retries: int = 0
    slept: list[float] = field(default_factory=list)
    # Waits before a call to stay under the CRM's rate limit (RateLimiter), seconds.
    paced: list[float] = field(default_factory=list)


class TransientError(Exception):
    """A 429, a 5xx or a timeout: worth retrying."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The CRM's rate, daily or org limit refused the call (a 429 of any
    policy, HubSpot's DAILY 429, Salesforce's 403 REQUEST_LIMIT_EXCEEDED).
    Nothing is wrong with the records: the connection pauses
    (services.connection_pause) and no record is charged an attempt.

    ``retry_after``: the CRM's Retry-After, when it sent one (a short one is
    waited out inside the call, ``with_retries``). ``wait``: seconds until
    the window resets when the answer says so otherwise (HubSpot's
    X-HubSpot-RateLimit-Interval-Milliseconds). ``policy``: the limit's name
    (HubSpot's policyName, e.g. TEN_SECONDLY_ROLLING or DAILY; Salesforce's
    errorCode). ``daily``: the day's (or the org's rolling 24 h) allowance is
    spent, so no short wait helps."""

    def __init__(self, message: str, *, retry_after: float | None = None, wait: float | None = None,
                 policy: str = "", daily: bool = False):
        super().__init__(message, retry_after=retry_after)
        self.wait = wait
        self.policy = policy
        self.daily = daily


class PermanentError(Exception):
    """The CRM refused the whole call (4xx other than 429): not retried."""


class PartialPush(Exception):
    """A push of several calls (chunks of 100 or 200) failed part way:
    ``results`` holds what the CRM answered for the calls that went through
    (written there: the engine records them as pushed), ``error`` is the
    failure (a TransientError, RateLimited, PermanentError or AuthError). The
    records in no result were not written by this push (their chunk failed
    or was never sent)."""

    def __init__(self, results: list["PushResult"], error: Exception):
        super().__init__(str(error))
        self.results = results
        self.error = error


class AuthError(PermanentError):
    """Credentials refused even after one renewal: the connection stops."""


class Connector(Protocol):
    """One CRM. ``objects`` declares the object types it syncs: our object
    key (martech.crm.objects) -> the provider's object name. ``obj``
    arguments are our keys."""

    stats: CallStats
    objects: dict[str, str]

    def request_body(self, obj: str, records: list[PushRecord]) -> dict: ...

    def push_batch(self, obj: str, records: list[PushRecord]) -> list[PushResult]: ...
    def pull_since(self, obj: str, cursor: str, properties: list[str]) -> Iterator[Pulled]: ...
    def fetch_one(self, obj: str, remote_id: str, properties: list[str]) -> Pulled | None: ...
    # Optional, for connectors that declare ``links`` (link key -> object name):
    # pull_links(link, cursor) -> Iterator[PulledLink] in modification order, and
    # fetch_many(obj, remote_ids, properties) -> list[Pulled] (one query for the
    # records a pulled link names that are not here yet).
    # Optional, for a CRM whose deletions a modification-time pull cannot see:
    # deleted_since(key, cursor) -> DeletedPage | None (None: nothing to ask yet),
    # and deleted_links(link, remote_ids) -> {link id: (parent id, other id)}.
    # Optional, for connectors that declare "list" (segment mirrors, martech.crm.lists):
    # list_batch (ids per list_change call), list_ensure(name=, remote_id=, key=) ->
    # (remote id, existed), list_members(remote_id) -> {person id: member id},
    # list_change(remote_id, add=[person ids], remove={person id: member id}) -> ListChange.
    def verify_webhook(self, *, method: str, uri: str, body: bytes, headers: dict[str, str]) -> bool: ...
    def owners(self) -> list[dict[str, str]]: ...


# The longest Retry-After waited out inside one call (and never more than
# BACKOFF_MAX): a 429 asking for longer, or one without Retry-After (HubSpot's
# documented 429 has none), goes up as RateLimited and pauses the connection
# instead of holding a worker; so does a 429 still there after RETRIES.
IN_CALL_RETRY_AFTER_MAX = 10.0


def in_call_wait_max() -> float:
    return min(IN_CALL_RETRY_AFTER_MAX, settings.MARTECH_CRM["BACKOFF_MAX"])


def with_retries(call: Callable[[], Any], stats: CallStats, *, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run one API call. A 429 with a short Retry-After (at most
    ``in_call_wait_max()``) waits for it; a longer one, or a limit answer
    without Retry-After, goes up at once (RateLimited: the caller pauses the
    connection). 5xx and timeouts back off exponentially with full jitter; up
    to CRM["RETRIES"] retries, then the TransientError goes up (the outbox
    item stays pending and is tried later). The calls are idempotent
    upserts, so a retry after a lost answer creates no duplicate."""
    conf = settings.MARTECH_CRM
    attempt = 0
    while True:
        stats.api_calls += 1
        try:
            return call()
        except TransientError as exc:
            if isinstance(exc, RateLimited) and (exc.daily or exc.retry_after is None
                                                 or exc.retry_after > in_call_wait_max()):
                raise
            if attempt >= conf["RETRIES"]:
                raise
            if exc.retry_after is not None:
                wait = exc.retry_after
            else:
                wait = random.uniform(0, conf["BACKOFF_BASE"] * (2 ** attempt))
            wait = min(wait, conf["BACKOFF_MAX"])
            stats.retries += 1
            stats.slept.append(wait)
            sleep(wait)
            attempt += 1


def parse_rate(text: str) -> tuple[int, float]:
    """"190/10s" -> (190, 10.0): requests per window (s, m or h)."""
    try:
        count, window = text.strip().split("/", 1)
        window = window.strip().lower()
        unit = {"s": 1, "m": 60, "h": 3600}[window[-1]] if window[-1] in "smh" else 1
        number = window[:-1] if window[-1] in "smh" else window
        limit, seconds = int(count), float(number or 1) * unit
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"not a rate like 190/10s: {text!r}") from None
    if limit < 1 or seconds <= 0:
        raise ValueError(f"not a rate like 190/10s: {text!r}")
    return limit, seconds


class RateLimiter:
    """At most ``limit`` calls in any ``window`` seconds, shared by the
    threads of one process (one limiter per connection and CRM URL,
    ``limiter_for``). A call holds a slot from its start until ``window``
    after its answer came back: the CRM counts a call when it receives it,
    which is after we sent it and before we hear back, so slots timed from
    the answer can never let the CRM's rolling window see more than
    ``limit`` of ours. ``hold(seconds)`` keeps every call back that long
    (the CRM said its remaining allowance in the window is low: calls made
    elsewhere with the same token count there too)."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._running = 0  # calls sent and not answered yet
        self._ends: list[float] = []  # answered calls: when each stops counting
        self._held_until = 0.0
        self._cond = threading.Condition()

    def acquire(self, paced: list[float] | None = None) -> None:
        """Wait until a call may go, and count it as running (``release`` after)."""
        start = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                self._ends = [end for end in self._ends if end > now]
                if now >= self._held_until and self._running + len(self._ends) < self.limit:
                    self._running += 1
                    break
                if now < self._held_until:
                    wait = self._held_until - now
                else:
                    # The first slot to free; only running calls: their answers free one (notify).
                    wait = min(self._ends) - now if self._ends else None
                self._cond.wait(timeout=wait)
        waited = self.clock() - start
        if paced is not None and waited > 0.001:
            paced.append(round(waited, 3))

    def release(self) -> None:
        with self._cond:
            self._running = max(self._running - 1, 0)
            self._ends.append(self.clock() + self.window)
            self._cond.notify_all()

    def hold(self, seconds: float) -> None:
        with self._cond:
            self._held_until = max(self._held_until, self.clock() + seconds)
            self._cond.notify_all()


_limiters: dict[tuple, RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(key: tuple, rate: str) -> RateLimiter:
    """The process's limiter for ``key`` (connection id, CRM URL) at ``rate``
    ("190/10s"); a changed rate setting makes a new one."""
    limit, window = parse_rate(rate)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None or (limiter.limit, limiter.window) != (limit, window):
            limiter = _limiters[key] = RateLimiter(limit, window)
        return limiter
