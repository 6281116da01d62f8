"""anymail's normalized tracking webhooks (mounted by nurture.esp_webhooks):
a send or delivery first confirms a message left in doubt
(``nurture.services.messages_confirm_sent``, by the ESP's message id or our
key in the event's metadata); deliveries, bounces, complaints and
unsubscribes go to ``nurture.services.esp_event_record``. This module only reads the ESP's
event: anymail calls some soft bounces "bounced", and only a hard one may
suppress the address."""
from __future__ import annotations

from anymail.signals import AnymailTrackingEvent

from nurture.services import ESP_EVENT_TYPES, esp_event_record, messages_confirm_sent


def is_hard_bounce(event: AnymailTrackingEvent) -> bool:
    """False for the bounces the ESP itself calls temporary: SES
    ``bounceType`` Transient or Undetermined, Postmark ``SoftBounce``, Brevo
    ``soft_bounce``, SendGrid ``type: blocked``. Mailgun's temporary failures
    reach us as "deferred" already. Anything else is hard."""
    raw = event.esp_event
    if not isinstance(raw, dict):
        return True
    ses = raw.get("bounce")
    if isinstance(ses, dict) and "bounceType" in ses:
        return ses["bounceType"] == "Permanent"
    if raw.get("Type") == "SoftBounce" or raw.get("event") == "soft_bounce":
        return False
    return not (raw.get("event") == "bounce" and raw.get("type") == "blocked")


def on_tracking(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    if (getattr(event, "metadata", None) or {}).get("nurture_test"):
        return  # a test send to a staff address (nurture.channels.email_build_test): no lead's message
    if event.event_type in ("sent", "delivered"):
        key = (getattr(event, "metadata", None) or {}).get("nurture_key", "")
        if event.message_id or key:
            messages_confirm_sent(provider_id=event.message_id or "", key=key)
    if event.event_type not in ESP_EVENT_TYPES or not event.recipient:
        return
    esp_event_record(
        esp=esp_name, kind=event.event_type, recipient=event.recipient, message_id=event.message_id or "",
        event_id=str(event.event_id or ""), hard=event.event_type != "bounced" or is_hard_bounce(event),
        detail=event.description or event.mta_response or event.reject_reason or "", at=event.timestamp,
    )
