"""Quarantine housekeeping besides replay (which lives with ingest,
``martech.services.ingest.quarantine_replay``)."""
from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from martech.models import QuarantinedEvent

log = logging.getLogger(__name__)


@transaction.atomic
def quarantine_discard(*, item: QuarantinedEvent, actor=None) -> str:
    """Mark a pending quarantined item as discarded: it is never replayed,
    and the row stays as the record that it arrived (nothing is deleted).
    Returns the new status. Refuses an item that is no longer pending."""
    locked = QuarantinedEvent.objects.select_for_update().get(pk=item.pk)
    if locked.status != QuarantinedEvent.Status.PENDING:
        raise ValidationError({"status": [f"Only pending items can be discarded (this one is {locked.status})."]})
    locked.status = QuarantinedEvent.Status.DISCARDED
    locked.save(update_fields=["status"])
    item.status = locked.status
    log.info("quarantine_discard %s by %s", item.pk, actor)
    return locked.status
