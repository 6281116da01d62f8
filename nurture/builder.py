"""The journey builder's writes: add, edit, move and delete one step of a
workflow's draft graph (``Workflow.definition``, shape in ``nurture.graph``).

The JSON stays the storage and API format; these functions are the one way
the admin's step forms change it. Each one, in its own transaction:

- locks the workflow row and reads the draft as it is now, so two people
  editing one journey at once serialize and neither loses the other's step;
- applies the change to a copy, checks the step's values against what they
  name (catalogued event types, lifecycle stages, lead fields, workflows:
  ``step_clean``) and the whole workflow with ``workflow_validate``;
- saves the draft with ``has_draft_changes`` set (publishing makes it live)
  and records who changed what in the admin log.

A deadlock or serialization failure runs the whole change again
(``martech.db.run_in_transaction``). Errors are ``ValidationError``s keyed by
the step's field (``subject``, ``stage``, ``percent``, ...), or by
``definition`` for what only the whole graph shows (a loop, an unreachable
step). Permissions are the caller's to check.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email

from martech.db import run_in_transaction
from nurture.conditions import condition_check
from nurture.graph import TARGETS, successors
from nurture.labels import step_type_label
from nurture.models import EmailTemplate, Workflow
from nurture.services import workflow_validate

T = TypeVar("T")

# The values each step type carries besides its paths (TARGETS). Keys a step
# has beyond these and its paths (an email's conditional "blocks", keys a
# newer release adds) are kept as they are when the step is edited.
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "send_email": ("template", "subject", "body", "html", "marketing", "topic"),
    "send_sms": ("body",),
    "audience_add": ("audience",),
    "audience_remove": ("audience",),
    "update_field": ("field", "value"),
    "set_stage": ("stage",),
    "create_task": ("subject", "description", "due_days"),
    "notify": ("channel", "to", "text"),
    "webhook": ("url",),
    "wait": ("seconds", "hours", "days", "business_days"),
    "wait_until": ("event", "condition", "timeout_hours"),
    "branch": ("condition",),
    "split": ("percent",),
    "enroll": ("workflow",),
    "end": (),
}
# How each path of a step is named on the page.
PATH_LABELS: dict[str, str] = {
    "next": "Next", "yes": "Yes", "no": "No", "a": "A", "b": "B", "timeout_next": "On timeout",
}
WAIT_UNITS = ("seconds", "hours", "days", "business_days")
# The first path of a step is the one its place goes to when it is deleted.
EMPTY_DEFINITION = {"start": "end", "steps": {"end": {"type": "end"}}}
_KEY_PREFIX = {"send_email": "email", "send_sms": "sms", "audience_add": "audience", "audience_remove": "audience",
               "update_field": "field", "set_stage": "stage", "create_task": "task", "wait_until": "wait_until"}
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_AUDIENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]{0,99}$")


def update_field_choices() -> list[str]:
    """The lead fields an "Update a field" step may set (custom properties
    are ``properties.<name>``): not the email (a lead is found by it), not
    the CRM ids (the CRM sync owns them), not the stage (a "Set lifecycle
    stage" step moves it, with its history)."""
    from martech.services.leads import CRM_KEYS, LEAD_WRITABLE_FIELDS

    return sorted(LEAD_WRITABLE_FIELDS - set(CRM_KEYS) - {"email", "lifecycle_stage"})


def _int(data: dict, name: str, errors: dict, *, low: int, high: int, required: bool = True) -> int | None:
    value = data.get(name)
    if value in (None, ""):
        if required:
            errors[name] = ["Required."]
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors[name] = ["A whole number."]
        return None
    if not low <= value <= high:
        errors[name] = [f"From {low} to {high}."]
        return None
    return value


def _text(data: dict, name: str, errors: dict, *, required: bool = True, limit: int = 10_000) -> str:
    value = data.get(name)
    value = "" if value is None else value
    if not isinstance(value, str):
        errors[name] = ["Text."]
        return ""
    value = value.strip()
    if required and not value:
        errors[name] = ["Required."]
    elif len(value) > limit:
        errors[name] = [f"At most {limit} characters."]
    return value


def _condition(value: str, name: str, errors: dict) -> None:
    if value:
        try:
            condition_check(value)
        except ValidationError as exc:
            errors[name] = exc.messages


def _event(name: str, field: str, errors: dict) -> None:
    from martech.models import EventType

    if not EventType.objects.filter(name=name, is_active=True).exists():
        errors[field] = [f"{name!r} is not an active event type of the event catalog (its events are refused)."]


def step_clean(*, step_type: str, data: dict[str, Any], workflow: Workflow | None = None) -> dict[str, Any]:
    """The step's own values (no paths) checked and normalized: every key the
    step type carries, each checked against what it names. Raises
    ``ValidationError({field: [reason]})`` naming every bad field."""
    from martech.models import LifecycleStage

    if step_type not in TARGETS:
        raise ValidationError({"type": [f"Unknown step type {step_type!r} (one of {', '.join(TARGETS)})."]})
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(data) - set(STEP_FIELDS[step_type]))
    if unknown:
        errors["__all__"] = [f"A {step_type_label(step_type).lower()} step has no {', '.join(unknown)}."]
    out: dict[str, Any] = {}
    if step_type == "send_email":
        template = data.get("template")
        if template in (None, ""):
            out["subject"] = _text(data, "subject", errors, limit=500)
            out["body"] = _text(data, "body", errors)
            html = _text(data, "html", errors, required=False, limit=100_000)
            if html:
                out["html"] = html
        elif isinstance(template, bool) or not isinstance(template, int):
            errors["template"] = [f"An email template's id (an integer), not {template!r}."]
        elif not EmailTemplate.objects.filter(pk=template).exists():
            errors["template"] = [f"No email template with id {template}."]
        else:
            out["template"] = template
            typed = [k for k in ("subject", "body", "html") if data.get(k) not in (None, "")]
            if typed:
                errors["template"] = [f"A template brings its own subject and bodies: leave {', '.join(typed)} "
                                      f"empty, or pick no template."]
        topic = _text(data, "topic", errors, required=False, limit=60)
        if topic:
            from martech.models import ConsentChannel, SubscriptionType

            if not SubscriptionType.objects.filter(key=topic, channel=ConsentChannel.EMAIL).exists():
                errors["topic"] = [f"No email subscription topic {topic!r} (see Subscription topics)."]
            out["topic"] = topic
        marketing = data.get("marketing", True)
        if not isinstance(marketing, bool):
            errors["marketing"] = ["True or false."]
        elif not marketing:
            out["marketing"] = False  # absent means marketing (the engine's default)
    elif step_type == "send_sms":
        out["body"] = _text(data, "body", errors, limit=1600)
    elif step_type in ("audience_add", "audience_remove"):
        out["audience"] = _text(data, "audience", errors, limit=100)
        if out["audience"] and not _AUDIENCE.match(out["audience"]):
            errors["audience"] = ["Letters, digits, space and _ . : - only."]
    elif step_type == "update_field":
        field = _text(data, "field", errors, limit=80)
        out["field"], out["value"] = field, _text(data, "value", errors, required=False, limit=1000)
        if field.startswith("properties."):
            if not _PROPERTY.match(field.removeprefix("properties.")):
                errors["field"] = ["A custom property's name: letters, digits and _, not starting with a digit."]
        elif field and field not in update_field_choices():
            errors["field"] = [f"{field!r} is not a lead field a journey may set "
                               f"(one of {', '.join(update_field_choices())}, or properties.<name>)."]
    elif step_type == "set_stage":
        out["stage"] = _text(data, "stage", errors, limit=40)
        if out["stage"] and not LifecycleStage.objects.filter(key=out["stage"], is_active=True).exists():
            errors["stage"] = [f"No active lifecycle stage {out['stage']!r}."]
    elif step_type == "create_task":
        out["subject"] = _text(data, "subject", errors, limit=255)
        description = _text(data, "description", errors, required=False)
        if description:
            out["description"] = description
        due = _int(data, "due_days", errors, low=0, high=365, required=False)
        if due is not None:
            out["due_days"] = due
    elif step_type == "notify":
        out["channel"] = _text(data, "channel", errors, limit=10)
        out["to"] = _text(data, "to", errors, limit=500)
        out["text"] = _text(data, "text", errors)
        if out["channel"] and out["channel"] not in ("email", "webhook"):
            errors["channel"] = ["Email or webhook."]
        elif out["to"] and "to" not in errors:
            try:
                (validate_email if out["channel"] == "email" else URLValidator(schemes=["http", "https"]))(out["to"])
            except ValidationError:
                errors["to"] = ["An email address." if out["channel"] == "email" else "An http(s) URL."]
    elif step_type == "webhook":
        out["url"] = _text(data, "url", errors, limit=2000)
        if out["url"] and "url" not in errors:
            try:
                URLValidator(schemes=["http", "https"])(out["url"])
            except ValidationError:
                errors["url"] = ["An http(s) URL."]
    elif step_type == "wait":
        given = {u: data.get(u) for u in WAIT_UNITS if data.get(u) not in (None, "", 0)}
        for unit in given:
            value = _int(data, unit, errors, low=1, high=100_000)
            if value is not None:
                out[unit] = value
        if not given:
            errors["__all__"] = errors.get("__all__", []) + ["A wait needs a length: seconds, hours, days or business_days."]
    elif step_type == "wait_until":
        event = _text(data, "event", errors, required=False, limit=100)
        condition = _text(data, "condition", errors, required=False)
        if event:
            out["event"] = event
            _event(event, "event", errors)
        if condition:
            out["condition"] = condition
            _condition(condition, "condition", errors)
        if not (event or condition):
            errors["event"] = ["Give the event to wait for, or a condition (or both)."]
        out["timeout_hours"] = _int(data, "timeout_hours", errors, low=1, high=24 * 366)
    elif step_type == "branch":
        out["condition"] = _text(data, "condition", errors)
        _condition(out["condition"], "condition", errors)
    elif step_type == "split":
        out["percent"] = _int(data, "percent", errors, low=0, high=100)
    elif step_type == "enroll":
        target = _int(data, "workflow", errors, low=1, high=2**63 - 1)
        out["workflow"] = target
        if target is not None:
            if workflow is not None and target == workflow.pk:
                errors["workflow"] = ["A journey cannot enroll a lead in itself."]
            elif not Workflow.objects.filter(pk=target).exclude(status=Workflow.Status.ARCHIVED).exists():
                errors["workflow"] = [f"No workflow with id {target} (or it is archived)."]
    if errors:
        raise ValidationError(errors)
    return out


def _paths_clean(step_type: str, paths: dict[str, str], steps: dict, own_key: str | None) -> None:
    errors: dict[str, list[str]] = {}
    for name, target in paths.items():
        if name not in TARGETS[step_type]:
            errors[name] = [f"A {step_type_label(step_type).lower()} step has no path {name!r}."]
        elif target not in steps:
            errors[name] = [f"No step {target!r} in this journey."]
        elif target == own_key:
            errors[name] = ["A step cannot lead to itself."]
    if errors:
        raise ValidationError(errors)


def _incoming(steps: dict, key: str) -> list[tuple[str, str]]:
    """(step, path) of every path that leads to ``key``."""
    return [(k, f) for k, s in steps.items() for f in TARGETS.get(s.get("type"), ()) if s.get(f) == key]


def _new_key(steps: dict, step_type: str) -> str:
    prefix = _KEY_PREFIX.get(step_type, step_type)
    n = 1
    while f"{prefix}{n}" in steps:
        n += 1
    return f"{prefix}{n}"


def _change(workflow: Workflow, actor, message: Callable[[Any], str], change: Callable[[dict], T]) -> T:
    """Run ``change(definition)`` on the locked workflow's draft, validate,
    save, log. ``workflow`` is refreshed with the saved draft."""

    def run() -> T:
        wf = Workflow.objects.select_for_update().get(pk=workflow.pk)
        steps = (wf.definition or {}).get("steps") if isinstance(wf.definition, dict) else None
        definition = copy.deepcopy(wf.definition) if isinstance(steps, dict) and steps else copy.deepcopy(EMPTY_DEFINITION)
        result = change(definition)
        wf.definition = definition
        workflow_validate(workflow=wf)
        wf.has_draft_changes = True
        wf.save(update_fields=["definition", "has_draft_changes", "updated_at"])
        if getattr(actor, "is_authenticated", False):
            from django.contrib.admin.models import CHANGE, LogEntry

            LogEntry.objects.log_actions(user_id=actor.pk, queryset=Workflow.objects.filter(pk=wf.pk),
                                         action_flag=CHANGE, change_message=message(result), single_object=True)
        return result

    result = run_in_transaction(run)
    workflow.refresh_from_db(fields=["definition", "has_draft_changes", "updated_at"])
    return result


def workflow_step_add(*, workflow: Workflow, step_type: str, data: dict[str, Any], after: str | None = None,
                      path: str = "next", paths: dict[str, str] | None = None, actor=None) -> str:
    """Insert a new step and return its key. ``after=None`` puts it at the
    start; else it goes on ``after``'s ``path`` (``next``, ``yes``, ``no``,
    ``a``, ``b``, ``timeout_next``), between that step and where the path led.
    Every path of the new step continues there unless ``paths`` says
    otherwise (a branch then has both arms going on to the same step, to be
    filled in). An empty journey starts as a lone End step."""
    values = step_clean(step_type=step_type, data=data, workflow=workflow)

    def change(definition: dict) -> str:
        steps = definition["steps"]
        if after is None:
            continuation = definition["start"]
        else:
            if after not in steps:
                raise ValidationError({"after": [f"No step {after!r} in this journey."]})
            if path not in TARGETS.get(steps[after].get("type"), ()):
                raise ValidationError({"path": [f"Step {after!r} has no path {path!r}."]})
            continuation = steps[after][path]
        key = _new_key(steps, step_type)
        _paths_clean(step_type, paths or {}, steps, key)
        steps[key] = {"type": step_type, **values, **{f: continuation for f in TARGETS[step_type]}, **(paths or {})}
        if after is None:
            definition["start"] = key
        else:
            steps[after][path] = key
        return key

    where = f"after {after!r} ({PATH_LABELS.get(path, path)})" if after else "at the start"
    return _change(workflow, actor, lambda key: f"Journey: added step {key!r} ({step_type_label(step_type)}) {where}.",
                   change)


def workflow_step_edit(*, workflow: Workflow, key: str, data: dict[str, Any], paths: dict[str, str] | None = None,
                       actor=None) -> None:
    """Replace a step's values (and, with ``paths``, where its paths lead).
    Its type stays; keys the builder does not manage are kept."""

    def change(definition: dict) -> None:
        steps = definition["steps"]
        if key not in steps:
            raise ValidationError({"step": [f"No step {key!r} in this journey."]})
        old = steps[key]
        kind = old.get("type")
        values = step_clean(step_type=kind, data=data, workflow=workflow)
        _paths_clean(kind, paths or {}, steps, key)
        kept = {k: v for k, v in old.items() if k not in STEP_FIELDS.get(kind, ()) and k != "type"}
        steps[key] = {"type": kind, **values, **kept, **(paths or {})}

    _change(workflow, actor, lambda _: f"Journey: edited step {key!r}.", change)


def workflow_step_delete(*, workflow: Workflow, key: str, actor=None) -> list[str]:
    """Remove a step; what led to it goes on to its first path (``next``,
    ``yes``, ``a``). A branch's or split's other arm, and the steps only it
    reached, go with it. Returns the keys removed (the step first). An End
    step that paths lead to stays: re-point or delete the steps before it."""

    def change(definition: dict) -> list[str]:
        steps = definition["steps"]
        if key not in steps:
            raise ValidationError({"step": [f"No step {key!r} in this journey."]})
        step = steps[key]
        targets = successors(step)
        if not targets:
            if _incoming(steps, key) or definition["start"] == key:
                raise ValidationError({"step": [f"{key!r} ends its path: delete the steps before it, or point them "
                                                "elsewhere, first."]})
            del steps[key]
            return [key]
        continuation = targets[0]
        for k, f in _incoming(steps, key):
            steps[k][f] = continuation
        if definition["start"] == key:
            definition["start"] = continuation
        del steps[key]
        # Steps nothing reaches any more (the other arm) are removed too.
        seen, queue = set(), [definition["start"]]
        while queue:
            k = queue.pop()
            if k in steps and k not in seen:
                seen.add(k)
                queue.extend(successors(steps[k]))
        orphans = sorted(set(steps) - seen)
        for k in orphans:
            del steps[k]
        return [key, *orphans]

    def message(removed: list[str]) -> str:
        also = f" (with {', '.join(repr(k) for k in removed[1:])}, only reached through it)" if removed[1:] else ""
        return f"Journey: deleted step {key!r}{also}."

    return _change(workflow, actor, message, change)


def workflow_step_move(*, workflow: Workflow, key: str, direction: str, actor=None) -> None:
    """Swap a step with the one before it (``up``) or after it (``down``) on
    a straight stretch of the journey: both steps have one path (``next``)
    and nothing else leads into the second one. Branches, splits, waits for
    an event and End steps are moved by deleting and adding them."""
    if direction not in ("up", "down"):
        raise ValidationError({"direction": ["up or down."]})

    def change(definition: dict) -> None:
        steps = definition["steps"]
        if key not in steps:
            raise ValidationError({"step": [f"No step {key!r} in this journey."]})
        if direction == "up":
            lower = key
            incoming = _incoming(steps, lower)
            upper = incoming[0][0] if len(incoming) == 1 and definition["start"] != lower else None
            if upper is None:
                raise ValidationError({"direction": [f"{key!r} has no single step before it to swap with."]})
        else:
            upper = key
            if TARGETS.get(steps[upper].get("type")) != ("next",):
                raise ValidationError({"direction": [f"{key!r} has no single step after it to swap with."]})
            lower = steps[upper]["next"]
            if len(_incoming(steps, lower)) != 1:
                raise ValidationError({"direction": [f"Other paths lead to {lower!r} too: it cannot move."]})
        for k in (upper, lower):
            if TARGETS.get(steps[k].get("type")) != ("next",):
                raise ValidationError({"direction": [
                    f"{k!r} ({step_type_label(steps[k].get('type', '')).lower()}) is not a one-path step; "
                    "only steps with a single next step swap places."]})
        # ... -> upper -> lower -> rest  becomes  ... -> lower -> upper -> rest
        for k, f in _incoming(steps, upper):
            steps[k][f] = lower
        if definition["start"] == upper:
            definition["start"] = lower
        rest = steps[lower]["next"]
        steps[lower]["next"] = upper
        steps[upper]["next"] = rest

    _change(workflow, actor, lambda _: f"Journey: moved step {key!r} {direction}.", change)
