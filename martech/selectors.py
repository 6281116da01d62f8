"""Reads that span relations or feed pages and reports (STYLE.md)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import OuterRef, QuerySet, Subquery

from martech.models import ConsentChannel, ConsentRecord, Event, Lead, StageTransition, SubscriptionType


def lead_consent_state(*, lead: Lead) -> dict[str, str | None]:
    """Current consent per channel: the latest record's status, or None when
    the lead never gave or withdrew consent on that channel."""
    state: dict[str, str | None] = {c: None for c in ConsentChannel.values}
    seen = set()
    records = lead.consent_records.filter(topic__isnull=True)
    for channel, status in records.order_by("-recorded_at", "-id").values_list("channel", "status"):
        if channel not in seen:
            state[channel] = status
            seen.add(channel)
    return state


def leads_with_consent(qs: QuerySet[Lead], *, channel: str) -> QuerySet[Lead]:
    """Annotate ``consent_<channel>`` with the latest status, in SQL."""
    latest = (
        ConsentRecord.objects.filter(lead=OuterRef("pk"), channel=channel, topic__isnull=True)
        .order_by("-recorded_at", "-id")
        .values("status")[:1]
    )
    return qs.annotate(**{f"consent_{channel}": Subquery(latest)})


def lead_has_consent(*, lead: Lead, channel: str) -> bool:
    status = (
        ConsentRecord.objects.filter(lead=lead, channel=channel, topic__isnull=True)
        .order_by("-recorded_at", "-id")
        .values_list("status", flat=True)
        .first()
    )
    return status == ConsentRecord.Status.GRANTED


def lead_topic_state(*, lead: Lead) -> dict[int, str]:
    """{topic id: the latest status} of the topics the lead chose on (left
    or rejoined); a topic not here is one the lead never chose on: subscribed
    while the channel's consent is granted. One query."""
    state: dict[int, str] = {}
    for topic_id, status in (ConsentRecord.objects.filter(lead=lead, topic__isnull=False)
                             .order_by("topic_id", "-recorded_at", "-id").values_list("topic_id", "status")):
        state.setdefault(topic_id, status)
    return state


def lead_left_topic(*, lead_id: int, topic_id: int) -> bool:
    """Whether the lead's latest choice on the topic is to leave it."""
    status = (ConsentRecord.objects.filter(lead_id=lead_id, topic_id=topic_id).order_by("-recorded_at", "-id")
              .values_list("status", flat=True).first())
    return status == ConsentRecord.Status.WITHDRAWN


@dataclass(frozen=True)
class TopicChoice:
    topic: SubscriptionType
    subscribed: bool


@dataclass(frozen=True)
class Preferences:
    """What the preference page shows a person: their consent per channel
    (granted, withdrawn or None) and, per active topic, whether they get it."""

    channels: dict[str, str | None]
    topics: list[TopicChoice]


def lead_preferences(*, lead: Lead) -> Preferences:
    """The lead's own preferences, nothing else about them. Three queries."""
    left = {pk for pk, status in lead_topic_state(lead=lead).items() if status == ConsentRecord.Status.WITHDRAWN}
    topics = [TopicChoice(t, t.pk not in left) for t in SubscriptionType.objects.filter(is_active=True)]
    return Preferences(channels=lead_consent_state(lead=lead), topics=topics)


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
    for c in ConsentRecord.objects.filter(lead=lead).select_related("topic").order_by("-recorded_at", "-id")[:limit]:
        what = f"{c.get_channel_display()}, topic {c.topic.name}" if c.topic_id else c.get_channel_display()
        entries.append(TimelineEntry(c.recorded_at, "consent", f"Consent {what}: {c.status}", c.source))
    entries.sort(key=lambda x: x.at, reverse=True)
    return entries[:limit]
