from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from attribution.models import Opportunity, OpportunityStageChange
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from martech import signals
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


def test_upsert_by_crm_id_creates_once_and_records_first_stage():
    opp, created = opportunity_upsert(data={"name": "Acme renewal", "amount": Decimal("1200.50"), "hubspot_id": "77"}, source="test")
    again, created_again = opportunity_upsert(data={"name": "Acme renewal 2", "hubspot_id": "77"}, source="test")
    assert (created, created_again) == (True, False)
    assert again.pk == opp.pk and Opportunity.objects.count() == 1
    assert again.name == "Acme renewal 2" and again.amount == Decimal("1200.50")
    assert list(OpportunityStageChange.objects.values_list("from_stage", "to_stage__key")) == [(None, "prospecting")]


def test_unknown_field_and_stage_are_refused_by_name():
    with pytest.raises(ValidationError) as exc:
        opportunity_upsert(data={"name": "x", "colour": "red"}, source="test")
    assert exc.value.message_dict == {"colour": ["Unknown opportunity field."]}
    with pytest.raises(ValidationError) as exc:
        opportunity_upsert(data={"name": "x", "stage": "won-ish"}, source="test")
    assert "stage" in exc.value.message_dict


def test_closing_sets_closed_at_and_announces_won(django_capture_on_commit_callbacks):
    lead = LeadFactory()
    seen = []

    def receiver(sender, **kwargs):
        seen.append((kwargs["kind"], kwargs["lead_ids"]))

    signals.opportunity_changed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            opp, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
            opportunity_set_contact(opportunity=opp, lead=lead, role="buyer", is_primary=True)
        with django_capture_on_commit_callbacks(execute=True):
            opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="test")
    finally:
        signals.opportunity_changed.disconnect(receiver)
    opp.refresh_from_db()
    assert opp.closed_at is not None and opp.stage.is_won
    assert seen == [("created", [lead.pk]), ("won", [lead.pk])]


def test_one_primary_contact():
    opp, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
    a, b = LeadFactory(), LeadFactory()
    opportunity_set_contact(opportunity=opp, lead=a, is_primary=True)
    opportunity_set_contact(opportunity=opp, lead=b, is_primary=True)
    assert list(opp.contact_roles.filter(is_primary=True).values_list("lead", flat=True)) == [b.pk]
