"""UTM normalization, channel grouping, campaign lookup, and campaign
membership recorded from a CRM (``campaign_member_record``).

The alias table and channel rules are editable data. One ``UtmNormalizer``
loads them once, so a 500-event batch costs two queries here, not 1,000.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from martech import configcache, hooks
from martech.models import Campaign, Channel, ChannelRule, UtmAlias
from martech.safe_regex import PatternError, compile_pattern
from martech.services.normalize import clean_utm

logger = logging.getLogger(__name__)

UTM_FIELDS = ("source", "medium", "campaign", "term", "content")
# The alias table and channel rules, per process (martech.configcache): every
# events batch normalizes with them (MartechConfig.ready watches both models).
UTM_KEY = "martech.utm"


@dataclass
class UtmNormalizer:
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    rules: list[tuple[object | None, object | None, str]] = field(default_factory=list)

    @classmethod
    def load(cls) -> "UtmNormalizer":
        aliases = {(a.field, a.alias): a.canonical for a in UtmAlias.objects.all()}
        rules = []
        for r in ChannelRule.objects.filter(is_active=True).order_by("order", "id"):
            try:
                rules.append(
                    (
                        compile_pattern(r.source_pattern) if r.source_pattern else None,
                        compile_pattern(r.medium_pattern) if r.medium_pattern else None,
                        r.channel,
                    )
                )
            except PatternError as exc:
                # Saved before patterns ran with RE2 (the admin refuses it now):
                # the rule matches nothing until it is fixed, and says so.
                logger.error("Channel rule %s (%s) is skipped: %s", r.pk, r.name, exc)
        return cls(aliases=aliases, rules=rules)

    @classmethod
    def cached(cls) -> "UtmNormalizer":
        """This process's normalizer, current with the tables (read-only)."""
        return configcache.cached(UTM_KEY, cls.load)

    def normalize(self, field_name: str, value: str | None) -> str:
        """Trim, lower-case, then apply the alias table for source, medium and campaign."""
        value = clean_utm(value)
        return self.aliases.get((field_name, value), value)

    def normalize_all(self, utm: dict[str, str | None]) -> dict[str, str]:
        return {f: self.normalize(f, utm.get(f)) for f in UTM_FIELDS}

    def channel(self, source: str, medium: str) -> str:
        """The first matching rule's channel; ``other`` when none matches."""
        for source_re, medium_re, channel in self.rules:
            if source_re is not None and not source_re.fullmatch(source):
                continue
            if medium_re is not None and not medium_re.fullmatch(medium):
                continue
            return channel
        return Channel.OTHER


def campaigns_by_utm(triples: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], Campaign]:
    """Campaigns for normalized (source, medium, campaign) triples, one query.
    A campaign matches on its utm_campaign key and, where it sets them, its
    source and medium; the most specific match wins."""
    names = {t[2] for t in triples if t[2]}
    if not names:
        return {}
    found: dict[tuple[str, str, str], Campaign] = {}
    candidates = list(Campaign.objects.filter(utm_campaign__in=names))
    for triple in triples:
        source, medium, name = triple
        best, best_rank = None, -1
        for c in candidates:
            if c.utm_campaign != name:
                continue
            if (c.utm_source and c.utm_source != source) or (c.utm_medium and c.utm_medium != medium):
                continue
            rank = bool(c.utm_source) + bool(c.utm_medium)
            if rank > best_rank:
                best, best_rank = c, rank
        if best is not None:
            found[triple] = best
    return found


def campaign_save(*, campaign: Campaign, source: str = "") -> Campaign:
    """Normalize the campaign's UTM keys with the alias table, validate and
    save. Announced on ``hooks.records_changed("campaigns", ...)`` in the same
    transaction (the CRM outbox queues the campaign's push there)."""
    normalizer = UtmNormalizer.load()
    campaign.utm_source = normalizer.normalize("source", campaign.utm_source)
    campaign.utm_medium = normalizer.normalize("medium", campaign.utm_medium)
    campaign.utm_campaign = normalizer.normalize("campaign", campaign.utm_campaign)
    campaign.full_clean()
    created = campaign.pk is None
    with transaction.atomic():
        campaign.save()
        hooks.records_changed("campaigns", ids=[campaign.pk], created=created, source=source,
                              fields=[f.name for f in Campaign._meta.concrete_fields])
    return campaign


# The catalogued touch type a campaign membership made in a CRM is recorded as
# (migration 0005 adds it to the event catalog).
MEMBER_EVENT = "campaign_member_added"


def campaign_member_record(*, campaign: Campaign, lead, member_id: str, source: str, status: str = "",
                           has_responded: bool = False, at: datetime | None = None):
    """Record that ``lead`` is a member of ``campaign`` in a CRM (a
    Salesforce CampaignMember ``member_id``); returns (event, created).

    Why an event and not a membership table: here a campaign's members are
    the leads with a touch attributed to it (``crm.types._campaign_members``),
    and touchpoints, attribution, scoring and nurture all read events. So a
    membership made in the CRM is a touch of the catalogued type
    ``campaign_member_added`` on the campaign, at the member's creation
    time, with the campaign's UTM keys and channel, like any other touch.

    Idempotent: the event's client id is ``"<source>:<member id>"``, so the
    same member pulled twice is one event; a changed status or response flag
    updates that event's ``properties`` (the membership's state, not a new
    touch). ``events_ingested`` is sent after commit for a new event, as
    ingest does.

    A member of a lead that already has a touch of its own on the campaign
    is our push coming back (we push exactly those leads as members,
    ``crm.types._campaign_members``): no new event, so the pull does not
    add a second touch for the one that happened; returns (that touch's
    event, False)."""
    from martech import signals
    from martech.models import Event, EventType
    from martech.services.ingest import Touch, lead_touch_update

    client_id = f"{source}:{member_id}"
    if not member_id or len(client_id) > 255:
        raise ValidationError({"member_id": [f"Not a usable CRM member id: {member_id!r}."]})
    state = {"member_id": member_id, "status": status, "has_responded": bool(has_responded)}
    with transaction.atomic():
        event = Event.objects.select_for_update().filter(client_event_id=client_id).first()
        if event is None:
            own = campaign_member_events(campaign=campaign).filter(lead=lead).exclude(
                event_type__name=MEMBER_EVENT).order_by("occurred_at", "id").first()
            if own is not None:
                return own, False
            event_type = EventType.objects.filter(name=MEMBER_EVENT, is_active=True).first()
            if event_type is None:
                raise ValidationError({"event": [f"The event type {MEMBER_EVENT!r} is missing or inactive; add it "
                                                 "to the event catalog."]})
            now = timezone.now()
            at = at or now
            utm = {"source": campaign.utm_source, "medium": campaign.utm_medium, "campaign": campaign.utm_campaign,
                   "term": "", "content": ""}
            try:
                # A savepoint: a concurrent pull of the same member wins the unique client id.
                with transaction.atomic():
                    event = Event.objects.create(
                        client_event_id=client_id, kind=Event.Kind.TRACK, event_type=event_type, lead=lead,
                        properties=state, context={"source": source[:100]}, occurred_at=at, received_at=now,
                        utm_source=utm["source"], utm_medium=utm["medium"], utm_campaign=utm["campaign"],
                        channel=campaign.channel, campaign=campaign)
            except IntegrityError:
                return Event.objects.get(client_event_id=client_id), False
            if event_type.is_touchpoint:
                lead_touch_update(touches={lead.pk: [Touch(at, utm, campaign.channel)]})
            event_ids = [event.pk]
            transaction.on_commit(lambda: signals.events_ingested.send(sender=Event, event_ids=event_ids))
            return event, True
        if any(event.properties.get(k) != v for k, v in state.items()):
            event.properties = {**event.properties, **state}
            event.save(update_fields=["properties"])
        return event, False


def campaign_member_remove(*, member_id: str, source: str, at: datetime | None = None) -> bool:
    """A CRM member (``member_id``) was deleted there. The membership event
    ``campaign_member_record`` wrote is kept (the touch happened: touchpoints
    and attribution credit already built on it stay) and marked
    ``properties.removed_at``; a removed membership no longer makes the lead
    a member of the campaign (``campaign_member_statuses``,
    ``crm.types._campaign_members``), so the campaign's next push does not
    create it again. Returns whether a membership was marked; idempotent (a
    second removal keeps the first date)."""
    from martech.models import Event

    with transaction.atomic():
        event = Event.objects.select_for_update().filter(client_event_id=f"{source}:{member_id}").first()
        if event is None or event.properties.get("removed_at"):
            return False
        event.properties = {**event.properties, "removed_at": (at or timezone.now()).isoformat()}
        event.save(update_fields=["properties"])
        return True


def campaign_member_events(*, campaign: Campaign):
    """The campaign's events that make their leads members: every touch,
    but not a CRM membership removed there (``campaign_member_remove``)."""
    from martech.models import Event

    return Event.objects.filter(campaign=campaign, lead__isnull=False).exclude(
        event_type__name=MEMBER_EVENT, properties__has_key="removed_at")


def campaign_member_statuses(*, campaign: Campaign) -> dict[int, bool]:
    """Each member lead of ``campaign`` -> whether it responded: a touch of
    its own on the campaign is a response; a membership made in the CRM
    counts only when the CRM says the member responded."""
    events = campaign_member_events(campaign=campaign)
    members = set(events.values_list("lead_id", flat=True).distinct())
    responded = set(events.exclude(event_type__name=MEMBER_EVENT).values_list("lead_id", flat=True).distinct())
    responded |= set(events.filter(event_type__name=MEMBER_EVENT, properties__has_responded=True)
                     .values_list("lead_id", flat=True).distinct())
    return {lead_id: lead_id in responded for lead_id in sorted(members)}
