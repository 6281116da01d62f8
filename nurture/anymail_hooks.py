"""anymail's normalized tracking webhooks: bounces and complaints suppress
the address; sends and deliveries confirm a message left in doubt, and
deliveries stamp it."""
from __future__ import annotations

from nurture.models import Suppression
from nurture.services import address_suppress, message_delivered, messages_confirm_sent


def on_tracking(sender, event, esp_name, **kwargs) -> None:
    kind = event.event_type
    if kind == "bounced":
        address_suppress(address=event.recipient, reason=Suppression.Reason.BOUNCE,
                         detail=f"{esp_name}: {event.description or event.reject_reason or ''}", provider_id=event.message_id or "")
    elif kind == "complained":
        address_suppress(address=event.recipient, reason=Suppression.Reason.COMPLAINT, detail=esp_name,
                         provider_id=event.message_id or "")
    if kind in ("sent", "delivered"):
        key = (getattr(event, "metadata", None) or {}).get("nurture_key", "")
        if event.message_id or key:
            messages_confirm_sent(provider_id=event.message_id or "", key=key)
    if kind == "delivered" and event.message_id:
        message_delivered(provider_id=event.message_id)
