"""Words for the routing codes that pages show: why a rep was skipped, the
distribution method, the steps of a decision, what an escalation did. The
codes stay in the stored explanations and the API (scripts read them);
every admin page and template shows these labels instead."""
from __future__ import annotations

from typing import Any

from routing import engine
from routing.models import Assignment, Team

SKIP_REASONS: dict[str, str] = {
    engine.INACTIVE: "inactive",
    engine.OUT_OF_OFFICE: "out of office",
    engine.HOLIDAY: "on holiday",
    engine.OUTSIDE_HOURS: "outside working hours",
    engine.AT_CAPACITY: "at capacity",
    engine.DAILY_LIMIT: "daily limit reached",
    "excluded": "excluded (the rep the lead is moving from)",
}

STEPS: dict[str, str] = {
    "rule": "Rule",
    "rule rep": "Rule's rep",
    "backup rep": "Backup rep",
    "account": "Account owner look-up",
    "account owner": "Account owner",
    "team": "Team",
    "fallback": "Fallback team",
    "fallback queue": "Fallback team",
    "waiting": "Waiting queue",
    "waiting queue": "Waiting queue",
}

# Keys of Escalation.detail and what they mean.
ESCALATION_KEYS: dict[str, str] = {
    "manager": "Manager",
    "email": "Email",
    "webhook": "Webhook",
    "new_assignment": "New assignment",
    "rep": "New rep",
    "status": "Status",
    "until": "Until",
}


def _humanize(code: str) -> str:
    return code.replace("_", " ")


def skip_label(code: str | None) -> str:
    return SKIP_REASONS.get(code or "", _humanize(code or ""))


def method_label(code: str | None) -> str:
    """A team's distribution method; "fallback" and empty are not methods."""
    if not code:
        return "—"
    try:
        return Team.Method(code).label
    except ValueError:
        return _humanize(code)


def step_label(code: str | None) -> str:
    return STEPS.get(code or "", _humanize(code or "").capitalize())


def status_label(code: str | None) -> str:
    try:
        return Assignment.Status(code).label
    except ValueError:
        return _humanize(code or "")


def escalation_detail(detail: dict[str, Any] | None) -> str:
    """One line for an escalation's detail, e.g. "Manager: none (no manager
    set)" rather than ``{"manager": null}``."""
    parts = []
    for key, value in (detail or {}).items():
        if key == "manager" and value is None:
            text = "none (no manager set: nobody was notified)"
        elif key == "rep" and value is None:
            text = "nobody eligible"
        elif key == "status":
            text = status_label(value)
        elif value is None or value == "":
            text = "—"
        else:
            text = str(value)
        parts.append(f"{ESCALATION_KEYS.get(key, _humanize(key).capitalize())}: {text}")
    return "; ".join(parts) or "—"
