import pytest

from attribution.demo import demo_seed
from attribution.models import AttributionCredit, CampaignSpend, Opportunity
from martech.services.demo import demo_seed as core_demo_seed

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
