"""Touchpoints from events: the one write path for Touchpoint rows.

An event is a touch when its type is marked ``is_touchpoint`` in the catalog
(page views excepted) or when it carries UTMs (e.g. a page view from a
campaign link). Repeated touches
of one channel by one lead inside the session window are one touch: a touch
is dropped when the lead's previous touch of the same channel (kept or not)
was less than ``SESSION_MINUTES`` before it, so a session lasts while the
activity goes on, as web analytics sessions do.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from attribution.models import Touchpoint
from martech.models import Channel, Event, Lead

# A page view is a touch only when it carries UTMs (the issue's "page views
# with UTMs"): every other page view is browsing, not marketing.
PAGE_VIEW = "page_view"
TOUCH_EVENTS = (
    (Q(event_type__is_touchpoint=True) & ~Q(event_type__name=PAGE_VIEW))
    | ~Q(utm_source="") | ~Q(utm_medium="") | ~Q(utm_campaign="")
)


def touch_channel(channel: str, campaign_channel: str | None) -> str:
    """The event's channel as resolved at ingest, else its campaign's."""
    return channel or campaign_channel or Channel.OTHER


def sessionize(events: list[dict], *, session: timedelta) -> list[dict]:
    """Keep the first touch of each (channel, session); ``events`` in time order."""
    last_seen: dict[str, object] = {}
    kept = []
    for ev in events:
        prev = last_seen.get(ev["channel"])
        last_seen[ev["channel"]] = ev["occurred_at"]
        if prev is not None and ev["occurred_at"] - prev < session:
            continue
        kept.append(ev)
    return kept


@transaction.atomic
def touchpoints_rebuild(*, lead_ids: Iterable[int]) -> dict[str, int]:
    """Make the touchpoints of ``lead_ids`` match their events. Idempotent: a
    second call changes nothing. Touchpoints are kept by event id, so the
    credits that point at unchanged touches survive."""
    lead_ids = sorted(set(lead_ids))
    session = timedelta(minutes=settings.MARTECH_ATTRIBUTION["SESSION_MINUTES"])
    # The leads locked first, in key order (the lock order of every lead write): two
    # rebuilds of one lead (a new event and a merge) take turns instead of both
    # inserting its new touches.
    created_at = dict(Lead.objects.select_for_update().filter(pk__in=lead_ids).order_by("pk").values_list("pk", "created_at"))
    per_lead: dict[int, list[dict]] = defaultdict(list)
    rows = (
        Event.objects.filter(TOUCH_EVENTS, lead_id__in=lead_ids)
        .order_by("lead_id", "occurred_at", "id")
        .values("id", "lead_id", "occurred_at", "channel", "campaign_id", "campaign__channel")
    )
    for row in rows:
        row["channel"] = touch_channel(row["channel"], row.pop("campaign__channel"))
        per_lead[row["lead_id"]].append(row)

    wanted: dict[int, Touchpoint] = {}
    for lead_id, events in per_lead.items():
        kept = sessionize(events, session=session)
        before = [ev for ev in kept if ev["occurred_at"] <= created_at[lead_id]]
        creation = (before[-1] if before else kept[0])["id"]
        for ev in kept:
            wanted[ev["id"]] = Touchpoint(
                lead_id=lead_id, event_id=ev["id"], occurred_at=ev["occurred_at"], channel=ev["channel"],
                campaign_id=ev["campaign_id"], is_lead_creation=ev["id"] == creation,
            )

    existing = {tp.event_id: tp for tp in Touchpoint.objects.filter(lead_id__in=lead_ids)}
    stale = [tp.pk for event_id, tp in existing.items() if event_id not in wanted]
    fields = ("lead_id", "occurred_at", "channel", "campaign_id", "is_lead_creation")
    changed = []
    for event_id, tp in existing.items():
        new = wanted.pop(event_id, None)
        if new is not None and any(getattr(tp, f) != getattr(new, f) for f in fields):
            for f in fields:
                setattr(tp, f, getattr(new, f))
            changed.append(tp)
    # An event moved to another lead (a merge) keeps its touch row: update, not insert.
    moved = {tp.event_id: tp for tp in Touchpoint.objects.filter(event_id__in=list(wanted)).exclude(lead_id__in=lead_ids)}
    for event_id, tp in moved.items():
        new = wanted.pop(event_id)
        for f in fields:
            setattr(tp, f, getattr(new, f))
        changed.append(tp)
    Touchpoint.objects.filter(pk__in=stale).delete()
    Touchpoint.objects.bulk_update(changed, ["lead", "occurred_at", "channel", "campaign", "is_lead_creation"], batch_size=1000)
    Touchpoint.objects.bulk_create(wanted.values(), batch_size=2000)
    return {"created": len(wanted), "updated": len(changed), "deleted": len(stale)}
