"""Reads that span relations or feed pages and reports (STYLE.md)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import OuterRef, QuerySet, Subquery

from martech.models import ConsentChannel, ConsentRecord, Event, Lead, StageTransition


def lead_consent_state(*, lead: Lead) -> dict[str, str | None]:
    """Current consent per channel: the latest record's status, or None when
    the lead never gave or withdrew consent on that channel."""
    state: dict[str, str | None] = {c: None for c in ConsentChannel.values}
    seen = set()
    for channel, status in lead.consent_records.order_by("-recorded_at", "-id").values_list("channel", "status"):
        if channel not in seen:
            state[channel] = status
            seen.add(channel)
    return state


def leads_with_consent(qs: QuerySet[Lead], *, channel: str) -> QuerySet[Lead]:
    """Annotate ``consent_<channel>`` with the latest status, in SQL."""
    latest = (
        ConsentRecord.objects.filter(lead=OuterRef("pk"), channel=channel)
        .order_by("-recorded_at", "-id")
        .values("status")[:1]
    )
    return qs.annotate(**{f"consent_{channel}": Subquery(latest)})


def lead_has_consent(*, lead: Lead, channel: str) -> bool:
    status = (
        ConsentRecord.objects.filter(lead=lead, channel=channel)
        .order_by("-recorded_at", "-id")
        .values_list("status", flat=True)
        .first()
    )
    return status == ConsentRecord.Status.GRANTED


# Event property holding what a public submission sent but could not change.
NOT_APPLIED = "not_applied"


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # "event" | "stage" | "consent"
    title: str
    detail: str


def lead_timeline(*, lead: Lead, limit: int = 200) -> list[TimelineEntry]:
    """The lead's events, stage changes and consent records, newest first.
    Three queries whatever the lead's history size (each capped at ``limit``)."""
    entries: list[TimelineEntry] = []
    for e in Event.objects.filter(lead=lead).select_related("event_type", "campaign").order_by("-occurred_at", "-id")[:limit]:
        utm = " / ".join(v for v in (e.utm_source, e.utm_medium, e.utm_campaign) if v)
        detail = ", ".join(x for x in (utm, e.campaign.name if e.campaign else "", e.get_channel_display() if e.channel else "") if x)
        not_applied = (e.properties or {}).get(NOT_APPLIED)
        if isinstance(not_applied, dict) and not_applied:
            kept = "; ".join(f"{k}={v!r}" for k, v in sorted(not_applied.items()))
            detail = f"{detail}. Submitted, not applied: {kept}" if detail else f"Submitted, not applied: {kept}"
        entries.append(TimelineEntry(e.occurred_at, "event", str(e.event_type), detail))
    for t in (
        StageTransition.objects.filter(lead=lead)
        .select_related("from_stage", "to_stage", "actor")
        .order_by("-changed_at", "-id")[:limit]
    ):
        who = t.actor.get_username() if t.actor else (t.source or "system")
        title = f"Stage: {t.from_stage.name if t.from_stage else '—'} → {t.to_stage.name}"
        entries.append(TimelineEntry(t.changed_at, "stage", title, f"{t.reason} (by {who})"))
    for c in ConsentRecord.objects.filter(lead=lead).order_by("-recorded_at", "-id")[:limit]:
        entries.append(TimelineEntry(c.recorded_at, "consent", f"Consent {c.get_channel_display()}: {c.status}", c.source))
    entries.sort(key=lambda x: x.at, reverse=True)
    return entries[:limit]
