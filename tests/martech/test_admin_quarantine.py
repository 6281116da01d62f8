"""Quarantined events: replay (through ingest) and discard actions."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from martech.models import Event, EventType, QuarantinedEvent
from martech.services.ingest import events_ingest

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:martech_quarantinedevent_changelist")


def _quarantine(message_id: str, event: str = "zz_pilot_started") -> QuarantinedEvent:
    item = {
        "type": "track",
        "messageId": message_id,
        "event": event,
        "timestamp": "2026-01-05T10:00:00Z",
        "anonymousId": "a-1",
    }
    result = events_ingest(items=[item], source="api:test", policy="quarantine")
    assert result.results[0].status == "quarantined"
    return QuarantinedEvent.objects.get(client_event_id=message_id)


def _post(client, action, items, **extra):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [i.pk for i in items], **extra})


def test_replay_asks_first_then_ingests_once_the_catalog_knows_the_event(client, superuser):
    item = _quarantine("q-1")
    client.force_login(superuser)
    confirm = _post(client, "replay_quarantined", [item])
    assert confirm.status_code == 200 and "Yes, replay" in confirm.content.decode()
    assert not Event.objects.exists()

    EventType.objects.create(name="zz_pilot_started")
    done = _post(client, "replay_quarantined", [item], apply="yes")
    assert done.status_code == 302
    item.refresh_from_db()
    assert item.status == QuarantinedEvent.Status.REPLAYED
    assert Event.objects.get().client_event_id == "q-1"
    assert LogEntry.objects.filter(object_id=str(item.pk), change_message__contains="accepted").exists()


def test_replay_of_a_still_unknown_event_keeps_it_pending(client, superuser):
    item = _quarantine("q-2", event="still_unknown")
    client.force_login(superuser)
    response = _post(client, "replay_quarantined", [item], apply="yes")
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.status == QuarantinedEvent.Status.PENDING
    assert not Event.objects.exists()


def test_discard_marks_pending_items_and_skips_others(client, superuser):
    pending, replayed = _quarantine("q-3"), _quarantine("q-4")
    QuarantinedEvent.objects.filter(pk=replayed.pk).update(status=QuarantinedEvent.Status.REPLAYED)
    client.force_login(superuser)
    confirm = _post(client, "discard_quarantined", [pending, replayed])
    assert "1 selected item(s) are not pending" in confirm.content.decode()
    _post(client, "discard_quarantined", [pending, replayed], apply="yes")
    pending.refresh_from_db()
    replayed.refresh_from_db()
    assert (pending.status, replayed.status) == ("discarded", "replayed")
    assert QuarantinedEvent.objects.count() == 2  # discarded, never deleted


def test_quarantine_actions_need_change_permission(client, analyst):
    item = _quarantine("q-5")
    client.force_login(analyst)
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert response.context["action_form"] is None or "replay_quarantined" not in dict(
        response.context["action_form"].fields["action"].choices
    )
    _post(client, "replay_quarantined", [item], apply="yes")
    item.refresh_from_db()
    assert item.status == QuarantinedEvent.Status.PENDING
