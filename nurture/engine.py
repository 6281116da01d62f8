"""The execution engine: advance due enrollments, exactly once.

How a step runs once (DESIGN.md "every outbound action has an idempotency key
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

from martech.models import Event, Lead
from martech.selectors import lead_has_consent
from nurture import channels
from nurture.conditions import condition_matches, segment_matches, segment_q, segments_by_id
from nurture.models import AudienceMember, Enrollment, Message, StepExecution, Suppression, Workflow, WorkflowVersion

log = logging.getLogger(__name__)
WAIT_UNTIL_POLL = timedelta(hours=1)
MAX_STEPS_PER_RUN = 50
# Sent messages are marked in groups; a worker killed in between leaves at
# most this many "sending" that did go out (messages_recover reconciles them).
MARK_EVERY = 50  # instant steps chained in one go, a guard only (graphs have no loops)


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


def batch_prefetch(ctx: Ctx, leads: list[Lead], segment_ids=()) -> None:
    """Consent, suppression, the last week's marketing emails and the
    suppression segments of every lead of the batch in three queries plus
    one per segment (instead of several per step). The
    batch holds the leads' row locks (see enrollments_advance_due), so these
    stay true until it commits."""
    from martech.models import ConsentRecord

    ids = [l.pk for l in leads]
    ctx.consent = {}
    for lead_id, channel, status in (
        ConsentRecord.objects.filter(lead_id__in=ids).order_by("lead_id", "channel", "-recorded_at", "-id")
        .values_list("lead_id", "channel", "status")
    ):
        ctx.consent.setdefault((lead_id, channel), status)
    emails = [l.email.lower() for l in leads if l.email]
    ctx.suppressed = set(Suppression.objects.filter(address__in=emails).values_list("address", flat=True))
    ctx.sends = {}
    for lead_id, at in (
        Message.objects.filter(lead_id__in=ids, channel=Message.Channel.EMAIL, is_marketing=True,
                               created_at__gt=ctx.now - timedelta(days=7))
        .exclude(status__in=[Message.Status.FAILED, Message.Status.TEST]).order_by("created_at")
        .values_list("lead_id", "created_at")
    ):
        ctx.sends.setdefault(lead_id, []).append(at)
    ctx.segment_hits = {
        pk: set(Lead.objects.filter(pk__in=ids).filter(segment_q(seg, now=ctx.now)).values_list("pk", flat=True))
        for pk, seg in segments_by_id(segment_ids).items()
    }


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
            ).exclude(status__in=[Message.Status.FAILED, Message.Status.TEST]).order_by("created_at").values_list("created_at", flat=True)
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


def _consent_refusal(lead: Lead, channel: str, address: str, ctx: Ctx) -> str | None:
    if not address:
        return f"no_{'email' if channel == 'email' else 'phone'}"
    if not _has_consent(lead, channel, ctx):
        return "no_consent"
    if channel == "email":
        if ctx.suppressed is not None:
            if address.lower() in ctx.suppressed:
                return "suppressed"
        elif Suppression.objects.filter(address=address.lower()).exists():
            return "suppressed"
    return None


def _send_email(enr, step, ctx: Ctx) -> Outcome:
    lead = enr.lead
    marketing = step.get("marketing", True)
    refusal = _consent_refusal(lead, "email", lead.email or "", ctx)
    if refusal:
        return Outcome(f"skipped:{refusal}", step["next"])
    if marketing and not ctx.dry:
        history = ctx.sends.setdefault(lead.pk, []) if ctx.sends is not None else None
        until = cap_until(lead, ctx.now, history)
        if until:
            return Outcome("delayed:frequency_cap", delay_until=until)
        if history is not None:
            history.append(ctx.now)
    blocks = step.get("blocks") or []
    return Outcome(
        "sent", step["next"],
        message={
            "channel": Message.Channel.EMAIL, "to": lead.email, "is_marketing": marketing,
            "subject": channels.render(step["subject"], lead),
            "body": channels.render(step["body"], lead, blocks=blocks),
            "html": channels.render(step["html"], lead, blocks=blocks, html=True) if step.get("html")
            else channels.html_from_text(channels.render(step["body"], lead, blocks=blocks, html=True)),
        },
    )


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
    return Outcome("waited", step["next"], due_at=due, detail={"until": due.isoformat()})


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


def suppressed_now(enr, ctx: Ctx) -> str | None:
    """Suppression holds for the whole journey, not just at enrollment: a
    lead who has since moved into a suppressed stage or segment leaves at its
    next step, before anything is sent."""
    s = enr.version.settings or {}
    lead = enr.lead
    if s.get("suppress_stages") and lead.lifecycle_stage_id and lead.lifecycle_stage.key in s["suppress_stages"]:
        return "suppressed_stage"
    for seg_id in s.get("suppress_segments") or []:
        if ctx.segment_hits is not None:
            if lead.pk in ctx.segment_hits.get(seg_id, ()):
                return "suppressed_segment"
        else:
            seg = segments_by_id([seg_id]).get(seg_id)
            if seg is not None and segment_matches(seg, lead, now=ctx.now):
                return "suppressed_segment"
    return None


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
            batch_prefetch(ctx, list(leads.values()), segment_ids)
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
                Message(key=ex.key, execution=ex, lead=ex.enrollment.lead, workflow_id=ex.workflow_id, step=ex.step,
                        created_at=moment, **r.message)
                for ex, r in zip(executions, rows) if r.message
            ]
            pending = Message.objects.bulk_create(msgs)
            _save_enrollments(changed)
        # Delivered from the rows in hand (with their execution and lead):
        # this worker committed them as "sending" and nobody else touches
        # them before the recovery lease, so no re-read is needed.
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
def _deliver_one(msg: Message, conn) -> str:
    if msg.channel == Message.Channel.EMAIL:
        mail = channels.email_build(msg, html_body=msg.execution.detail.get("html", ""))
        mail.connection = conn
        mail.send()
        # An anymail backend answers the ESP's message id: kept on the message,
        # so the ESP's delivery and bounce webhooks find it.
        status = getattr(mail, "anymail_status", None)
        return str(getattr(status, "message_id", None) or "")
    if msg.channel == Message.Channel.SMS:
        return channels.sms_backend().send(to=msg.to, body=msg.body, key=msg.key) or ""
    if msg.channel == Message.Channel.NOTIFY:
        if msg.execution.detail.get("via") == "webhook":
            channels.post_json(msg.to, {"text": msg.body}, key=msg.key)
        else:
            from django.core.mail import send_mail

            send_mail(msg.subject, msg.body, None, [msg.to], connection=conn)
        return ""
    if msg.channel == Message.Channel.WEBHOOK:
        lead = msg.lead
        channels.post_json(msg.to, {
            "key": msg.key, "workflow": msg.workflow_id, "step": msg.step,
            "lead": {"id": lead.pk, "email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name},
        }, key=msg.key)
        return ""
    raise ValueError(f"unknown channel {msg.channel}")


def messages_deliver(*, ids: list[int] | None = None, messages: list[Message] | None = None) -> int:
    """Hand committed ``sending`` messages to their channels (by id, re-read
    and still ``sending``; or the Message objects a batch just committed);
    each is marked sent (or failed, with the error) right after its call."""
    if not ids and not messages:
        return 0
    conn = channels.email_connection()
    sent = 0
    done: list[int] = []  # sent, not yet marked (marked every MARK_EVERY: fewer writes)

    def mark() -> None:
        if done:
            Message.objects.filter(pk__in=done).update(status=Message.Status.SENT, sent_at=timezone.now())
            done.clear()

    msgs = messages if messages is not None else (
        Message.objects.filter(pk__in=ids, status=Message.Status.SENDING).select_related("execution", "lead").order_by("pk"))
    for msg in msgs:
        try:
            provider = _deliver_one(msg, conn)
        except channels.SmsInDoubt as exc:  # may have gone out: never resent blindly
            Message.objects.filter(pk=msg.pk).update(status=Message.Status.IN_DOUBT, error=f"SmsInDoubt: {exc}"[:2000])
            continue
        except Exception as exc:  # noqa: BLE001 - kept on the row, shown in the admin
            Message.objects.filter(pk=msg.pk).update(status=Message.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
            continue
        if provider:
            Message.objects.filter(pk=msg.pk).update(status=Message.Status.SENT, sent_at=timezone.now(), provider_id=provider[:255])
        else:
            done.append(msg.pk)
            if len(done) >= MARK_EVERY:
                mark()
        sent += 1
    mark()
    return sent


def messages_recover(*, lease_seconds: int | None = None, limit: int | None = None) -> dict[str, int]:
    """Reconcile messages a dead worker left ``sending`` for longer than the
    lease: sent when the backend confirms the key went out, sent now when it
    confirms it did not, ``in_doubt`` when it cannot tell (never resent blindly).

    At most ``limit`` (default: the batch size) per call, oldest first: every
    engine run starts with this, and psycopg's client-side cursor would
    otherwise hold every stale row of a large crash in memory at once. The
    rest are taken by the next runs."""
    lease = cfg()["SENDING_LEASE_SECONDS"] if lease_seconds is None else lease_seconds
    limit = limit or cfg()["BATCH_SIZE"]
    cutoff = timezone.now() - timedelta(seconds=lease)
    stale = list(Message.objects.filter(status=Message.Status.SENDING, created_at__lte=cutoff)
                 .order_by("created_at", "pk").values_list("pk", "key", "channel")[:limit])
    counts = {"confirmed": 0, "resent": 0, "in_doubt": 0}
    if not stale:
        return counts
    conn = channels.email_connection()
    resend = []
    for pk, key, channel in stale:
        # Claim the row first so two recovering workers never both resend it.
        claimed = Message.objects.filter(pk=pk, status=Message.Status.SENDING).update(status=Message.Status.IN_DOUBT)
        if not claimed:
            continue
        known = channels.email_was_sent(conn, key) if channel == Message.Channel.EMAIL else None
        if known is True:
            Message.objects.filter(pk=pk).update(status=Message.Status.SENT, sent_at=timezone.now())
            counts["confirmed"] += 1
        elif known is False:
            Message.objects.filter(pk=pk).update(status=Message.Status.SENDING)
            resend.append(pk)
        else:
            counts["in_doubt"] += 1
    counts["resent"] = messages_deliver(ids=resend)
    return counts
