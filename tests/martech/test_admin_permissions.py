"""Roles in the admin (martech.roles): what each may see and change."""
from __future__ import annotations

import pytest
from django.urls import reverse

from martech.models import Campaign, Event, Lead
from tests.factories import CampaignFactory, EventFactory, LeadFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_analyst_views_leads_but_cannot_add_or_change(client, analyst):
    lead = LeadFactory(first_name="Ann")
    EventFactory(lead=lead)
    client.force_login(analyst)
    changelist = client.get(reverse("admin:martech_lead_changelist"))
    assert changelist.status_code == 200
    assert lead.email in changelist.content.decode()
    assert changelist.context["has_add_permission"] is False
    action_form = changelist.context["action_form"]
    assert action_form is None or not action_form.fields["action"].choices[1:]
    change = client.get(reverse("admin:martech_lead_change", args=[lead.pk]))
    assert change.status_code == 200
    assert change.context["has_change_permission"] is False
    assert "martech-timeline" in change.content.decode()  # the timeline is part of viewing
    assert client.get(reverse("admin:martech_lead_add")).status_code == 403
    post = client.post(reverse("admin:martech_lead_change", args=[lead.pk]), {"first_name": "Changed"})
    assert post.status_code == 403
    lead.refresh_from_db()
    assert lead.first_name == "Ann"


def test_analyst_can_export_but_staff_without_lead_access_cannot(client, analyst):
    LeadFactory()
    client.force_login(analyst)
    assert client.get(reverse("admin:martech_lead_export")).status_code == 200
    client.force_login(UserFactory(username="nobody"))  # staff, no permissions
    assert client.get(reverse("admin:martech_lead_export")).status_code == 403
    assert client.post(reverse("admin:martech_lead_export"), {"format": 0}).status_code == 403


def test_sales_ops_cannot_change_campaigns_or_events(client, sales_ops):
    campaign = CampaignFactory(name="Spring")
    event = EventFactory()
    client.force_login(sales_ops)
    assert client.get(reverse("admin:martech_campaign_change", args=[campaign.pk])).status_code == 200
    post = client.post(reverse("admin:martech_campaign_change", args=[campaign.pk]), {"name": "Hacked"})
    assert post.status_code == 403
    assert Campaign.objects.get().name == "Spring"
    assert client.post(reverse("admin:martech_campaign_add"), {"name": "New"}).status_code == 403
    assert client.get(reverse("admin:martech_event_change", args=[event.pk])).status_code == 200
    assert client.post(reverse("admin:martech_event_change", args=[event.pk]), {}).status_code == 403
    assert client.post(reverse("admin:martech_event_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert Event.objects.exists()
    # Sales ops read leads (docs/admin.md, Roles) but do not edit them.
    lead = LeadFactory()
    assert client.get(reverse("admin:martech_lead_change", args=[lead.pk])).status_code == 200
    assert client.post(reverse("admin:martech_lead_change", args=[lead.pk]), {}).status_code == 403


def test_marketing_ops_changes_campaigns_through_the_service(client, marketing_ops):
    campaign = CampaignFactory(name="Spring", utm_source="google", utm_medium="cpc", utm_campaign="spring")
    client.force_login(marketing_ops)
    response = client.post(
        reverse("admin:martech_campaign_change", args=[campaign.pk]),
        {
            "name": "Spring 2026",
            "channel": "paid_search",
            "utm_source": " AdWords ",  # the alias table maps it to google
            "utm_medium": "CPC",
            "utm_campaign": "Spring",
            "currency": "USD",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    campaign.refresh_from_db()
    assert (campaign.name, campaign.utm_source, campaign.utm_medium, campaign.utm_campaign) == (
        "Spring 2026", "google", "cpc", "spring"
    )
    assert campaign.history.first().history_user == marketing_ops


def test_only_a_superuser_deletes_events(client, superuser, marketing_ops):
    event = EventFactory()
    client.force_login(marketing_ops)
    assert client.post(reverse("admin:martech_event_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    client.force_login(superuser)
    assert client.post(reverse("admin:martech_event_delete", args=[event.pk]), {"post": "yes"}).status_code == 302
    assert not Event.objects.exists()


def test_history_tables_are_read_only_even_for_a_superuser(client, superuser):
    from martech.services.leads import consent_record, lead_upsert

    lead, _ = lead_upsert(data={"email": "ro@x.example"}, source="t")
    record = consent_record(lead=lead, channel="email", granted=True, source="t")
    transition = lead.stage_transitions.get()
    client.force_login(superuser)
    for name, obj in (("stagetransition", transition), ("consentrecord", record)):
        assert client.post(reverse(f"admin:martech_{name}_change", args=[obj.pk]), {}).status_code == 403
        assert client.post(reverse(f"admin:martech_{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:martech_stagetransition_add")).status_code == 403
    # Consent is append-only: adding goes through the service with the actor.
    response = client.post(
        reverse("admin:martech_consentrecord_add"),
        {"lead": lead.pk, "channel": "sms", "status": "withdrawn", "evidence": '{"ticket": "SUP-1"}'},
    )
    assert response.status_code == 302
    added = lead.consent_records.get(channel="sms")
    assert (added.status, added.source, added.actor) == ("withdrawn", "admin", superuser)
    assert added.evidence == {"ticket": "SUP-1"}


def test_api_clients_show_prefix_and_cannot_be_added(client, superuser):
    from martech.models import ApiClient

    api_client = ApiClient.objects.create(
        name="bi", token_prefix="mt_pre", token_hash=ApiClient.hash_token("x"), scopes=["leads:read"]
    )
    client.force_login(superuser)
    page = client.get(reverse("admin:martech_apiclient_changelist")).content.decode()
    assert "mt_pre" in page and "leads:read" in page and api_client.token_hash not in page
    assert client.get(reverse("admin:martech_apiclient_add")).status_code == 403
    change = client.get(reverse("admin:martech_apiclient_change", args=[api_client.pk])).content.decode()
    assert api_client.token_hash not in change
    assert 'name="token_prefix"' not in change  # shown, not editable
    assert Lead.objects.count() == 0
