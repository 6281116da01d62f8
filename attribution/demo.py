"""Demo data for the quick start: touchpoints from the demo events, deals
with contact roles across the pipeline (won and lost over the demo months,
some still open), daily spend per demo campaign, then every model's credits.
Idempotent: touchpoints are rebuilt (unchanged ones are kept), deals are
found by name, spend is written once per demo campaign (only on the
campaigns the core demo made, never on ops' own), and the credits are
recomputed only when this run changed their inputs (touchpoints or deals) or
none exist yet: a full recompute replaces every credit row, so running it on
unchanged inputs would still rewrite the table."""
from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from attribution.computation import attribution_compute
from attribution.models import AttributionCredit, CampaignSpend, Opportunity
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from attribution.touchpoints import touchpoints_rebuild
from martech.models import Channel, Lead
from martech.services.demo import demo_campaigns

DEALS_MAX = 240
OPEN_STAGES = ["prospecting", "qualification", "proposal", "negotiation"]
DAILY_BUDGET = {Channel.PAID_SEARCH: 180, Channel.PAID_SOCIAL: 120, Channel.DISPLAY: 70, Channel.EMAIL: 15, Channel.EVENTS: 90}


def demo_seed(*, progress: bool) -> dict[str, int]:
    counts = {"touchpoints": 0, "opportunities": 0, "spend_days": 0, "attribution_credits": 0}
    touches_changed = 0
    lead_ids = list(Lead.objects.filter(events__isnull=False).distinct().order_by("pk").values_list("pk", flat=True))
    for i in tqdm(range(0, len(lead_ids), 1000), desc="touchpoints", disable=not progress):
        rebuilt = touchpoints_rebuild(lead_ids=lead_ids[i : i + 1000])
        counts["touchpoints"] += rebuilt["created"]
        touches_changed += rebuilt["created"] + rebuilt["updated"] + rebuilt["deleted"]

    now = timezone.now()
    candidates = list(
        Lead.objects.filter(touchpoints__isnull=False).distinct().order_by("pk").values_list("pk", flat=True)
    )[::3][:DEALS_MAX]
    for n, lead_id in enumerate(tqdm(candidates, desc="deals", disable=not progress)):
        rng = random.Random(lead_id)
        name = f"Demo deal {lead_id}"
        if Opportunity.objects.filter(name=name).exists():
            continue
        lead = Lead.objects.get(pk=lead_id)
        last_touch = lead.touchpoints.order_by("-occurred_at").values_list("occurred_at", flat=True).first()
        created = min(last_touch + timedelta(days=rng.randint(1, 10)), now - timedelta(days=1))
        closes = created + timedelta(days=rng.randint(14, 75))
        with transaction.atomic():
            opp, _ = opportunity_upsert(
                data={"name": name, "amount": Decimal(rng.randrange(5_000, 120_000, 250)), "created_at": created,
                      "source": lead.original_source or ""},
                source="demo",
            )
            opportunity_set_contact(opportunity=opp, lead=lead, role="Decision maker", is_primary=True)
            # A colleague from the same account joins some deals.
            colleague = Lead.objects.filter(account_id=lead.account_id).exclude(pk=lead.pk).first() if lead.account_id else None
            if colleague and n % 2:
                opportunity_set_contact(opportunity=opp, lead=colleague, role="Influencer")
            if closes < now:
                path = OPEN_STAGES[1:] + ["closed_won" if rng.random() < 0.45 else "closed_lost"]
            else:
                path = OPEN_STAGES[1 : 1 + rng.randint(0, 3)]
            steps = len(path) or 1
            for k, key in enumerate(path, start=1):
                at = created + (closes - created) * k / steps if key.startswith("closed") or closes < now else created + (now - created) * k / (steps + 1)
                opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key=key), source="demo", at=min(at, now))
        counts["opportunities"] += 1

    spend = []
    # Once per campaign: a demo campaign with any spend row (the demo's, or
    # imported by ops) gets none from here.
    for campaign in demo_campaigns().filter(channel__in=list(DAILY_BUDGET), spend__isnull=True).order_by("pk"):
        rng = random.Random(campaign.pk)
        start = campaign.start_date or (now.date() - timedelta(days=180))
        end = min(campaign.end_date or now.date(), now.date())
        day = max(start, now.date() - timedelta(days=180))
        while day <= end:
            amount = Decimal(DAILY_BUDGET[campaign.channel]) * Decimal(rng.uniform(0.6, 1.4)).quantize(Decimal("0.01"))
            impressions = int(float(amount) * rng.uniform(80, 200))
            spend.append(CampaignSpend(campaign=campaign, date=day, amount=amount.quantize(Decimal("0.01")),
                                       impressions=impressions, clicks=int(impressions * rng.uniform(0.005, 0.03))))
            day += timedelta(days=1)
    before = CampaignSpend.objects.count()
    CampaignSpend.objects.bulk_create(spend, ignore_conflicts=True, batch_size=2000)
    counts["spend_days"] = CampaignSpend.objects.count() - before
    if touches_changed or counts["opportunities"] or (
        Opportunity.objects.exists() and not AttributionCredit.objects.exists()
    ):
        counts["attribution_credits"] = attribution_compute(progress=progress)["credits"]
    return counts
