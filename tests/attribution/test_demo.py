from datetime import timedelta
from decimal import Decimal

import pytest

from attribution.demo import demo_seed
from attribution.models import AttributionCredit, CampaignSpend, Opportunity, Touchpoint
from martech.models import Campaign, Channel
from martech.services.demo import demo_campaigns
from martech.services.demo import demo_seed as core_demo_seed
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


def test_demo_has_deals_spend_and_credits_and_is_idempotent():
    core_demo_seed(leads=120, progress=False)
    first = demo_seed(progress=False)
    assert first["opportunities"] > 0 and first["spend_days"] > 0
    assert Opportunity.objects.filter(stage__is_won=True).exists()
    assert CampaignSpend.objects.exists()
    assert AttributionCredit.objects.filter(model="w_shaped").exclude(channel="unattributed").exists()
    deals = Opportunity.objects.count()
    again = demo_seed(progress=False)
    assert again["opportunities"] == 0 and again["spend_days"] == 0
    assert Opportunity.objects.count() == deals


def test_demo_spend_only_on_demo_campaigns_and_once():
    core_demo_seed(leads=30, progress=False)
    anchor = Campaign.objects.order_by("-end_date").values_list("end_date", flat=True).first()
    own = CampaignFactory(start_date=anchor - timedelta(days=30), end_date=anchor)  # paid search, made by ops
    imported = demo_campaigns().filter(channel=Channel.PAID_SEARCH).order_by("pk").first()
    CampaignSpend.objects.create(campaign=imported, date=imported.start_date, amount=Decimal("10.00"))
    demo_seed(progress=False)
    assert not own.spend.exists()
    # A demo campaign that has spend (here imported by ops) gets no more.
    assert list(imported.spend.values_list("amount", flat=True)) == [Decimal("10.00")]
    spend = list(CampaignSpend.objects.order_by("pk").values())
    assert len({row["campaign_id"] for row in spend}) > 1
    assert demo_seed(progress=False)["spend_days"] == 0
    assert list(CampaignSpend.objects.order_by("pk").values()) == spend


def test_demo_recomputes_credits_only_when_their_inputs_changed():
    core_demo_seed(leads=30, progress=False)
    assert demo_seed(progress=False)["attribution_credits"] > 0
    credits = list(AttributionCredit.objects.order_by("pk").values_list("pk", flat=True))
    assert demo_seed(progress=False)["attribution_credits"] == 0
    assert list(AttributionCredit.objects.order_by("pk").values_list("pk", flat=True)) == credits
    # A touchpoint the events call for is missing: rebuilt, so the credits are too.
    Touchpoint.objects.filter(credits__isnull=False).order_by("pk").first().delete()
    again = demo_seed(progress=False)
    assert again["touchpoints"] == 1 and again["attribution_credits"] > 0
    # No credits at all (never computed): computed.
    AttributionCredit.objects.all().delete()
    assert demo_seed(progress=False)["attribution_credits"] == AttributionCredit.objects.count() > 0
