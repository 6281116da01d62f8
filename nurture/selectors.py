"""Reads for the admin and the API: workflow and step metrics."""
from __future__ import annotations

from django.db.models import Count, OuterRef, Q, Subquery

from nurture.graph import step_order
from nurture.models import Enrollment, Message, StepExecution, StepTally, Workflow

MESSAGE_COUNTS = {
    "sent": Count("pk", filter=Q(status="sent")),
    "delivered": Count("pk", filter=Q(delivered_at__isnull=False)),
    "opened": Count("pk", filter=Q(opened_at__isnull=False)),
    "clicked": Count("pk", filter=Q(clicked_at__isnull=False)),
    "unsubscribed": Count("pk", filter=Q(unsubscribed_at__isnull=False)),
    "bounced": Count("pk", filter=Q(bounced_at__isnull=False)),
}


def workflow_metrics(*, workflow: Workflow) -> dict:
    """Per workflow and per step: enrolled, active, completed, goal
    conversions, messages (sent, delivered, opened, clicked, unsubscribed,
    bounced), and the drop-off from the previous step of the funnel (the
    steps in breadth-first order from the start). Four queries whatever the
    size, one of them the counts of rows retention deleted (StepTally).
    Test runs are not counted."""
    enr = Enrollment.objects.filter(workflow=workflow, is_test=False).aggregate(
        enrolled=Count("pk"),
        active=Count("pk", filter=Q(status="active")),
        completed=Count("pk", filter=Q(status="completed")),
        converted=Count("pk", filter=Q(status="converted")),
        exited=Count("pk", filter=Q(status="exited")),
    )
    per_exec = {
        row["step"]: row["n"]
        for row in StepExecution.objects.filter(workflow=workflow, enrollment__is_test=False).values("step").annotate(n=Count("pk"))
    }
    per_msg = {
        row.pop("step"): row
        for row in Message.objects.filter(workflow=workflow).values("step").annotate(**MESSAGE_COUNTS)
    }
    # Rows retention deleted still count (StepTally holds their counts).
    for tally in StepTally.objects.filter(workflow=workflow):
        per_exec[tally.step] = per_exec.get(tally.step, 0) + tally.executed
        row = per_msg.setdefault(tally.step, dict.fromkeys(MESSAGE_COUNTS, 0))
        for k in MESSAGE_COUNTS:
            row[k] += getattr(tally, k)
    msgs = {k: sum(row[k] for row in per_msg.values()) for k in MESSAGE_COUNTS}
    definition = workflow.current_version.definition if workflow.current_version else workflow.definition
    # Steps of older versions that the current one dropped still count.
    order = step_order(definition) + sorted(set(per_exec) - set(step_order(definition)))
    steps, previous = [], None
    for key in order:
        reached = per_exec.get(key, 0)
        step = (definition.get("steps") or {}).get(key, {})
        row = {"step": key, "type": step.get("type", "?"), "executed": reached,
               **{k: per_msg.get(key, {}).get(k, 0) for k in MESSAGE_COUNTS}}
        row["drop_off"] = max(previous - reached, 0) if previous is not None else 0
        steps.append(row)
        previous = reached
    return {"workflow": workflow.pk, **enr, **msgs, "steps": steps}


def workflows_using_template(*, template_id: int) -> list[Workflow]:
    """Workflows (not archived) whose draft has a send-email step naming the
    template. Published versions are left out: they render their snapshot."""
    from nurture.graph import template_ids

    drafts = Workflow.objects.exclude(status=Workflow.Status.ARCHIVED).only("pk", "name", "definition").order_by("name")
    return [wf for wf in drafts if template_id in template_ids(wf.definition)]


# --- The lead 360 page (martech offers the place) -----------------------------

LEAD_ROWS = 50


def lead_journeys(*, lead, user=None) -> dict:
    """The lead's enrollments, newest first, with the step each is at in
    words (from the version it runs). One query.

    ``Enrollment.step`` is the step to run *next*: a wait, once run, moves
    it on to the step after the wait and sets ``due_at`` to the wait's end.
    A lead in a wait is at the wait ("Wait 3 days"), with the step it leads
    to as ``then``; the wait is known from the enrollment's latest
    execution, read in the same query."""
    from nurture.labels import step_summary

    latest = StepExecution.objects.filter(enrollment=OuterRef("pk")).order_by("-id")
    rows = []
    enrollments = list(Enrollment.objects.filter(lead=lead).select_related("workflow", "version")
                       .annotate(last_step=Subquery(latest.values("step")[:1]),
                                 last_outcome=Subquery(latest.values("outcome")[:1]))
                       .order_by("-enrolled_at", "-id")[:LEAD_ROWS])
    for e in enrollments:
        steps, templates = (e.version.definition or {}).get("steps") or {}, e.version.templates
        active = e.status == Enrollment.Status.ACTIVE
        step, then = (step_summary(steps.get(e.step), templates) if active and e.step else "—"), ""
        waiting_in = steps.get(e.last_step) if active and e.last_outcome == StepExecution.WAITED else None
        if isinstance(waiting_in, dict) and waiting_in.get("type") == "wait":
            step, then = step_summary(waiting_in, templates), step
        rows.append({"e": e, "step": step, "then": then, "steps_done": e.seq, "active": active})
    return {"rows": rows, "capped": len(enrollments) >= LEAD_ROWS}


def lead_messages(*, lead, user=None) -> dict:
    """The lead's messages, newest first, with delivery, open and click
    times. One query."""
    rows = list(Message.objects.filter(lead=lead).select_related("workflow")
                .defer("body").order_by("-created_at", "-id")[:LEAD_ROWS])
    return {"rows": [{"m": m, "status": m.get_status_display().split(" (")[0],
                      "reason": m.status_reason.replace("_", " ")} for m in rows],
            "capped": len(rows) >= LEAD_ROWS}
