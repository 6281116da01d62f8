"""Every gallery journey, copied and published as it comes, enrolls a lead
the way its trigger says: its events are in the event catalog (the catalog
refuses the others, so a journey on them could never start)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone

from martech.models import EventType, LifecycleStage
from martech.services.ingest import ACCEPTED, events_ingest
from nurture.gallery import GALLERY, workflow_create_from_gallery
from nurture.models import Enrollment
from nurture.services import enrollment_create, segments_sync, workflow_never_fires, workflow_publish

# An event batch's journeys start in its capture task, run inline with scoring's tasks.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scoring_inline")]  # tests/conftest.py


def _event(email: str, name: str, properties: dict | None = None) -> None:
    with TestCase.captureOnCommitCallbacks(execute=True):
        result = events_ingest(items=[{"type": "track", "event": name, "messageId": f"{name}-{email}",
                                       "timestamp": timezone.now().isoformat(), "traits": {"email": email},
                                       "properties": properties or {}}], source="test")
    assert result.results[0].status == ACCEPTED, result.results[0]


def test_every_event_a_gallery_journey_names_is_catalogued():
    for key, spec in GALLERY.items():
        names = {spec.get("trigger_config", {}).get("event"), spec.get("goal_event")}
        names |= {s.get("event") for s in spec["definition"]["steps"].values() if s["type"] == "wait_until"}
        names.discard(None)
        active = set(EventType.objects.filter(name__in=names, is_active=True).values_list("name", flat=True))
        assert active == names, f"{key}: {sorted(names - active)} missing from the event catalog"


@pytest.mark.parametrize("key", list(GALLERY))
def test_each_gallery_journey_publishes_and_enrolls_a_lead(key, consenting_lead):
    wf = workflow_create_from_gallery(key=key)
    assert workflow_never_fires(workflow=wf) == {}
    workflow_publish(workflow=wf)
    wf.refresh_from_db()
    lead = consenting_lead()
    trigger = GALLERY[key]["trigger"]
    if trigger == "event":
        _event(lead.email, GALLERY[key]["trigger_config"]["event"], {"cart_value": 120, "orders_count": 0})
    elif trigger == "segment":
        lead.lifecycle_stage = LifecycleStage.objects.get(key="mql")
        lead.latest_touch_at = timezone.now() - timedelta(days=40)
        lead.save()
        segments_sync()
    else:
        assert trigger == "manual"
        enrollment_create(workflow=wf, lead=lead, source="test")
    enrollment = Enrollment.objects.get(workflow=wf, lead=lead)
    assert enrollment.version == wf.current_version and enrollment.status == "active"
