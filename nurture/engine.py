"""The execution engine: advance due enrollments, exactly once.

How a step runs once (the data rule "every outbound action has an idempotency key
recorded in the same transaction that decides it"):

1. ``enrollments_advance_due`` takes a batch of due, active enrollments with
   ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serializes
   writers instead), so several workers share the due set without waiting on
   each other and never take the same row.
2. For each, in a savepoint, it decides the step: inserts a StepExecution
   whose ``key`` (enrollment, visit number, step) is unique, writes any local
   effect (task, field, stage, audience) and, for a message, a Message row in
   status ``sending``; then moves the enrollment to its next step and due time.
3. After the batch commits, the messages are handed to their channels and
   marked ``sent`` one by one. A crash before the commit rolls the whole
   decision back (nothing was sent); a crash after it leaves some messages
   ``sending``, which ``messages_recover`` reconciles: it asks the backend
   whether the key went out (``was_sent``) and sends only those that did not.
   A backend that cannot tell gets ``in_doubt`` (shown in the admin): never a
   blind second send.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from martech import notify
from martech.models import Event, Lead
from martech.selectors import lead_has_consent
from nurture import channels
from nurture.conditions import condition_matches, segment_matches, segment_q, segments_by_id
from nurture.models import AudienceMember, Enrollment, Message, StepExecution, Suppression, Workflow, WorkflowVersion

log = logging.getLogger(__name__)
WAIT_UNTIL_POLL = timedelta(hours=1)
MAX_STEPS_PER_RUN = 50  # instant steps chained in one go, a guard only (graphs have no loops)


# Statuses of messages that never went out: they count for no frequency cap.
NOT_SENT = [Message.Status.FAILED, Message.Status.TEST, Message.Status.SKIPPED]


def cfg() -> dict:
    return settings.MARTECH_NURTURE


@dataclass
class Outcome:
    outcome: str
    next_step: str | None = None  # None: the enrollment completes
    due_at: datetime | None = None  # when the next step is due (None: now)
    detail: dict = field(default_factory=dict)
    message: dict | None = None  # fields of a Message to create
    delay_until: datetime | None = None  # not executed: try this step again then
    exit: str | None = None  # converted / exited


@dataclass
class Ctx:
    now: datetime
    dry: bool = False  # test mode: decide and render, change nothing
    compress_waits: bool = False
    # Batch prefetches (None: query per lead, as test mode does).
    consent: dict[tuple[int, str], str] | None = None
    suppressed: set[str] | None = None
    sends: dict[int, list[datetime]] | None = None
    # Suppression segments: {segment id: ids of the batch's leads in it}.
    segment_hits: dict[int, set[int]] | None = None
    # Email templates by id to render instead of the version's snapshot (a
    # test run of a draft renders the current ones).
    templates: dict[str, dict] | None = None
    # (lead id, topic id) of the batch's leads that left a topic (None: query per lead).
    left_topics: set[tuple[int, int]] | None = None
    # Double opt-in requests pending for the batch's leads without email consent:
    # {lead id: when the request expires} (None: query per lead).
    awaiting: dict[int, datetime] | None = None
    # Subscription topics met so far: {key: (id, name)}, None for a key that names no topic.
    topics: dict[str, tuple[int, str] | None] = field(default_factory=dict)


def batch_prefetch(ctx: Ctx, leads: list[Lead], segment_ids=(), topics: bool = False) -> None:
    """Consent, suppression, the last week's marketing emails and the
    suppression segments of every lead of the batch in three queries plus
    one per segment (instead of several per step); one more for the pending
    double opt-in requests when a lead of the batch has no email consent,
    and with ``topics`` (a step of the batch names one) one for the topics
    they left. The
    batch holds the leads' row locks (see enrollments_advance_due), so these
    stay true until it commits."""
    from martech.models import ConsentRecord

    ids = [l.pk for l in leads]
    ctx.consent = {}
    for lead_id, channel, status in (
        ConsentRecord.objects.filter(lead_id__in=ids, topic__isnull=True).order_by("lead_id", "channel", "-recorded_at", "-id")
        .values_list("lead_id", "channel", "status")
    ):
        ctx.consent.setdefault((lead_id, channel), status)
    emails = [l.email.lower() for l in leads if l.email]
    ctx.suppressed = set(Suppression.objects.filter(address__in=emails).values_list("address", flat=True))
    ctx.sends = {}
    for lead_id, at in (
        Message.objects.filter(lead_id__in=ids, channel=Message.Channel.EMAIL, is_marketing=True,
                               created_at__gt=ctx.now - timedelta(days=7))
        .exclude(status__in=NOT_SENT).order_by("created_at")
        .values_list("lead_id", "created_at")
    ):
        ctx.sends.setdefault(lead_id, []).append(at)
    ctx.segment_hits = {
        pk: set(Lead.objects.filter(pk__in=ids).filter(segment_q(seg, now=ctx.now)).values_list("pk", flat=True))
        for pk, seg in segments_by_id(segment_ids).items()
    }
    waiting_for = [pk for pk in ids if ctx.consent.get((pk, "email")) != "granted"]
    ctx.awaiting = {}
    if waiting_for:
        from martech.models import ConsentConfirmation

        for lead_id, expires in (ConsentConfirmation.objects.filter(
                lead_id__in=waiting_for, channel="email", status=ConsentConfirmation.Status.PENDING,
                expires_at__gt=ctx.now).order_by("lead_id", "expires_at").values_list("lead_id", "expires_at")):
            ctx.awaiting[lead_id] = expires  # the latest expiry wins
    if topics:
        latest: dict[tuple[int, int], str] = {}
        for lead_id, topic_id, status in (
            ConsentRecord.objects.filter(lead_id__in=ids, topic__isnull=False)
            .order_by("lead_id", "topic_id", "-recorded_at", "-id").values_list("lead_id", "topic_id", "status")
        ):
            latest.setdefault((lead_id, topic_id), status)
        ctx.left_topics = {pair for pair, status in latest.items() if status == ConsentRecord.Status.WITHDRAWN}


# --- step handlers ------------------------------------------------------------
def _wait_delta(step: dict, start: datetime, lead: Lead) -> datetime:
    due = start + timedelta(
        seconds=step.get("seconds", 0) or 0, hours=step.get("hours", 0) or 0, days=step.get("days", 0) or 0
    )
    bdays = step.get("business_days") or 0
    if bdays:
        local = due.astimezone(_lead_tz(lead))
        while bdays:
            local += timedelta(days=1)
            if local.weekday() < 5:
                bdays -= 1
        due = local.astimezone(ZoneInfo("UTC"))
    return due


def _lead_tz(lead: Lead) -> ZoneInfo:
    try:
        return ZoneInfo(lead.time_zone or settings.TIME_ZONE)
    except Exception:  # noqa: BLE001 - a bad stored zone falls back, it is validated on write
        return ZoneInfo(settings.TIME_ZONE)


def quiet_until(lead: Lead, now: datetime) -> datetime | None:
    """The end of the quiet hours when ``now`` is inside them in the lead's zone."""
    start, end = cfg()["QUIET_START_HOUR"], cfg()["QUIET_END_HOUR"]
    local = now.astimezone(_lead_tz(lead))
    inside = (local.hour >= start or local.hour < end) if start > end else (start <= local.hour < end)
    if not inside:
        return None
    resume = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if resume <= local:
        resume += timedelta(days=1)
    return resume.astimezone(ZoneInfo("UTC"))


def cap_until(lead: Lead, now: datetime, sent: list[datetime] | None = None) -> datetime | None:
    """When the global marketing-email cap lets the next one go, or None if
    it may go now. ``sent``: the lead's marketing emails of the last week,
    oldest first, including those decided in this batch."""
    if sent is None:
        sent = list(
            Message.objects.filter(
                lead=lead, channel=Message.Channel.EMAIL, is_marketing=True, created_at__gt=now - timedelta(days=7)
            ).exclude(status__in=NOT_SENT).order_by("created_at").values_list("created_at", flat=True)
        )
    sent = [t for t in sent if t > now - timedelta(days=7)]
    waits = []
    day = [t for t in sent if t > now - timedelta(days=1)]
    if len(day) >= cfg()["EMAIL_DAILY_CAP"]:
        waits.append(day[len(day) - cfg()["EMAIL_DAILY_CAP"]] + timedelta(days=1))
    if len(sent) >= cfg()["EMAIL_WEEKLY_CAP"]:
        waits.append(sent[len(sent) - cfg()["EMAIL_WEEKLY_CAP"]] + timedelta(days=7))
    return max(waits) if waits else None


def _has_consent(lead: Lead, channel: str, ctx: Ctx) -> bool:
    if ctx.consent is not None:
        return ctx.consent.get((lead.pk, channel)) == "granted"
    return lead_has_consent(lead=lead, channel=channel)


def _consent_refusal(lead: Lead, channel: str, address: str, ctx: Ctx, *, marketing: bool = True) -> str | None:
    """Why this message may not go to ``address``, or None. Consent is
    marketing consent: a transactional email (``marketing: false``, e.g. a
    trial's welcome or a demo confirmation) needs none and goes without it;
    the suppression list (bounces, complaints, unsubscribes) still stops it.
    The check used to ask every email for consent, so a transactional first
    step was skipped for every lead that never ticked a consent box."""
    if not address:
        return f"no_{'email' if channel == 'email' else 'phone'}"
    transactional = channel == "email" and not marketing
    if not transactional and not _has_consent(lead, channel, ctx):
        return "no_consent"
    if channel == "email":
        if ctx.suppressed is not None:
            if address.lower() in ctx.suppressed:
                return "suppressed"
        elif Suppression.objects.filter(address=address.lower()).exists():
            return "suppressed"
    return None


def _awaiting_confirmation(lead: Lead, ctx: Ctx) -> datetime | None:
    """When the lead's pending double opt-in request for email expires, or None."""
    from martech.models import ConsentConfirmation

    if ctx.awaiting is not None:
        return ctx.awaiting.get(lead.pk)

    return (ConsentConfirmation.objects.filter(lead=lead, channel="email", status=ConsentConfirmation.Status.PENDING,
                                               expires_at__gt=ctx.now)
            .order_by("-expires_at").values_list("expires_at", flat=True).first())


def _topic(key: str, ctx: Ctx) -> tuple[int, str] | None:
    if key not in ctx.topics:
        from martech.models import SubscriptionType

        ctx.topics[key] = SubscriptionType.objects.filter(key=key).values_list("pk", "name").first()
    return ctx.topics[key]


def topic_refusal(lead: Lead, topic_id: int, ctx: Ctx) -> str | None:
    """``topic_unsubscribed`` when the lead left the topic (its latest topic record)."""
    if ctx.left_topics is not None:
        left = (lead.pk, topic_id) in ctx.left_topics
    else:
        from martech.selectors import lead_left_topic

        left = lead_left_topic(lead_id=lead.pk, topic_id=topic_id)
    return "topic_unsubscribed" if left else None


def _send_email(enr, step, ctx: Ctx) -> Outcome:
    lead = enr.lead
    marketing = step.get("marketing", True)
    refusal = _consent_refusal(lead, "email", lead.email or "", ctx, marketing=marketing)
    if refusal == "no_consent":
        until = _awaiting_confirmation(lead, ctx)
        if until is not None:
            # Double opt-in: the person has not clicked yet. Wait (woken by the
            # click, see receivers.on_consent), give up when the request expires.
            if not ctx.dry:
                enr.state = {**(enr.state or {}), "awaiting_confirmation": True}
            return Outcome("delayed:awaiting_confirmation", delay_until=min(until, ctx.now + WAIT_UNTIL_POLL))
    if refusal:
        return Outcome(f"skipped:{refusal}", step["next"])
    topic = _topic(step["topic"], ctx) if step.get("topic") else None
    if step.get("topic"):
        # A topic deleted after publishing (none of its messages existed): never mail on a guess.
        refusal = topic_refusal(lead, topic[0], ctx) if topic else "unknown_topic"
        if refusal:
            return Outcome(f"skipped:{refusal}", step["next"], detail={"topic": topic[1] if topic else step["topic"]})
    if marketing and not ctx.dry:
        history = ctx.sends.setdefault(lead.pk, []) if ctx.sends is not None else None
        until = cap_until(lead, ctx.now, history)
        if until:
            return Outcome("delayed:frequency_cap", delay_until=until)
        if history is not None:
            history.append(ctx.now)
    email = channels.render_email(email_content(enr, step, ctx), lead, blocks=step.get("blocks") or [])
    return Outcome(
        "sent", step["next"],
        message={
            "channel": Message.Channel.EMAIL, "to": lead.email, "is_marketing": marketing,
            "topic_id": topic[0] if topic else None,
            "subject": email["subject"], "body": email["text"], "html": email["html"],
        },
        detail={"template": step["template"]} if step.get("template") else {},
    )


def email_content(enr, step: dict, ctx: Ctx) -> dict:
    """What a send-email step sends: its own subject and body, or the email
    template it names as the enrollment's version snapshotted it at publish
    (editing a template changes a running journey only at the next publish);
    a test run passes the templates to use in ``ctx.templates``."""
    ref = step.get("template")
    if ref in (None, ""):
        return {"subject": step["subject"], "text": step["body"], "html": step.get("html", ""), "preheader": ""}
    found = (ctx.templates if ctx.templates is not None else enr.version.templates or {}).get(str(ref))
    if found is None:
        # Publishing snapshots every referenced template: a version without
        # it is broken, and the enrollment's failure is kept and retried.
        raise ValidationError({"template": [f"Email template {ref} is not in this workflow version."]})
    return found


def _send_sms(enr, step, ctx: Ctx) -> Outcome:
    lead = enr.lead
    refusal = _consent_refusal(lead, "sms", str(lead.phone or ""), ctx)
    if refusal:
        return Outcome(f"skipped:{refusal}", step["next"])
    until = quiet_until(lead, ctx.now)
    if until and not ctx.dry:
        return Outcome("delayed:quiet_hours", delay_until=until)
    return Outcome("sent", step["next"], message={
        "channel": Message.Channel.SMS, "to": str(lead.phone), "body": channels.render(step["body"], lead),
    })


def _audience(enr, step, ctx: Ctx) -> Outcome:
    add = step["type"] == "audience_add"
    if add and not _has_consent(enr.lead, "ads", ctx):
        return Outcome("skipped:no_consent", step["next"])
    if not ctx.dry:
        if add:
            AudienceMember.objects.get_or_create(audience=step["audience"], lead=enr.lead)
        else:
            AudienceMember.objects.filter(audience=step["audience"], lead=enr.lead).delete()
    return Outcome("added" if add else "removed", step["next"], detail={"audience": step["audience"]})


def _update_field(enr, step, ctx: Ctx) -> Outcome:
    from martech.services.leads import lead_upsert

    name, value = step["field"], channels.render(str(step["value"]), enr.lead)
    data = {"properties": {name.removeprefix("properties."): value}} if name.startswith("properties.") else {name: value}
    if not ctx.dry:
        lead_upsert(data=data, source=f"nurture:{enr.workflow_id}", lead=enr.lead, overwrite=True)
    return Outcome("updated", step["next"], detail={"field": name, "value": value})


def _set_stage(enr, step, ctx: Ctx) -> Outcome:
    from martech.services.leads import lead_change_stage

    if not ctx.dry:
        lead_change_stage(lead=enr.lead, to_stage=step["stage"], reason=f"nurture workflow {enr.workflow_id}",
                          source=f"nurture:{enr.workflow_id}")
    return Outcome("stage_set", step["next"], detail={"stage": step["stage"]})


def _create_task(enr, step, ctx: Ctx, key: str) -> Outcome:
    from martech.services.tasks import task_create

    subject = channels.render(step["subject"], enr.lead)
    if not ctx.dry:
        # Idempotent by key; the CRM sync pushes it through the task hook.
        task, _ = task_create(key=key, lead=enr.lead, subject=subject, source=f"nurture:{enr.workflow_id}",
                              owner=enr.lead.owner, description=channels.render(step.get("description", ""), enr.lead),
                              due_at=ctx.now + timedelta(days=step.get("due_days", 1)))
        return Outcome("task_created", step["next"], detail={"task": task.pk, "subject": subject})
    return Outcome("task_created", step["next"], detail={"subject": subject})


def _notify(enr, step, ctx: Ctx) -> Outcome:
    text = channels.render(step["text"], enr.lead)
    return Outcome("sent", step["next"], message={
        "channel": Message.Channel.NOTIFY, "to": step["to"], "is_marketing": False,
        "subject": f"[nurture] {enr.workflow.name}", "body": text, "notify_via": step["channel"],
    })


def _webhook(enr, step, ctx: Ctx) -> Outcome:
    return Outcome("sent", step["next"], message={
        "channel": Message.Channel.WEBHOOK, "to": step["url"], "is_marketing": False, "body": "",
    })


def _wait(enr, step, ctx: Ctx) -> Outcome:
    due = ctx.now if ctx.compress_waits else _wait_delta(step, ctx.now, enr.lead)
    return Outcome(StepExecution.WAITED, step["next"], due_at=due, detail={"until": due.isoformat()})


def _wait_until(enr, step, ctx: Ctx) -> Outcome:
    state = enr.state or {}
    since = datetime.fromisoformat(state["since"]) if state.get("since") else ctx.now
    deadline = since + timedelta(hours=step["timeout_hours"])
    met = False
    if step.get("event"):
        met = Event.objects.filter(lead=enr.lead, event_type__name=step["event"], occurred_at__gte=since).exists()
    if not met and step.get("condition"):
        met = condition_matches(step["condition"], enr.lead, now=ctx.now)
    if met:
        return Outcome("met", step["next"])
    if ctx.now >= deadline or ctx.compress_waits:
        return Outcome("timed_out", step["timeout_next"])
    if not ctx.dry:
        enr.state = {**state, "since": since.isoformat(), "waiting_event": step.get("event", "")}
    return Outcome("waiting", delay_until=min(ctx.now + WAIT_UNTIL_POLL, deadline))


def _branch(enr, step, ctx: Ctx) -> Outcome:
    yes = condition_matches(step["condition"], enr.lead, now=ctx.now)
    return Outcome("yes" if yes else "no", step["yes" if yes else "no"])


def split_bucket(workflow_id: int, step_key: str, lead_id: int) -> int:
    """0-99, stable for a lead and step (the same lead always takes the same arm)."""
    return int(hashlib.sha256(f"{workflow_id}:{step_key}:{lead_id}".encode()).hexdigest()[:8], 16) % 100


def _split(enr, step, ctx: Ctx, key_step: str) -> Outcome:
    arm = "a" if split_bucket(enr.workflow_id, key_step, enr.lead_id) < step["percent"] else "b"
    return Outcome(arm, step[arm])


def _enroll(enr, step, ctx: Ctx) -> Outcome:
    target = Workflow.objects.filter(pk=step["workflow"]).first()
    if target is None:
        return Outcome("skipped:no_workflow", step["next"])
    if ctx.dry:
        return Outcome("would_enroll", step["next"], detail={"workflow": target.pk})
    from nurture.services import enrollment_create

    made, reason = enrollment_create(workflow=target, lead=enr.lead, source=f"workflow:{enr.workflow_id}", now=ctx.now)
    return Outcome("enrolled" if made else f"skipped:{reason}", step["next"], detail={"workflow": target.pk})


def decide(enr, step_key: str, step: dict, ctx: Ctx, key: str) -> Outcome:
    kind = step["type"]
    if kind == "end":
        return Outcome("ended", None)
    if kind == "send_email":
        return _send_email(enr, step, ctx)
    if kind == "send_sms":
        return _send_sms(enr, step, ctx)
    if kind in ("audience_add", "audience_remove"):
        return _audience(enr, step, ctx)
    if kind == "update_field":
        return _update_field(enr, step, ctx)
    if kind == "set_stage":
        return _set_stage(enr, step, ctx)
    if kind == "create_task":
        return _create_task(enr, step, ctx, key)
    if kind == "notify":
        return _notify(enr, step, ctx)
    if kind == "webhook":
        return _webhook(enr, step, ctx)
    if kind == "wait":
        return _wait(enr, step, ctx)
    if kind == "wait_until":
        return _wait_until(enr, step, ctx)
    if kind == "branch":
        return _branch(enr, step, ctx)
    if kind == "split":
        return _split(enr, step, ctx, step_key)
    if kind == "enroll":
        return _enroll(enr, step, ctx)
    raise ValidationError({"type": [f"Unknown step type {kind!r}."]})


# --- the loop -------------------------------------------------------------------
def goal_met(enr, now: datetime) -> bool:
    s = enr.version.settings or {}
    if s.get("goal_condition") and condition_matches(s["goal_condition"], enr.lead, now=now):
        return True
    if s.get("goal_event"):
        return Event.objects.filter(lead=enr.lead, event_type__name=s["goal_event"], occurred_at__gte=enr.enrolled_at).exists()
    return False


def journey_refusal(lead: Lead, settings: dict, ctx: Ctx) -> str | None:
    """The workflow's suppression (stages, segments) for ``lead`` now."""
    if settings.get("suppress_stages") and lead.lifecycle_stage_id and lead.lifecycle_stage.key in settings["suppress_stages"]:
        return "suppressed_stage"
    for seg_id in settings.get("suppress_segments") or []:
        if ctx.segment_hits is not None:
            if lead.pk in ctx.segment_hits.get(seg_id, ()):
                return "suppressed_segment"
        else:
            seg = segments_by_id([seg_id]).get(seg_id)
            if seg is not None and segment_matches(seg, lead, now=ctx.now):
                return "suppressed_segment"
    return None


def send_refusal(lead: Lead, channel: str, address: str, settings: dict, ctx: Ctx, *,
                 marketing: bool = True) -> str | None:
    """The one answer to "may this message go to this lead now": the
    workflow's suppressed stages and segments, the channel's consent
    (withdrawn, never given; not asked of a transactional email), the
    address (missing, bounced, complained, unsubscribed). Used when a step is
    decided and again, under the lead's row lock, at the moment each message
    is sent."""
    return journey_refusal(lead, settings, ctx) or _consent_refusal(lead, channel, address, ctx, marketing=marketing)


def suppressed_now(enr, ctx: Ctx) -> str | None:
    """Suppression holds for the whole journey, not just at enrollment: a
    lead who has since moved into a suppressed stage or segment leaves at its
    next step, before anything is decided (and delivery checks again)."""
    return journey_refusal(enr.lead, enr.version.settings or {}, ctx)


def _finish(enr: Enrollment, status: str, reason: str, now: datetime) -> None:
    enr.status, enr.exit_reason, enr.ended_at, enr.due_at = status, reason[:100], now, None


# Step types that write local rows (tasks, lead fields, audiences,
# enrollments): an enrollment running one gets its own savepoint, so a failure
# rolls back exactly its effects. Pure decisions (sends, waits, branches) need
# none: nothing is written until the batch's bulk inserts.
EFFECTFUL = {"audience_add", "audience_remove", "update_field", "set_stage", "create_task", "enroll"}


@dataclass
class Decided:
    execution: StepExecution
    message: dict | None


def enrollment_step(enr: Enrollment, ctx: Ctx, out_rows: list[Decided]) -> int:
    """Decide the enrollment's due steps (instant ones chained), appending
    the executions (and their messages) to ``out_rows`` for the batch's bulk
    insert; updates ``enr`` in memory. Returns the number of steps executed."""
    now = ctx.now
    executed = 0
    if goal_met(enr, now):
        _finish(enr, Enrollment.Status.CONVERTED, "goal", now)
        return 0
    suppressed = suppressed_now(enr, ctx)
    if suppressed:
        _finish(enr, Enrollment.Status.EXITED, suppressed, now)
        return 0
    steps = enr.version.definition["steps"]
    while enr.status == Enrollment.Status.ACTIVE and executed < MAX_STEPS_PER_RUN:
        step_key = enr.step
        step = steps[step_key]
        key = f"n:{enr.pk}:{enr.seq}:{step_key}"
        out = decide(enr, step_key, step, ctx, key)
        if out.delay_until is not None:
            enr.due_at = out.delay_until
            break
        detail = dict(out.detail)
        message = None
        if out.message:
            message = dict(out.message)
            html, via = message.pop("html", ""), message.pop("notify_via", "")
            if html:
                detail["html"] = html
            if via:
                detail["via"] = via
        out_rows.append(Decided(StepExecution(
            enrollment=enr, workflow_id=enr.workflow_id, step=step_key, step_type=step["type"], key=key,
            outcome=out.outcome, detail=detail, due_at=enr.due_at, executed_at=now,
        ), message))
        executed += 1
        enr.seq += 1
        enr.state = {}
        if out.next_step is None:
            _finish(enr, Enrollment.Status.COMPLETED, out.outcome, now)
            break
        enr.step = out.next_step
        if out.due_at and out.due_at > now:
            enr.due_at = out.due_at
            break
        enr.due_at = now
    return executed


ENR_FIELDS = ["status", "exit_reason", "ended_at", "due_at", "step", "seq", "state"]


def _snapshot(enr: Enrollment) -> tuple:
    return tuple(getattr(enr, f) for f in ENR_FIELDS)


def _save_enrollments(changed: list[Enrollment]) -> None:
    """One UPDATE per distinct set of new values: a batch's enrollments
    mostly move alike (same step, same due time), and this is far cheaper
    than bulk_update's CASE over every row and field."""
    import json

    groups: dict[str, list[int]] = {}
    values: dict[str, dict] = {}
    for enr in changed:
        vals = {f: getattr(enr, f) for f in ENR_FIELDS}
        sig = json.dumps(vals, default=str, sort_keys=True)
        groups.setdefault(sig, []).append(enr.pk)
        values[sig] = vals
    for sig, ids in groups.items():
        Enrollment.objects.filter(pk__in=ids).update(**values[sig])


def enrollments_advance_due(*, batch_size: int | None = None, now: datetime | None = None, max_batches: int | None = None) -> int:
    """Advance every enrollment due by ``now``, batch by batch; returns the
    steps executed. Safe to run in any number of workers at once.

    One transaction per batch: lock the due enrollments (SKIP LOCKED) and
    their leads (in id order: the frequency cap across workflows is decided
    with the lead held), decide every step, bulk-insert the executions (the
    idempotency keys) and messages, update the enrollments, commit; then hand
    the messages to their channels."""
    batch_size = batch_size or cfg()["BATCH_SIZE"]
    total = batches = 0
    messages_recover()
    while max_batches is None or batches < max_batches:
        moment = now or timezone.now()
        pending: list[int] = []
        with transaction.atomic():
            qs = Enrollment.objects.filter(status=Enrollment.Status.ACTIVE, due_at__lte=moment).order_by("due_at")
            if connection.features.has_select_for_update_skip_locked:
                qs = qs.select_for_update(skip_locked=True, of=("self",))
            batch = list(qs.select_related("lead", "lead__lifecycle_stage", "lead__account")[:batch_size])
            if not batch:
                break
            # A batch runs a handful of workflows: their versions (the step
            # graph, JSON) are loaded and decoded once, not once per row.
            versions = WorkflowVersion.objects.in_bulk({e.version_id for e in batch})
            workflows = Workflow.objects.in_bulk({e.workflow_id for e in batch})
            for e in batch:
                e.version, e.workflow = versions[e.version_id], workflows[e.workflow_id]
            leads = {e.lead_id: e.lead for e in batch}
            list(Lead.objects.select_for_update().filter(pk__in=list(leads)).order_by("pk").values_list("pk", flat=True))
            ctx = Ctx(now=moment)
            segment_ids = {i for e in batch for i in (e.version.settings or {}).get("suppress_segments") or []}
            topics = any(st.get("topic") for v in versions.values() for st in v.definition["steps"].values())
            batch_prefetch(ctx, list(leads.values()), segment_ids, topics=topics)
            rows: list[Decided] = []
            changed: list[Enrollment] = []
            for enr in batch:
                before, mark = _snapshot(enr), len(rows)
                steps = enr.version.definition["steps"]
                risky = steps.get(enr.step, {}).get("type") in EFFECTFUL or any(
                    st.get("type") in EFFECTFUL for st in steps.values())
                try:
                    if risky:
                        with transaction.atomic():
                            total += enrollment_step(enr, ctx, rows)
                    else:
                        total += enrollment_step(enr, ctx, rows)
                except Exception as exc:  # noqa: BLE001 - one broken step must not stop the batch
                    log.exception("nurture: enrollment %s step %s failed", enr.pk, enr.step)
                    del rows[mark:]
                    for f, v in zip(ENR_FIELDS, before):
                        setattr(enr, f, v)
                    _fail(enr, exc, moment)
                    continue
                if _snapshot(enr) != before:
                    changed.append(enr)
            executions = StepExecution.objects.bulk_create([r.execution for r in rows])
            msgs = [
                Message(key=ex.key, execution=ex, enrollment=ex.enrollment, lead=ex.enrollment.lead,
                        workflow_id=ex.workflow_id, step=ex.step,
                        created_at=moment, claimed_at=moment, **r.message)
                for ex, r in zip(executions, rows) if r.message
            ]
            pending = Message.objects.bulk_create(msgs)
            _save_enrollments(changed)
        # Delivered from the rows in hand (with their execution and lead):
        # this worker committed them "queued" and claimed; each is checked
        # again under its lead's lock as it goes out.
        messages_deliver(messages=pending)
        batches += 1
    return total


def _fail(enr: Enrollment, exc: Exception, now: datetime) -> None:
    """Keep the failure visible and retry later (nothing silently dropped)."""
    attempts = (enr.state or {}).get("failures", 0) + 1
    enr.due_at = now + timedelta(minutes=min(60, 2 ** attempts))
    enr.state = {**(enr.state or {}), "failures": attempts, "error": f"{type(exc).__name__}: {exc}"[:500]}
    Enrollment.objects.filter(pk=enr.pk).update(due_at=enr.due_at, state=enr.state)


# --- delivery ---------------------------------------------------------------------
# Channels whose messages go to the lead: consent and suppression are checked
# again when they are sent. Notifications and webhooks go to the team.
TO_LEAD = {Message.Channel.EMAIL: "email", Message.Channel.SMS: "sms"}


class _MarkFailed(Exception):
    """The durable ``sending`` mark could not be written: the send was abandoned before its point of no return."""


def _channel_call(msg: Message, session: channels.EmailSession, commit_point) -> str:
    """Hand one message to its channel; ``commit_point()`` runs right before
    the call's point of no return. Returns the provider's id, if any."""
    if msg.channel == Message.Channel.EMAIL:
        mail = channels.email_build(msg, html_body=msg.execution.detail.get("html", ""))
        return session.send(mail, commit_point=commit_point)
    commit_point()
    if msg.channel == Message.Channel.SMS:
        return channels.sms_backend().send(to=msg.to, body=msg.body, key=msg.key) or ""
    # Notifications and webhooks go out through martech.notify (timeout,
    # retry when it cannot send twice, a Notification row per send); a
    # failure raises here, so the message keeps its error.
    if msg.channel == Message.Channel.NOTIFY:
        if msg.execution.detail.get("via") == "webhook":
            notify.sent_or_raise(notify.webhook_post(url=msg.to, payload={"text": msg.body}, source="nurture:notify",
                                                     key=msg.key, timeout=cfg()["SEND_TIMEOUT_SECONDS"]))
        else:
            notify.sent_or_raise(notify.email_send(subject=msg.subject, body=msg.body, to=[msg.to],
                                                   source="nurture:notify", key=msg.key, connection=session.backend))
        return ""
    if msg.channel == Message.Channel.WEBHOOK:
        lead = msg.lead
        notify.sent_or_raise(notify.webhook_post(url=msg.to, payload={
            "key": msg.key, "workflow": msg.workflow_id, "step": msg.step,
            "lead": {"id": lead.pk, "email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name},
        }, source="nurture:webhook", key=msg.key, timeout=cfg()["SEND_TIMEOUT_SECONDS"]))
        return ""
    raise ValueError(f"unknown channel {msg.channel}")


def _lock_lead(lead_id: int, address: str = "") -> Lead | None:
    """The lead's row lock, taken first (the one lock order), with what the
    send-time check reads: its stage, its latest email and SMS consent and
    whether ``address`` is suppressed, in one query. A consent withdrawal
    (martech.services.leads.consent_record) takes the same lock, so it lands
    before this check or after the send's commit."""
    from django.db.models import Exists, OuterRef, Subquery

    from martech.models import ConsentRecord

    def latest(channel):
        return Subquery(ConsentRecord.objects.filter(lead=OuterRef("pk"), channel=channel, topic__isnull=True)
                        .order_by("-recorded_at", "-id").values("status")[:1])

    # Two statements, not one SELECT ... FOR UPDATE with the reads as
    # subqueries: under READ COMMITTED a statement that waited for the lock
    # re-reads the locked row but evaluates its subqueries on the snapshot
    # taken before the wait, so a withdrawal that held the lock would be
    # missed. The read after the lock sees everything committed before it.
    if not Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk").first():
        return None
    return (Lead.objects.select_related("lifecycle_stage")
            .annotate(consent_email=latest("email"), consent_sms=latest("sms"),
                      address_suppressed=Exists(Suppression.objects.filter(address=address.lower())))
            .filter(pk=lead_id).first())


class _Marker:
    """Marks a message ``sending`` durably at its commit point.

    On PostgreSQL, outside any transaction, the mark is committed through a
    second connection while the delivering transaction still holds the
    lead's row lock: the consent check, the send and the commit of ``sent``
    stay under one lock, and a crash before the channel's point of no return
    leaves the message ``queued`` (known unsent). Elsewhere (SQLite, which
    has one writer; a caller's open transaction) the message is claimed
    ``sending`` in its own transaction before the lock is taken: a crash
    during the check then leaves it in doubt, a wider window, same safety."""

    def __init__(self):
        from django.db import DEFAULT_DB_ALIAS, connections

        self.split = connection.vendor == "postgresql" and not connection.in_atomic_block
        self.conn = connections.create_connection(DEFAULT_DB_ALIAS) if self.split else None
        if self.conn is not None:
            with self.conn.cursor() as c:
                # Never wait unboundedly on a row the delivering transaction
                # cannot see being waited for (it holds the lead, not this).
                c.execute("SELECT set_config('lock_timeout', %s, false)", [f"{cfg()['SEND_TIMEOUT_SECONDS']}s"])

    def claim(self, pk: int) -> bool:
        """Outside the split: queued -> sending in its own transaction."""
        if self.split:
            return True
        with transaction.atomic():
            return bool(Message.objects.filter(pk=pk, status=Message.Status.QUEUED)
                        .update(status=Message.Status.SENDING, claimed_at=timezone.now()))

    @property
    def expected(self) -> str:
        return Message.Status.QUEUED if self.split else Message.Status.SENDING

    def commit_point(self, pk: int) -> None:
        if not self.split:
            return
        table = connection.ops.quote_name(Message._meta.db_table)
        with self.conn.cursor() as c:
            c.execute(f"UPDATE {table} SET status = %s, claimed_at = %s WHERE id = %s AND status = %s",
                      [Message.Status.SENDING, timezone.now(), pk, Message.Status.QUEUED])
            if c.rowcount != 1:
                raise RuntimeError(f"message {pk} was no longer queued at its commit point")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _deliver_one(msg: Message, session: channels.EmailSession, marker: _Marker) -> str:
    """Send one message under its lead's row lock; returns what happened:
    sent, skipped, held (an earlier message of its enrollment is not settled
    yet), failed, in_doubt or gone (settled by someone else)."""
    if not marker.claim(msg.pk):
        return "gone"
    with transaction.atomic():
        if marker.split:
            # This commit need not wait for its WAL flush: the "sending" mark
            # it follows was flushed before the send (a synchronous commit
            # on the marker's connection). A database crash can lose only
            # this outcome, leaving the message "sending", then in doubt:
            # never a second send.
            with connection.cursor() as c:
                c.execute("SET LOCAL synchronous_commit = off")
        lead = _lock_lead(msg.lead_id, msg.to if msg.channel == Message.Channel.EMAIL else "")
        if lead is None:
            return "gone"
        mine = Message.objects.filter(pk=msg.pk)
        # Its own status and any unsettled earlier message of the enrollment,
        # in one query (steps of a journey go out in order, also after a crash).
        # Only the enrollment in SQL (a handful of rows on its index); with
        # the status there too the planner may walk the status index, every
        # queued message of a backlog, once per send.
        ahead = {pk: status for pk, status in Message.objects.filter(enrollment_id=msg.enrollment_id or msg.execution.enrollment_id)
                 .values_list("pk", "status") if pk <= msg.pk and status in Message.UNSETTLED}
        if ahead.get(msg.pk) != marker.expected:
            return "gone"
        if len(ahead) > 1:
            # Waits for the earlier one; the recovery sweep retries it.
            mine.update(status=Message.Status.QUEUED, claimed_at=None)
            return "held"
        now = timezone.now()
        if msg.channel in TO_LEAD:
            channel = TO_LEAD[msg.channel]
            address = msg.to or ""  # where it goes, as decided
            ctx = Ctx(now=now, consent={(lead.pk, "email"): lead.consent_email, (lead.pk, "sms"): lead.consent_sms},
                      suppressed={address.lower()} if lead.address_suppressed else set())
            refusal = send_refusal(lead, channel, address, msg.execution.enrollment.version.settings or {}, ctx,
                                   marketing=msg.is_marketing)
            if not refusal and msg.topic_id:
                refusal = topic_refusal(lead, msg.topic_id, ctx)
            if refusal:
                mine.update(status=Message.Status.SKIPPED, status_reason=refusal[:100])
                return "skipped"
        def commit_point():
            try:
                marker.commit_point(msg.pk)
            except Exception as exc:
                raise _MarkFailed(str(exc)) from exc

        try:
            provider = _channel_call(msg, session, commit_point)
        except _MarkFailed:
            raise  # not sent and not marked: it stays queued for the sweep
        except (channels.SmsInDoubt, channels.EmailInDoubt) as exc:  # may have gone out: never resent blindly
            mine.update(status=Message.Status.IN_DOUBT, claimed_at=timezone.now(), status_reason="no_answer",
                        error=f"{type(exc).__name__}: {exc}"[:2000])
            return "in_doubt"
        except Exception as exc:  # noqa: BLE001 - a refusal: kept on the row, shown in the admin
            mine.update(status=Message.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
            return "failed"
        mine.update(status=Message.Status.SENT, sent_at=timezone.now(), provider_id=provider[:255])
    return "sent"


def messages_deliver(*, ids: list[int] | None = None, messages: list[Message] | None = None) -> dict[str, int]:
    """Hand committed ``queued`` messages to their channels (by id, re-read;
    or the Message objects a batch just committed), in id order, each in its
    own transaction under its lead's row lock: consent and suppression are
    checked at that moment, the message is marked ``sending`` right before
    the channel's point of no return and ``sent`` right after its own call
    (a crash leaves at most the message in flight in doubt, not the batch).
    Returns counts by outcome."""
    counts: dict[str, int] = {}
    if not ids and not messages:
        return counts
    msgs = messages if messages is not None else list(
        Message.objects.filter(pk__in=ids).select_related("execution__enrollment__version", "lead").order_by("pk"))
    session, marker = channels.EmailSession(), _Marker()
    try:
        for msg in msgs:
            try:
                outcome = _deliver_one(msg, session, marker)
            except Exception:  # noqa: BLE001 - one broken message must not stop the run; it stays queued
                log.exception("nurture: delivering message %s failed before its send", msg.pk)
                outcome = "error"
            counts[outcome] = counts.get(outcome, 0) + 1
    finally:
        session.close()
        marker.close()
    return counts


# --- recovery ---------------------------------------------------------------------
def messages_recover(*, lease_seconds: int | None = None, limit: int | None = None) -> dict[str, int]:
    """Settle what dead (or stalled) workers left, at most ``limit`` (default:
    the batch size) of each kind per call, oldest first (every engine run
    starts with this; the rest go to the next runs):

    - ``sending`` past the lease: the send may or may not have happened.
      Claimed, answered and settled in one transaction under the lead's lock
      (a DB error rolls the claim back with it: nothing is stranded): ``sent``
      when the backend confirms the key went out, ``queued`` (and delivered
      below, with the send-time checks) when it confirms it did not,
      ``in_doubt`` when it cannot tell.
    - ``in_doubt`` past its workflow's ``in_doubt_minutes``: the workflow's
      ``in_doubt_policy`` (hold for a person; resend; give up).
    - ``queued`` unclaimed or past the lease (a dead worker's batch, a step
      held behind an earlier one): delivered now."""
    lease = cfg()["SENDING_LEASE_SECONDS"] if lease_seconds is None else lease_seconds
    limit = limit or cfg()["BATCH_SIZE"]
    now = timezone.now()
    cutoff = now - timedelta(seconds=lease)
    counts = {"confirmed": 0, "unsent": 0, "in_doubt": 0, "resent_by_policy": 0, "given_up": 0, "delivered": 0}
    stale = list(Message.objects.filter(status=Message.Status.SENDING, claimed_at__lt=cutoff)
                 .order_by("claimed_at", "pk").values_list("pk", "lead_id", "key", "channel")[:limit])
    conn = channels.email_connection() if stale else None
    for pk, lead_id, key, channel in stale:
        with transaction.atomic():
            if _lock_lead(lead_id) is None:
                continue
            mine = Message.objects.filter(pk=pk, status=Message.Status.SENDING, claimed_at__lt=cutoff)
            if not mine.exists():
                continue  # settled by another worker meanwhile
            known = channels.email_was_sent(conn, key) if channel == Message.Channel.EMAIL else None
            if known is True:
                mine.update(status=Message.Status.SENT, sent_at=timezone.now(), status_reason="confirmed_by_backend")
                counts["confirmed"] += 1
            elif known is False:
                mine.update(status=Message.Status.QUEUED, claimed_at=None, status_reason="")
                counts["unsent"] += 1
            else:
                mine.update(status=Message.Status.IN_DOUBT, claimed_at=timezone.now(), status_reason="worker_died_mid_send")
                counts["in_doubt"] += 1
    _apply_in_doubt_policies(now=now, limit=limit, counts=counts)
    counts["delivered"] = sum(messages_deliver(ids=_claim_queued(cutoff=cutoff, limit=limit)).values())
    return counts


def _apply_in_doubt_policies(*, now: datetime, limit: int, counts: dict[str, int]) -> None:
    for wf_id, policy, minutes in (Workflow.objects.exclude(in_doubt_policy=Workflow.InDoubtPolicy.HOLD)
                                   .values_list("pk", "in_doubt_policy", "in_doubt_minutes")):
        due = list(Message.objects.filter(workflow_id=wf_id, status=Message.Status.IN_DOUBT,
                                          claimed_at__lt=now - timedelta(minutes=minutes))
                   .order_by("claimed_at", "pk").values_list("pk", "lead_id")[:limit])
        for pk, lead_id in due:
            with transaction.atomic():
                _lock_lead(lead_id)
                mine = Message.objects.filter(pk=pk, status=Message.Status.IN_DOUBT)
                if policy == Workflow.InDoubtPolicy.RESEND:
                    counts["resent_by_policy"] += mine.update(status=Message.Status.QUEUED, claimed_at=None,
                                                              status_reason="resent_by_policy")
                else:
                    counts["given_up"] += mine.update(status=Message.Status.FAILED, status_reason="given_up_by_policy")


def _claim_queued(*, cutoff: datetime, limit: int) -> list[int]:
    """Take queued messages nobody holds (unclaimed, or claimed before the
    cutoff) by stamping ``claimed_at``; SKIP LOCKED lets several workers
    share them. Only this short transaction locks them without their lead:
    it waits for nothing, so it cannot close a cycle with a delivery."""
    from django.db.models import Q

    with transaction.atomic():
        qs = (Message.objects.filter(status=Message.Status.QUEUED)
              .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=cutoff)).order_by("pk"))
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if ids:
            Message.objects.filter(pk__in=ids).update(claimed_at=timezone.now())
    return ids
