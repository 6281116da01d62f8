"""An assignment's lifecycle: open -> worked (first touch, the SLA clock
stops) -> closed (converted, disqualified, the CRM's owner changed)."""
from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from martech.models import Lead
from routing.models import Assignment
from routing.services.queue import waiting_assign_later

Status = Assignment.Status
Lifecycle = Assignment.Lifecycle
CloseReason = Assignment.CloseReason


# --- First touch ---------------------------------------------------------------


def first_touch_record(*, lead_id: int, source: str, at: datetime | None = None) -> bool:
    """Stop the SLA clock of the lead's current assignment (once). One
    UPDATE statement, atomic by itself (no transaction of its own: a
    capture task's SQL move paid a BEGIN and a COMMIT for it)."""
    at = at or timezone.now()
    # The first touch also moves the lifecycle from open to worked (a closed
    # assignment stays closed).
    updated = Assignment.objects.filter(
        lead_id=lead_id, is_current=True, status=Status.ASSIGNED, first_touch_at__isnull=True, assigned_at__lte=at,
    ).update(first_touch_at=at, first_touch_source=source[:100],
             lifecycle=Case(When(lifecycle=Lifecycle.OPEN, then=Value(Lifecycle.WORKED)), default=F("lifecycle")))
    return bool(updated)


# --- Assignment lifecycle: open -> worked -> closed ----------------------------


@transaction.atomic
def assignment_close(*, lead_id: int, reason: str, at: datetime | None = None) -> Assignment | None:
    """Close the lead's current assignment (converted, disqualified, owner
    changed in the CRM, the API): it no longer counts against the rep's cap,
    and the SLA chain stops. A waiting one also leaves the waiting queue (it
    is no longer current), so a disqualified lead is never handed out later.
    Returns the closed assignment, None when there was nothing open (a
    repeated call changes nothing). Lock order: the lead, then the assignment.
    A freed place may let waiting leads through: the waiting queue runs in
    the background after commit."""
    if reason not in CloseReason.values:
        raise ValidationError({"reason": [f"{reason!r} is not a close reason; use one of {', '.join(CloseReason.values)}."]})
    at = at or timezone.now()
    if not list(Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk", flat=True)):
        raise ValidationError({"lead_id": [f"No lead with id {lead_id}."]})
    current = Assignment.objects.select_for_update().filter(lead_id=lead_id, is_current=True).first()
    if current is None or current.lifecycle == Lifecycle.CLOSED:
        return None
    current.lifecycle, current.closed_at, current.close_reason = Lifecycle.CLOSED, at, reason
    fields = ["lifecycle", "closed_at", "close_reason"]
    if current.status == Status.WAITING:
        current.is_current, current.ended_at, current.end_reason = False, at, f"closed: {reason}"[:100]
        fields += ["is_current", "ended_at", "end_reason"]
    current.save(update_fields=fields)
    if current.rep_id is not None:
        waiting_assign_later()
    return current


def assignment_touch(*, lead_id: int, source: str, at: datetime | None = None) -> Assignment | None:
    """The API's "the rep worked this lead": the first touch (stops the SLA
    clock, open -> worked). Returns the current assignment."""
    first_touch_record(lead_id=lead_id, source=source, at=at)
    return Assignment.objects.filter(lead_id=lead_id, is_current=True).first()


def crm_owner_changed(*, lead_ids: list[int]) -> int:
    """A CRM pull changed these leads' owner: where the new owner is not the
    rep of the current assignment, the CRM reassigned the lead and the
    assignment is closed (crm_owner_changed). Runs inside the pull's write
    (the lead row is locked there already). Returns how many closed."""
    closed = 0
    rows = Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, status=Status.ASSIGNED).exclude(
        lifecycle=Lifecycle.CLOSED).values_list("lead_id", "rep__user_id", "lead__owner_id")
    for lead_id, rep_user, owner in rows:
        if rep_user is None or rep_user != owner:
            closed += assignment_close(lead_id=lead_id, reason=CloseReason.CRM_OWNER) is not None
    return closed
