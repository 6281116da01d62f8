"""UTM normalization, channel grouping and campaign lookup.

The alias table and channel rules are editable data. One ``UtmNormalizer``
loads them once, so a 500-event batch costs two queries here, not 1,000.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from django.db import transaction

from martech import hooks
from martech.models import Campaign, Channel, ChannelRule, UtmAlias
from martech.services.normalize import clean_utm

UTM_FIELDS = ("source", "medium", "campaign", "term", "content")


@dataclass
class UtmNormalizer:
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    rules: list[tuple[re.Pattern | None, re.Pattern | None, str]] = field(default_factory=list)

    @classmethod
    def load(cls) -> "UtmNormalizer":
        aliases = {(a.field, a.alias): a.canonical for a in UtmAlias.objects.all()}
        rules = [
            (
                re.compile(r.source_pattern) if r.source_pattern else None,
                re.compile(r.medium_pattern) if r.medium_pattern else None,
                r.channel,
            )
            for r in ChannelRule.objects.filter(is_active=True).order_by("order", "id")
        ]
        return cls(aliases=aliases, rules=rules)

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
