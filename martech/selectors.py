"""Reads that span relations or feed pages and reports (docs/style.md, 2)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import OuterRef, QuerySet, Subquery

from martech import hooks
from martech.models import ConsentChannel, ConsentRecord, Event, Lead, SalesTask, StageTransition, SubscriptionType


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


# --- The lead 360 page ------------------------------------------------------------

# Rows each list on the 360 page shows at most (newest first); the page links
# to the full lists. The caps keep the page's query count and size fixed.
LEAD_360_ROWS = 50
LEAD_360_TIMELINE = 100
# The lead list's annotation with the routed rep's name (routing provides it
# through hooks "lead_list_annotations"; the owner column shows it when the
# lead has no owner user, as a rep without a user account leaves it empty).
ROUTED_REP = "routed_rep_name"


def user_label(user) -> str:
    """A person as the console names them: full name, else username."""
    if user is None:
        return ""
    return user.get_full_name() or user.get_username()


@dataclass(frozen=True)
class Lead360Section:
    key: str
    title: str
    template: str
    context: dict


@dataclass(frozen=True)
class Lead360:
    lead: Lead
    # (label, value) pairs for the page's header: the core's, then what the
    # sections add (routing's "Routed rep").
    facts: list[tuple[str, str]]
    sections: list[Lead360Section]


def lead_360(*, lead_id: int, user) -> Lead360 | None:
    """Everything the lead 360 page shows for ``user``: the lead and each
    registered section (``hooks.provide_lead_section``) the user may view.
    One query for the lead plus a fixed number per section, whatever the
    size of the lead's history. None when there is no such lead. The caller
    checks that ``user`` may view leads at all."""
    lead = Lead.objects.select_related("account", "lifecycle_stage", "owner").filter(pk=lead_id).first()
    if lead is None:
        return None
    facts: list[tuple[str, str]] = [
        ("Stage", lead.lifecycle_stage.name if lead.lifecycle_stage else "—"),
        ("Score", f"{lead.total_score} (fit {lead.fit_score}, engagement {lead.engagement_score})"),
        ("Owner", user_label(lead.owner) or "—"),
        ("Company", lead.company_name or (lead.account.name if lead.account else "") or "—"),
        ("Country", lead.country or "—"),
        ("Created", f"{lead.created_at:%Y-%m-%d %H:%M} UTC"),
    ]
    sections = []
    for section in hooks.lead_sections():
        if not user.has_perms(section.permissions):
            continue
        context = section.build(lead=lead, user=user)
        facts.extend(context.pop("facts", ()))
        sections.append(Lead360Section(section.key, section.title, section.template, {**context, "lead": lead}))
    return Lead360(lead=lead, facts=facts, sections=sections)


def _stage_section(*, lead: Lead, user) -> dict:
    rows = list(
        StageTransition.objects.filter(lead=lead)
        .select_related("from_stage", "to_stage", "actor")
        .order_by("-changed_at", "-id")[:LEAD_360_ROWS]
    )
    return {"rows": [{"at": t.changed_at, "from": t.from_stage.name if t.from_stage else "—", "to": t.to_stage.name,
                      "reason": t.reason, "by": user_label(t.actor) or t.source or "system"} for t in rows],
            "capped": len(rows) >= LEAD_360_ROWS}


# Consent evidence keys (ConsentRecord.evidence) in words.
EVIDENCE_LABELS = {"form": "Form", "ip": "IP address", "text": "Consent text shown", "user_agent": "Browser",
                   "url": "Page", "page": "Page"}


def _consent_section(*, lead: Lead, user) -> dict:
    # The latest record per channel: one query on consent_latest_idx per
    # channel would be four; a lead's consent records are few, so one query
    # over them (capped) and the first per channel is taken here.
    latest: dict[str, ConsentRecord] = {}
    count = 0
    for record in (ConsentRecord.objects.filter(lead=lead).select_related("actor")
                   .order_by("-recorded_at", "-id")[:500]):
        count += 1
        latest.setdefault(record.channel, record)
    rows = []
    for channel, label in ConsentChannel.choices:
        record = latest.get(channel)
        evidence = []
        if record is not None:
            evidence = [(EVIDENCE_LABELS.get(k, k.replace("_", " ").capitalize()), v)
                        for k, v in sorted((record.evidence or {}).items()) if v not in (None, "")]
        rows.append({"channel": label, "record": record, "status": record.get_status_display() if record else "Not asked",
                     "state": record.status if record else "none",
                     "by": (user_label(record.actor) or record.source) if record else "", "evidence": evidence})
    return {"rows": rows, "records": count}


def _task_section(*, lead: Lead, user) -> dict:
    rows = list(SalesTask.objects.filter(lead=lead).select_related("owner")
                .order_by("status", "due_at", "-id")[:LEAD_360_ROWS])
    return {"rows": [{"task": t, "owner": user_label(t.owner) or "—"} for t in rows],
            "capped": len(rows) >= LEAD_360_ROWS}


def _timeline_section(*, lead: Lead, user) -> dict:
    return {"entries": lead_timeline(lead=lead, limit=LEAD_360_TIMELINE), "limit": LEAD_360_TIMELINE}


for _section in (
    hooks.LeadSection("stages", "Stage history", 30, "admin/martech/lead/360/stages.html",
                      ("martech.view_stagetransition",), _stage_section),
    hooks.LeadSection("consent", "Consent per channel", 40, "admin/martech/lead/360/consent.html",
                      ("martech.view_consentrecord",), _consent_section),
    hooks.LeadSection("tasks", "Sales tasks", 70, "admin/martech/lead/360/tasks.html",
                      ("martech.view_salestask",), _task_section),
    hooks.LeadSection("timeline", "Timeline", 100, "admin/martech/lead/timeline.html",
                      ("martech.view_event",), _timeline_section),
):
    hooks.provide_lead_section(_section)
