"""The connector interface and the retry policy every connector shares."""
from __future__ import annotations

import random
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


class TransientError(Exception):
    """A 429, a 5xx or a timeout: worth retrying."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """The CRM refused the whole call (4xx other than 429): not retried."""


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


def with_retries(call: Callable[[], Any], stats: CallStats, *, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run one API call. 429 waits for Retry-After; 5xx and timeouts back off
    exponentially with full jitter; up to CRM["RETRIES"] retries, then the
    TransientError goes up (the outbox item stays pending and is tried later).
    The calls are idempotent upserts, so a retry after a lost answer creates
    no duplicate."""
    conf = settings.MARTECH_CRM
    attempt = 0
    while True:
        stats.api_calls += 1
        try:
            return call()
        except TransientError as exc:
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
