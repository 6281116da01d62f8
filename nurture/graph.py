"""The step graph of a workflow and its validation.

Shape (JSON)::

    {"start": "welcome",
     "steps": {
        "welcome": {"type": "send_email", "subject": "Hi {{first_name|there}}", "body": "...", "next": "wait1"},
        "again":   {"type": "send_email", "template": 4, "next": "wait1"},  (an EmailTemplate's id)
        "wait1":   {"type": "wait", "days": 3, "next": "check"},
        "check":   {"type": "branch", "condition": "score >= 50", "yes": "sales", "no": "done"},
        "sales":   {"type": "create_task", "subject": "Call {{email}}", "next": "done"},
        "done":    {"type": "end"}}}

A send-email step gives its ``subject`` and ``body`` (and optional
``html``), or names an email template by id in ``template``; publishing
snapshots the templates into the version.
Every step but ``end`` names its successors in the fields of ``TARGETS``.
Saving validates: the start exists, every target exists, every step is
reachable from the start, and every path ends (no cycle, so a lead can never
loop forever).
"""
from __future__ import annotations

from django.core.exceptions import ValidationError

from nurture.channels import template_check
from nurture.conditions import condition_check

# step type -> fields naming the next step(s)
TARGETS: dict[str, tuple[str, ...]] = {
    "send_email": ("next",),
    "send_sms": ("next",),
    "audience_add": ("next",),
    "audience_remove": ("next",),
    "update_field": ("next",),
    "set_stage": ("next",),
    "create_task": ("next",),
    "notify": ("next",),
    "webhook": ("next",),
    "wait": ("next",),
    "wait_until": ("next", "timeout_next"),
    "branch": ("yes", "no"),
    "split": ("a", "b"),
    "enroll": ("next",),
    "end": (),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "send_email": ("subject", "body"),  # unless it names a template
    "send_sms": ("body",),
    "audience_add": ("audience",),
    "audience_remove": ("audience",),
    "update_field": ("field", "value"),
    "set_stage": ("stage",),
    "create_task": ("subject",),
    "notify": ("channel", "to", "text"),
    "webhook": ("url",),
    "wait_until": ("timeout_hours",),
    "branch": ("condition",),
    "split": ("percent",),
    "enroll": ("workflow",),
}
CONDITION_FIELDS = ("condition",)
# Fields rendered for the lead in the template language (nurture.channels):
# checked on save like an email template's.
RENDERED: dict[str, tuple[str, ...]] = {
    "send_email": ("subject", "body", "html"),
    "send_sms": ("body",),
    "update_field": ("value",),
    "create_task": ("subject", "description"),
    "notify": ("text",),
}


def graph_validate(definition: dict) -> None:
    """Raise ValidationError({"definition": [...]}) listing every problem."""
    errors: list[str] = []
    if not isinstance(definition, dict) or not isinstance(definition.get("steps"), dict) or not definition["steps"]:
        raise ValidationError({"definition": ['Give {"start": <key>, "steps": {<key>: {...}}} with at least one step.']})
    steps: dict = definition["steps"]
    start = definition.get("start")
    known_templates = _existing_templates(template_ids(definition))
    if start not in steps:
        errors.append(f"start: step {start!r} does not exist.")
    for key, step in steps.items():
        if not isinstance(step, dict):
            errors.append(f"{key}: must be an object.")
            continue
        kind = step.get("type")
        if kind not in TARGETS:
            errors.append(f"{key}.type: unknown step type {kind!r} (one of {', '.join(TARGETS)}).")
            continue
        required = REQUIRED.get(kind, ())
        if kind == "send_email" and step.get("template") not in (None, ""):
            required = ()
            ref = step["template"]
            if not isinstance(ref, int) or isinstance(ref, bool):
                errors.append(f"{key}.template: an email template's id (an integer), not {ref!r}.")
            elif ref not in known_templates:
                errors.append(f"{key}.template: no email template with id {ref}.")
            inline = [f for f in ("subject", "body", "html") if step.get(f) not in (None, "")]
            if inline:
                errors.append(f"{key}: give a template or {'/'.join(inline)}, not both.")
        for f in required:
            if step.get(f) in (None, ""):
                errors.append(f"{key}.{f}: required for a {kind} step.")
        for f in RENDERED.get(kind, ()):
            if isinstance(step.get(f), str):
                try:
                    template_check(step[f])
                except ValidationError as exc:
                    errors.append(f"{key}.{f}: {'; '.join(exc.messages)}")
        for f in TARGETS[kind]:
            target = step.get(f)
            if target not in steps:
                errors.append(f"{key}.{f}: target step {target!r} does not exist.")
        if kind == "wait" and not any(step.get(u) for u in ("seconds", "hours", "days", "business_days")):
            errors.append(f"{key}: a wait needs seconds, hours, days or business_days.")
        if kind == "wait_until" and not (step.get("event") or step.get("condition")):
            errors.append(f"{key}: wait_until needs an event or a condition.")
        if kind == "split":
            p = step.get("percent")
            if not isinstance(p, int) or not 0 <= p <= 100:
                errors.append(f"{key}.percent: an integer from 0 to 100.")
        if kind == "notify" and step.get("channel") not in ("email", "webhook"):
            errors.append(f"{key}.channel: email or webhook.")
        for f in CONDITION_FIELDS:
            if step.get(f):
                try:
                    condition_check(step[f])
                except ValidationError as exc:
                    errors.append(f"{key}.{f}: {'; '.join(exc.messages)}")
        for block in step.get("blocks", []) or []:
            if isinstance(block, dict) and block.get("condition"):
                try:
                    condition_check(block["condition"])
                except ValidationError as exc:
                    errors.append(f"{key}.blocks: {'; '.join(exc.messages)}")
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                try:
                    template_check(block["text"])
                except ValidationError as exc:
                    errors.append(f"{key}.blocks: {'; '.join(exc.messages)}")
    if errors:
        raise ValidationError({"definition": errors})

    # Reachability and cycles (iterative DFS with colours).
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {k: WHITE for k in steps}
    stack = [(start, iter(successors(steps[start])))]
    colour[start] = GREY
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            colour[node] = BLACK
            stack.pop()
            continue
        if colour[nxt] == GREY:
            errors.append(f"{node}: leads back to {nxt!r}; every path must end (no loops).")
        elif colour[nxt] == WHITE:
            colour[nxt] = GREY
            stack.append((nxt, iter(successors(steps[nxt]))))
    unreachable = sorted(k for k, c in colour.items() if c == WHITE)
    if unreachable:
        errors.append(f"unreachable steps: {', '.join(unreachable)}.")
    if errors:
        raise ValidationError({"definition": errors})


def successors(step: dict) -> list[str]:
    return [step[f] for f in TARGETS.get(step.get("type"), ()) if step.get(f)]


def step_order(definition: dict) -> list[str]:
    """Steps in breadth-first order from the start (for metrics and funnels)."""
    steps = definition.get("steps", {})
    seen, queue = [], [definition.get("start")]
    while queue:
        k = queue.pop(0)
        if k in steps and k not in seen:
            seen.append(k)
            queue.extend(successors(steps[k]))
    return seen


def template_ids(definition: dict) -> set[int]:
    """The email template ids the definition's send-email steps name."""
    steps = definition.get("steps") if isinstance(definition, dict) else None
    return {
        step["template"] for step in (steps.values() if isinstance(steps, dict) else ())
        if isinstance(step, dict) and step.get("type") == "send_email"
        and isinstance(step.get("template"), int) and not isinstance(step.get("template"), bool)
        and 0 < step["template"] < 2**63  # a larger number is no row's id (and overflows the column)
    }


def _existing_templates(ids: set[int]) -> set[int]:
    """The ids among ``ids`` that exist. Inside a transaction (every workflow
    save and publish, under the workflow's row lock) the template rows are
    held until it commits, so a template cannot be deleted between this check
    and the save that names it: ``email_template_delete`` locks the template
    first, then looks for drafts using it (lock order: workflow, template)."""
    from django.db import transaction

    from nurture.models import EmailTemplate

    if not ids:
        return set()
    rows = EmailTemplate.objects.filter(pk__in=ids).order_by("pk")
    if transaction.get_connection().in_atomic_block:
        rows = rows.select_for_update(no_key=True)
    return set(rows.values_list("pk", flat=True))
