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
