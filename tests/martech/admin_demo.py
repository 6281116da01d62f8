"""Demo data for the admin tests: the seed_demo command when it is there
(the real shape of a new install), else the same kinds of rows from factories."""
from __future__ import annotations

from datetime import timedelta

from django.core.management import call_command, get_commands
from django.utils import timezone

from martech.models import ApiClient, Identity, LifecycleStage, QuarantinedEvent
from martech.services.leads import consent_record, lead_change_stage, lead_upsert
from tests.factories import AccountFactory, CampaignFactory, EventFactory, FormFactory


def build_demo(*, leads: int = 60) -> str:
    """Fill the database; returns which path was used."""
    if "seed_demo" in get_commands():
        call_command("seed_demo", leads=leads)
        source = "seed_demo"
    else:
        acme = AccountFactory(name="Acme", domain="acme.example")
        campaign = CampaignFactory(name="Spring launch", utm_campaign="spring")
        for i in range(leads):
            lead, _ = lead_upsert(
                data={"email": f"person{i}@acme.example", "first_name": f"P{i}", "last_name": "Demo"}, source="demo"
            )
            EventFactory(lead=lead, campaign=campaign, occurred_at=timezone.now() - timedelta(days=i % 7))
            if i % 3 == 0:
                lead_change_stage(lead=lead, to_stage="mql", reason="score over 50", source="demo")
            if i % 4 == 0:
                consent_record(lead=lead, channel="email", granted=True, source="demo")
            Identity.objects.create(kind=Identity.Kind.ANONYMOUS, value=f"anon-{i}", lead=lead)
        assert acme.leads.exists()
        FormFactory()
        source = "factories"
    # Rows seed_demo may not make: one of everything the admin shows.
    if not QuarantinedEvent.objects.exists():
        QuarantinedEvent.objects.create(
            client_event_id="bad-1", payload={"event": "nope"}, field="event", reason="Unknown event type 'nope'."
        )
    if not ApiClient.objects.exists():
        ApiClient.objects.create(
            name="dashboards", token_prefix="mt_abc", token_hash=ApiClient.hash_token("mt_abc-secret"), scopes=["leads:read"]
        )
    assert LifecycleStage.objects.exists()
    return source
