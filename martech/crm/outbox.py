"""The transactional outbox: lead writes queue a push in their own transaction.

Registered on ``martech.hooks.on_leads_changed``. Changes whose source is a
CRM pull (``crm:<provider>``) are not queued back to that same provider, so
a pulled change is never echoed straight back.
"""
from __future__ import annotations

from django.utils import timezone

from martech import hooks
from martech.crm.models import Connection, FieldMapping, OutboxItem


def _base(local_field: str) -> str:
    return "properties" if local_field.startswith("properties.") else local_field


@hooks.on_leads_changed
def queue_lead_push(*, ids: list[int], fields: frozenset[str], created: bool, source: str) -> None:
    mappings = FieldMapping.objects.filter(
        connection__is_active=True, object="contact", direction__in=["push", "both"]
    ).values_list("connection_id", "connection__provider", "local_field")
    wanted: dict[int, str] = {}
    for connection_id, provider, local_field in mappings:
        if source == f"crm:{provider}":
            continue
        if created or _base(local_field) in fields:
            wanted[connection_id] = provider
    if not wanted:
        return
    now = timezone.now()
    # One pending row per record (partial unique index): a record already
    # waiting keeps its row, and the drain reads the latest values anyway.
    OutboxItem.objects.bulk_create(
        [OutboxItem(connection_id=c, object="contact", local_id=i, next_attempt_at=now, created_at=now)
         for c in wanted for i in ids],
        ignore_conflicts=True,
        batch_size=1000,
    )


def queue_full(*, connection: Connection, obj: str = "contact") -> int:
    """Queue every lead for a connection (``crm_sync --full``)."""
    from martech.models import Lead

    ids = list(Lead.objects.values_list("pk", flat=True))
    now = timezone.now()
    OutboxItem.objects.bulk_create(
        [OutboxItem(connection=connection, object=obj, local_id=i, next_attempt_at=now, created_at=now) for i in ids],
        ignore_conflicts=True, batch_size=1000,
    )
    return len(ids)
