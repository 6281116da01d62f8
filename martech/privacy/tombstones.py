"""Salted hashes of erased people's emails and ids.

The salt is ``MARTECH_PRIVACY["SALT"]`` (the environment's
MARTECH_PRIVACY_SALT, else SECRET_KEY): a tombstone can be checked against
an incoming email but not read back, and a dump of the table cannot be
matched against a list of addresses without the salt. Changing the salt
forgets every tombstone, so production sets its own and keeps it.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from django.conf import settings

from martech import configcache

from martech.privacy.models import Tombstone


def _salt() -> bytes:
    return (settings.MARTECH_PRIVACY.get("SALT") or settings.SECRET_KEY).encode()


def _value(kind: str, value: str) -> str:
    value = str(value or "").strip()
    # Emails as the lead keeps them (services.normalize.normalize_email: trimmed, lower-cased).
    return value.lower() if kind == Tombstone.Kind.EMAIL else value


def digest(kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` (an email normalized first)."""
    return hmac.new(_salt(), f"{kind}:{_value(kind, value)}".encode(), hashlib.sha256).hexdigest()


# Every ingest path asks, once per batch or write: the digests are kept per
# process (martech.configcache, bumped by each erasure in its transaction),
# so inside the capture endpoints' configuration snapshot the check costs no
# query. Past CACHE_MAX tombstones they are looked up instead (one indexed
# query), so a process never holds more than a few megabytes of them.
TOMBSTONES_KEY = "privacy.tombstones"
CACHE_MAX = 50_000


def _load_digests() -> frozenset[str] | None:
    digests = list(Tombstone.objects.values_list("digest", flat=True)[:CACHE_MAX + 1])
    return None if len(digests) > CACHE_MAX else frozenset(digests)


def erased_keys(*, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (kind, value) pairs of ``keys`` that belong to an erased person.
    Provided to the core as the ``erased_keys`` hook (martech.hooks), which
    every ingest path asks."""
    by_digest = {digest(kind, value): (kind, value) for kind, value in keys if value}
    if not by_digest:
        return set()
    known = configcache.cached(TOMBSTONES_KEY, _load_digests)
    if known is not None:
        return {pair for d, pair in by_digest.items() if d in known}
    found = Tombstone.objects.filter(digest__in=list(by_digest)).values_list("digest", flat=True)
    return {by_digest[d] for d in found}


def tombstones_add(*, keys: Iterable[tuple[str, str]], request=None) -> int:
    """Record tombstones; one already there stays (idempotent)."""
    rows = {digest(kind, value): kind for kind, value in keys if value}
    if rows:
        Tombstone.objects.bulk_create([Tombstone(digest=d, kind=k, request=request) for d, k in rows.items()],
                                      ignore_conflicts=True)
        configcache.bump(TOMBSTONES_KEY)
    return len(rows)
