"""Demo data for the admin tests: the seed_demo command (the real shape of a
new install), topped up with the rows it does not make."""
from __future__ import annotations

from django.core.management import call_command

from martech.models import (
    ApiClient,
    CapturePending,
    ConsentConfirmation,
    Lead,
    LifecycleStage,
    Notification,
    QuarantinedEvent,
    SalesTask,
    SubscriptionType,
    Website,
)


def build_demo(*, leads: int = 60) -> None:
    call_command("seed_demo", leads=leads, no_progress=True)
    if not QuarantinedEvent.objects.exists():
        QuarantinedEvent.objects.create(
            client_event_id="bad-1", payload={"event": "nope"}, field="event", reason="Unknown event type 'nope'."
        )
    if not ApiClient.objects.exists():
        ApiClient.objects.create(
            name="dashboards", token_prefix="mt_abc", token_hash=ApiClient.hash_token("mt_abc-secret"), scopes=["leads:read"]
        )
    if not SalesTask.objects.exists():
        from martech.services.tasks import task_create

        lead = Lead.objects.order_by("pk").first()
        task_create(key="admin-demo:task", lead=lead, subject=f"Call {lead}", source="admin-demo")
    if not Website.objects.exists():
        Website.objects.create(name="acme.example", allowed_origins=["https://www.acme.example"],
                               track_events=["demo_requested"])
    if not SubscriptionType.objects.exists():
        SubscriptionType.objects.create(key="product-news", name="Product news")
    if not ConsentConfirmation.objects.exists():
        from datetime import timedelta

        from django.utils import timezone

        lead = Lead.objects.order_by("pk").first()
        ConsentConfirmation.objects.create(lead=lead, channel="email", evidence={"form": "demo"},
                                           expires_at=timezone.now() + timedelta(days=7))
    if not Notification.objects.exists():
        from martech import notify

        notify.webhook_post(url="not a url", payload={"text": "demo"}, source="admin-demo", key="admin-demo:1")
    if not CapturePending.objects.exists():
        # A capture whose task was lost and that the sweep gave up on.
        lead = Lead.objects.order_by("pk").first()
        CapturePending.objects.create(source="form:demo", lead_ids=[lead.pk], attempts=5, next_attempt_at=None)
    assert LifecycleStage.objects.exists()
