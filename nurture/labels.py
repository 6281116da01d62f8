"""Words for the nurture codes ops see in the admin: step types. The codes
stay in the journey definitions and the API; pages show these labels."""
from __future__ import annotations

STEP_TYPES: dict[str, str] = {
    "send_email": "Send email",
    "send_sms": "Send SMS",
    "audience_add": "Add to audience",
    "audience_remove": "Remove from audience",
    "update_field": "Update a field",
    "set_stage": "Set lifecycle stage",
    "create_task": "Create a sales task",
    "notify": "Notify the team",
    "webhook": "Call a webhook",
    "wait": "Wait",
    "wait_until": "Wait until",
    "branch": "Branch (yes/no)",
    "split": "A/B split",
    "enroll": "Enroll in another journey",
    "end": "End",
}


def step_type_label(code: str) -> str:
    """The label of a step type; an unknown code (a newer engine's) shows
    humanized rather than disappearing."""
    return STEP_TYPES.get(code) or code.replace("_", " ").capitalize()


OUTCOMES: dict[str, str] = {
    "sent": "sent",
    "waited": "waited",
    "waiting": "waiting",
    "met": "condition met",
    "timed_out": "timed out",
    "yes": "yes branch",
    "no": "no branch",
    "added": "added to the audience",
    "removed": "removed from the audience",
    "updated": "field updated",
    "stage_set": "stage set",
    "task_created": "task created",
    "enrolled": "enrolled",
    "would_enroll": "would enroll",
    "ended": "ended",
}
DETAIL_KEYS: dict[str, str] = {
    "until": "until", "audience": "audience", "field": "field", "value": "value", "stage": "stage",
    "task": "task", "subject": "subject", "workflow": "workflow", "topic": "topic",
}


def outcome_label(code: str) -> str:
    """``skipped:no_consent`` -> "skipped: no consent"; ``delayed:quiet_hours``
    -> "delayed: quiet hours"."""
    head, _, why = (code or "").partition(":")
    text = OUTCOMES.get(head, head.replace("_", " "))
    return f"{text}: {why.replace('_', ' ')}" if why else text


def detail_text(detail: dict | None) -> str:
    """A step's detail as words, e.g. "until 2026-03-02 09:00 UTC" rather
    than ``{'until': '2026-03-02T09:00:00+00:00'}``."""
    from datetime import datetime

    parts = []
    for key, value in (detail or {}).items():
        if key == "until" and isinstance(value, str):
            try:
                value = f"{datetime.fromisoformat(value):%Y-%m-%d %H:%M %Z}".strip()
            except ValueError:
                pass
        parts.append(f"{DETAIL_KEYS.get(key, key.replace('_', ' '))} {value}")
    return ", ".join(parts)


# Why a message was skipped at send time (Message.status_reason), in words.
SKIP_REASONS: dict[str, str] = {
    "no_consent": "no consent on the channel",
    "no_email": "the lead has no email address",
    "no_phone": "the lead has no phone number",
    "suppressed": "the address is suppressed (bounce, complaint or unsubscribe)",
    "suppressed_stage": "the lead is in a suppressed lifecycle stage",
    "suppressed_segment": "the lead is in a suppressed segment",
    "topic_unsubscribed": "the lead left the message's subscription topic",
    "unknown_topic": "the step's subscription topic no longer exists",
}


def reason_label(code: str) -> str:
    """``topic_unsubscribed`` -> "the lead left the message's subscription topic"; an
    unknown code (a settled in-doubt message's note) shows humanized."""
    return SKIP_REASONS.get(code) or (code or "").replace("_", " ")
