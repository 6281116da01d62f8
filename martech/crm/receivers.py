"""Signals the CRM sync listens to (connected in CrmConfig.ready)."""
from __future__ import annotations

from martech import signals
from martech.crm import objects, outbox


def queue_touched_campaigns(sender, event_ids, with_lead=None, **kwargs) -> int:
    """A touch (an event with a lead) on a campaign can make a new member of
    it (``types._campaign_members``): queue each such campaign for push.

    Why a receiver and not the outbox's in-transaction hook: events are
    written by the ingest path, which announces them only after commit
    (``events_ingested``); a lost announcement is recovered by ``crm_sync
    --object campaign --full``. A campaign whose members did not change is
    skipped by the drain's hash (members are part of it), so queueing one
    per touch costs no CRM call."""
    from martech.models import Event

    if "campaign" not in {o.key for o in objects.all_types()}:
        return 0
    if with_lead is not None:  # the sender says which campaigns its leads touched
        campaign_ids = sorted(with_lead.campaign_ids)
    else:
        campaign_ids = sorted(set(Event.objects.filter(pk__in=event_ids, campaign__isnull=False, lead__isnull=False)
                                  .values_list("campaign_id", flat=True)))
    if not campaign_ids:
        return 0
    # "created": queue for every connection with a push mapping on campaigns.
    return outbox.queue_changed(objects.get("campaign"), ids=campaign_ids, fields=frozenset(), created=True,
                                source="events")


def connect() -> None:
    signals.events_ingested.connect(queue_touched_campaigns, dispatch_uid="crm.queue_touched_campaigns")
