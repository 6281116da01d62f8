"""The first-party website tracker: POST /api/v1/t.

``tracker_ingest`` turns one batch from the tracker script into a call of
``events_ingest`` (the one ingestion path) with the website's source and the
public-input flag, after narrowing what an anonymous page may send:

- page, track and identify calls only (ingest refuses other types per item),
  and track() only for the event types the website lists;
- messageIds and userIds are kept in the website's own namespace
  (``t<website id>:`` / ``web<website id>:``), so a page can neither claim nor
  probe the ids trusted API clients send, nor pose as one of their users;
- the visitor's clock is not trusted: an event's time is the time it was
  received, less its age as the page measured it (``sentAt - timestamp``),
  and that age is at most ``MAX_AGE``, so a page cannot back-date an event
  to become a lead's first touch;
- the client's ``receivedAt`` and ``context.ip`` are dropped; the user agent
  is the request's.

What a browser that asks not to be tracked sends is not stored when the
website respects privacy signals (the script itself sends nothing then; this
covers an old snippet or another sender).
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from martech import configcache
from martech.models import Website, website_key
from martech.services.ingest import REJECTED, IngestResult, ItemResult, events_ingest

log = logging.getLogger(__name__)

# Active websites by publishable key, per process (martech.configcache): every
# tracker request looks its website up; a website changes (key rotated,
# origins edited, deactivated) only through a save (MartechConfig.ready
# watches Website), which makes every process reload.
WEBSITES_KEY = "martech.websites"

MAX_AGE = timedelta(hours=1)
_ID_MAX = 200  # leaves room for the namespace within Event.client_event_id's 255
SCRIPT_PATH = "martech/tracker.js"
ENDPOINT_PATH = "/api/v1/t"


@dataclass
class TrackerResult:
    ingest: IngestResult | None  # None: not stored because of a privacy signal
    message_ids: list[Any]  # as the page sent them, for the answer

    def as_dict(self) -> dict[str, Any]:
        if self.ingest is None:
            return {"status": "ignored", "reason": "privacy_signal"}
        out = self.ingest.as_dict()
        for row, mid in zip(out["results"], self.message_ids):
            row["messageId"] = mid if isinstance(mid, (str, int)) and not isinstance(mid, bool) else None
        return out


def _load_websites() -> dict[str, Website]:
    return {w.key: w for w in Website.objects.filter(is_active=True)}


def website_by_key(key: str) -> Website | None:
    """The active website with this publishable key (a read-only instance)."""
    return configcache.cached(WEBSITES_KEY, _load_websites).get(key)


def _namespaced(value: Any, prefix: str) -> tuple[Any, str | None]:
    """(the id in the website's namespace, or the value untouched for ingest
    to refuse; a reason when it is too long)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return value, None
    text = str(value).strip()
    if len(text) > _ID_MAX:
        return value, f"At most {_ID_MAX} characters."
    return (f"{prefix}{text}" if text else text), None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


def _prepare(raw: Any, *, website: Website, now: datetime, sent_at: datetime | None, user_agent: str):
    """The item as ingest should see it, or ``(field, reason)`` to refuse it."""
    if not isinstance(raw, dict):
        return raw
    item = dict(raw)
    if item.get("type") == "track" and isinstance(item.get("event"), str):
        name = item["event"].strip()
        if name and name not in (website.track_events or []):
            return ("event", f"{name!r} is not a track event of this website; add it to the website's track events.")
    item["messageId"], reason = _namespaced(item.get("messageId"), f"t{website.pk}:")
    if reason:
        return ("messageId", reason)
    if item.get("userId") not in (None, ""):
        item["userId"], reason = _namespaced(item.get("userId"), f"web{website.pk}:")
        if reason:
            return ("userId", reason)
    at = _when(item.get("timestamp"))
    if at is not None:
        sent = _when(item.get("sentAt")) or sent_at
        age = (sent - at) if sent is not None else (now - at)
        age = min(max(age, timedelta(0)), MAX_AGE)
        item["timestamp"] = (now - age).isoformat()
    item.pop("sentAt", None)
    item.pop("receivedAt", None)
    context = item.get("context")
    if isinstance(context, dict):
        context = {k: v for k, v in context.items() if k != "ip"}
        context["userAgent"] = user_agent[:500]
        context["website"] = website.pk
        item["context"] = context
    elif context is None:
        item["context"] = {"userAgent": user_agent[:500], "website": website.pk}
    return item


def tracker_ingest(
    *,
    website: Website,
    items: list[Any],
    sent_at: Any = None,
    user_agent: str = "",
    privacy_signal: bool = False,
) -> TrackerResult:
    """Store one tracker batch for an active website (the caller found it by
    its key and checked the request's origin). Answers every item in order,
    like ``events_ingest``; items refused here never reach it."""
    message_ids = [raw.get("messageId") if isinstance(raw, dict) else None for raw in items]
    if privacy_signal and website.respect_privacy_signals:
        return TrackerResult(ingest=None, message_ids=message_ids)
    now = timezone.now()
    batch_sent = _when(sent_at)
    prepared: list[Any] = []
    refused: dict[int, tuple[str, str]] = {}
    for index, raw in enumerate(items):
        out = _prepare(raw, website=website, now=now, sent_at=batch_sent, user_agent=user_agent)
        if isinstance(out, tuple):
            refused[index] = out
        else:
            prepared.append(out)
    # Public input never goes to the quarantine: a refused item is answered.
    stored = events_ingest(items=prepared, source=website.source, policy="reject", public=True).results
    results: list[ItemResult] = []
    it = iter(stored)
    for index in range(len(items)):
        if index in refused:
            field, reason = refused[index]
            results.append(ItemResult(index, None, REJECTED, field, reason))
        else:
            result = next(it)
            result.index = index
            results.append(result)
    return TrackerResult(ingest=IngestResult(results=results), message_ids=message_ids)


@transaction.atomic
def website_rotate_key(*, website: Website, actor=None) -> str:
    """Give the website a new publishable key; the old one stops working at
    once (pages must get the new snippet). Returns the new key."""
    locked = Website.objects.select_for_update().get(pk=website.pk)
    locked.key = website_key()
    locked._change_reason = "publishable key rotated"
    locked.save(update_fields=["key", "updated_at"])
    website.key = locked.key
    log.info("website %s: publishable key rotated by %s", website.pk, actor)
    return locked.key


def tracker_snippet(*, website: Website, base_url: str) -> str:
    """The HTML a website's pages include (in <head>), ready to copy.
    ``base_url`` is this site's public address (``https://ops.example.com``).

    The first script queues calls made before the tracker loads; the tracker
    script is served from this site's static files under its plain name
    (not the hashed one), so a pasted snippet keeps working across releases.
    """
    base = base_url.rstrip("/")
    script = f"{base}/{settings.STATIC_URL.strip('/')}/{SCRIPT_PATH}"
    attrs = {
        "src": script,
        "data-key": website.key,
        "data-endpoint": f"{base}{ENDPOINT_PATH}",
    }
    if website.respect_privacy_signals:
        attrs["data-respect-privacy"] = "1"
    rendered = " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items())
    stub = (
        "window.martech=window.martech||[];"
        '["page","track","identify"].forEach(function(m){window.martech[m]=window.martech[m]||'
        "function(){window.martech.push([m].concat([].slice.call(arguments)))}});"
    )
    return f"<!-- {html.escape(website.name)}: website tracker -->\n<script>{stub}</script>\n<script async {rendered}></script>"
