"""SLA escalation: overdue first touches walked along the chain (remind the
rep, notify the manager, reassign), each step once."""
from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from martech.models import Lead
from routing import engine
from routing.models import Assignment, Team
from routing.services.route import lead_route
from routing.services.selectors import rep_absences_from

log = logging.getLogger(__name__)
Status = Assignment.Status
Trigger = Assignment.Trigger
Lifecycle = Assignment.Lifecycle


# --- SLA escalation ---------------------------------------------------------------


def _notify(*, escalation_id: int, subject: str, body: str, to: list[str]) -> None:
    """Email and the Slack-compatible webhook (``martech.notify``), after
    commit. The Escalation row (unique per assignment and level) is the
    idempotency key: a second run of the task never gets here for the same
    step. A failure does not stop the chain; it is recorded on the
    escalation row (shown in the admin) and as a ``Notification``."""
    from django.conf import settings

    from martech import notify
    from routing.models import Escalation

    key = f"routing:sla:{escalation_id}"
    outcome: dict[str, str] = {}
    if to:
        outcome["email"] = notify.email_send(subject=subject, body=body, to=to, source="routing:sla",
                                             key=f"{key}:email").summary[:200]
    url = settings.MARTECH_ROUTING["SLACK_WEBHOOK_URL"]
    if url:
        outcome["webhook"] = notify.webhook_post(
            url=url, payload={"text": f"{subject}\n{body}"}, source="routing:sla", key=f"{key}:webhook",
            timeout=settings.MARTECH_ROUTING["WEBHOOK_TIMEOUT"]).summary[:200]
    escalation = Escalation.objects.get(pk=escalation_id)
    Escalation.objects.filter(pk=escalation_id).update(detail={**escalation.detail, **outcome})


def routing_admin_emails() -> list[str]:
    """The routing admins (active users in the ``martech.roles.ROUTING_ADMINS``
    group) who have an email: the escalation path of last resort."""
    from django.contrib.auth import get_user_model

    from martech.roles import ROUTING_ADMINS

    return sorted(set(get_user_model().objects.filter(groups__name=ROUTING_ADMINS, is_active=True)
                      .exclude(email="").values_list("email", flat=True)))


def escalation_recipients(*, rep, team: Team | None) -> tuple[str | None, list[str]]:
    """Who hears of an SLA breach: the rep's manager, else the team's
    escalation contact, else the routing admins. Returns (via, emails);
    via is None (and emails empty) only when there is no path at all."""
    if rep.manager_id and rep.manager.email:
        return "manager", [rep.manager.email]
    team = team or rep.team
    contact = team.escalation_contact if team is not None and team.escalation_contact_id else None
    if contact is not None and contact.email:
        return "team escalation contact", [contact.email]
    admins = routing_admin_emails()
    return ("routing admins", admins) if admins else (None, [])


def teams_without_escalation_path() -> list[Team]:
    """Active teams with a rep (active, no manager) whose breaches would
    fall through to the routing admins: no escalation contact is set."""
    return list(Team.objects.filter(is_active=True, escalation_contact__isnull=True,
                                    reps__is_active=True, reps__manager__isnull=True).distinct().order_by("name"))


def _lead_label(lead: Lead) -> str:
    return f"{lead.email or lead.pk}"


def sla_escalate(*, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Walk overdue assignments (current, assigned, no first touch, past the
    SLA due time) one step along the chain each time a step is due:
    1 remind the rep (a sales task and an email), 2 notify the manager
    (email and webhook), 3 reassign (reroute excluding the rep). Each step
    is written once (Escalation is unique per level); rows another worker
    holds are skipped."""
    from martech.services.tasks import task_create
    from routing.models import Escalation

    now = now or timezone.now()
    counts = Counter()
    ids = list(Assignment.objects.filter(is_current=True, status=Status.ASSIGNED, first_touch_at__isnull=True,
                                         sla_due_at__lte=now).exclude(lifecycle=Lifecycle.CLOSED)
               .order_by("sla_due_at").values_list("id", "lead_id")[:limit])
    for assignment_id, lead_id in ids:
        with transaction.atomic():
            # The lead first, as lead_route does (same lock order, no deadlock).
            if not list(Lead.objects.select_for_update(skip_locked=True).filter(pk=lead_id).values_list("pk", flat=True)):
                continue
            a = (Assignment.objects.select_for_update(skip_locked=True, of=("self",))
                 .select_related("rep", "rep__manager", "sla_policy", "lead", "team", "team__escalation_contact")
                 .filter(pk=assignment_id, is_current=True, first_touch_at__isnull=True)
                 .exclude(lifecycle=Lifecycle.CLOSED).first())
            if a is None or a.rep is None or a.sla_policy is None:
                continue
            policy, rep = a.sla_policy, a.rep
            away = rep_absences_from(rep.pk, a.sla_due_at)  # the later steps count business hours too
            due = {
                Escalation.Level.REMIND_REP: a.sla_due_at,
                Escalation.Level.NOTIFY_MANAGER: engine.business_deadline(rep, a.sla_due_at, policy.notify_manager_after_hours, away),
                Escalation.Level.REASSIGN: engine.business_deadline(rep, a.sla_due_at, policy.reassign_after_hours, away),
            }
            level = a.escalation_level + 1
            if level > Escalation.Level.REASSIGN or now < due[level]:
                continue
            escalation, created = Escalation.objects.get_or_create(assignment=a, level=level, defaults={"created_at": now})
            if not created:
                continue
            Assignment.objects.filter(pk=a.pk).update(escalation_level=level)
            label = _lead_label(a.lead)
            if level == Escalation.Level.REMIND_REP:
                task_create(key=f"routing:sla-remind:{a.pk}", lead=a.lead, owner=rep.user, source="routing",
                            subject=f"First touch overdue: {label}", due_at=now)
                body = f"{label} was assigned to you at {a.assigned_at:%Y-%m-%d %H:%M} UTC; first touch was due {a.sla_due_at:%Y-%m-%d %H:%M} UTC."
                transaction.on_commit(lambda e=escalation.pk, b=body, to=[rep.email]: _notify(
                    escalation_id=e, subject="Reminder: lead waiting for first touch", body=b, to=to))
                counts["reminded"] += 1
            elif level == Escalation.Level.NOTIFY_MANAGER:
                via, to = escalation_recipients(rep=rep, team=a.team)
                body = f"{label} assigned to {rep.name} has had no first touch since {a.assigned_at:%Y-%m-%d %H:%M} UTC (due {a.sla_due_at:%Y-%m-%d %H:%M} UTC)."
                escalation.detail = {"manager": rep.manager.name if rep.manager else None, "via": via, "to": to}
                if not to:
                    escalation.detail["error"] = ("no escalation path: the rep has no manager, the team no escalation "
                                                  "contact, and no routing admin has an email")
                    log.warning("routing: SLA escalation %s has nobody to tell (rep %s)", escalation.pk, rep.pk)
                escalation.save(update_fields=["detail"])
                transaction.on_commit(lambda e=escalation.pk, b=body, to=to: _notify(
                    escalation_id=e, subject=f"SLA breach: {rep.name}", body=b, to=to))
                counts["manager_notified"] += 1
            else:
                # In the same transaction as the escalation row, so a crash
                # leaves neither (the next run retries the whole step).
                # Never back to a rep who had this lead before (the one who
                # breached, and any earlier one): no reassignment loop.
                before = set(Assignment.objects.filter(lead_id=a.lead_id, rep__isnull=False).values_list("rep_id", flat=True))
                new, _ = lead_route(lead_id=a.lead_id, trigger=Trigger.ESCALATION, reason="SLA breach: reassigned",
                                    reroute=True, now=now, exclude=before | {rep.pk})
                escalation.detail = {"new_assignment": new.pk, "rep": new.rep.name if new.rep else None,
                                     "status": new.status}
                escalation.save(update_fields=["detail"])
                counts["reassigned"] += 1
    return dict(counts)


# --- Configuration writes (reps, teams, territories, SLA policies, drafts) ------
