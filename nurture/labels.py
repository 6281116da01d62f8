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


WAIT_UNITS = (("days", "day"), ("business_days", "business day"), ("hours", "hour"), ("seconds", "second"))


def _plural(n, word: str) -> str:
    return f"{n:g} {word}{'' if n == 1 else 's'}" if isinstance(n, (int, float)) else f"{n} {word}s"


def _template_subject(step: dict, templates: dict | None) -> str:
    """The subject of the email template a send-email step names, from
    ``templates`` ({"<id>": content}: a version's copy or the current
    templates), else "template #<id>"."""
    content = (templates or {}).get(str(step.get("template"))) or {}
    return content.get("subject") or f"template #{step.get('template')}"


def step_detail(step: dict | None, templates: dict | None = None) -> str:
    """What the step does, without its type: the diagram's and the builder
    table's line ("Your ebook, {{first_name|there}}", "3 days",
    "score >= 50")."""
    step = step or {}
    kind = step.get("type")
    if kind == "wait":
        return " and ".join(_plural(step[u], w) for u, w in WAIT_UNITS if step.get(u))
    if kind == "wait_until":
        what = " or ".join(str(x) for x in (step.get("event"), step.get("condition")) if x)
        return f"{what} (at most {_plural(step.get('timeout_hours') or 0, 'hour')})"
    if kind == "split":
        return f"{step.get('percent')}% take A"
    if kind == "update_field":
        return f"{step.get('field')} = {step.get('value')}"
    if kind == "notify":
        return f"{step.get('channel')}: {step.get('to')}"
    if kind == "enroll":
        return f"workflow {step.get('workflow')}"
    if kind == "send_email" and step.get("template") not in (None, ""):
        return _template_subject(step, templates)
    for name in ("subject", "body", "condition", "stage", "audience", "url"):
        if step.get(name):
            return str(step[name])
    return ""


def step_summary(step: dict | None, templates: dict | None = None) -> str:
    """One step of a journey in words, type included, e.g. 'Send email
    "Your ebook"', "Wait 5 days", "Wait until Email clicked (at most 72
    hours)"."""
    if not step:
        return "—"
    kind = step.get("type") or ""
    label, detail = step_type_label(kind), step_detail(step, templates)
    if not detail:
        return label
    if kind in ("send_email", "create_task"):
        return f'{label} "{detail}"'
    if kind == "set_stage":
        return f"{label} to {detail}"
    if kind in ("branch", "split", "update_field", "notify"):
        return f"{label}: {detail}"
    return f"{label} {detail}"


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
