"""Writes of the nurture app (docs/style.md, 1: ``<entity>_<verb>``, keyword-only).
Admin, API, tasks and receivers all call these."""
from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from martech import configcache
from martech.models import ConsentChannel, Lead
from martech.services.leads import consent_record
from nurture import channels, engine, tasks
from nurture.conditions import (
    condition_check,
    condition_matches,
    condition_q,
    segment_matches,
    segment_q,
    segments_by_id,
)
from nurture.graph import graph_validate, template_ids
from nurture.models import (
    WORKFLOWS_KEY,
    EmailTemplate,
    Enrollment,
    Message,
    SegmentMember,
    Suppression,
    Workflow,
    WorkflowVersion,
)

log = logging.getLogger(__name__)

SETTINGS_FIELDS = (
    "trigger", "trigger_config", "enrollment_condition", "reenroll", "reenroll_days", "suppress_stages",
    "suppress_segments", "suppress_unsubscribed", "goal_condition", "goal_event",
)


def workflow_validate(*, workflow: Workflow) -> None:
    """Everything saving a workflow checks: the graph and every condition."""
    errors: dict[str, list[str]] = {}
    try:
        graph_validate(workflow.definition)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    for name in ("enrollment_condition", "goal_condition"):
        try:
            condition_check(getattr(workflow, name))
        except ValidationError as exc:
            errors[name] = exc.messages
    cond = (workflow.trigger_config or {}).get("condition")
    if cond:
        try:
            condition_check(cond)
        except ValidationError as exc:
            errors["trigger_config"] = [f"condition: {m}" for m in exc.messages]
    topic_errors = _topics_check(workflow.definition)
    if topic_errors:
        errors.setdefault("definition", []).extend(topic_errors)
    seg_ids = workflow.suppress_segments or []
    if not isinstance(seg_ids, list) or not all(isinstance(i, int) for i in seg_ids):
        errors["suppress_segments"] = ["A list of segment ids (integers)."]
    else:
        missing = sorted(set(seg_ids) - set(segments_by_id(seg_ids)))
        if missing:
            errors["suppress_segments"] = [f"No segment with id {', '.join(map(str, missing))}."]
    seg = (workflow.trigger_config or {}).get("segment") if workflow.trigger == Workflow.Trigger.SEGMENT else None
    if seg is not None and (not isinstance(seg, int) or not segments_by_id([seg])):
        errors.setdefault("trigger_config", []).append(f"segment: no segment with id {seg!r}.")
    existing = (workflow.trigger_config or {}).get("enroll_existing", True)
    if workflow.trigger == Workflow.Trigger.SEGMENT and not isinstance(existing, bool):
        errors.setdefault("trigger_config", []).append("enroll_existing: true or false.")
    if workflow.reenroll == Workflow.Reenroll.AFTER_DAYS and not workflow.reenroll_days:
        errors["reenroll_days"] = ["Give the number of days for 'after N days'."]
    need = {Workflow.Trigger.EVENT: "event", Workflow.Trigger.FORM: "form", Workflow.Trigger.STAGE: "stage",
            Workflow.Trigger.SCORE: "threshold", Workflow.Trigger.CRM_FIELD: "fields", Workflow.Trigger.SEGMENT: "segment"}
    if workflow.trigger in need and not (workflow.trigger_config or {}).get(need[workflow.trigger]):
        errors.setdefault("trigger_config", []).append(f'A {workflow.trigger} trigger needs "{need[workflow.trigger]}".')
    if workflow.status in (Workflow.Status.ACTIVE, Workflow.Status.PAUSED) and workflow.current_version_id is None:
        # Only publish makes a workflow active (with the version the engine
        # enrolls on); an "Active" draft would enroll nobody.
        errors["status"] = [f"A workflow is {workflow.get_status_display().lower()} only once published: publish it."]
    if errors:
        raise ValidationError(errors)


# What can keep a journey from ever firing, by the field that names it.
# Publishing refuses these: an active journey that can never enroll anyone or
# meet its goal looks like it works and does nothing.
BLOCKING_FIELDS = ("trigger_config", "goal_event")


def workflow_never_fires(*, workflow: Workflow) -> dict[str, list[str]]:
    """The triggers, goals and awaited events of the workflow (its draft)
    that can never happen: an event type missing from the event catalog or
    inactive there (the catalog rejects or quarantines such events, so no
    workflow ever sees one), a form or lifecycle stage that does not exist.
    ``{field: [message, ...]}``; empty when all can fire. Publishing refuses
    the ``BLOCKING_FIELDS``; a ``wait_until`` on such an event only times
    out, which saving and publishing report but allow."""
    from martech.models import EventType, Form, LifecycleStage

    cfg = workflow.trigger_config or {}
    wanted: list[tuple[str, str, str]] = []  # (field, event name, what it is for)
    if workflow.trigger == Workflow.Trigger.EVENT and cfg.get("event"):
        wanted.append(("trigger_config", str(cfg["event"]), "this journey would never enroll anyone"))
    if workflow.goal_event:
        wanted.append(("goal_event", workflow.goal_event, "the goal could never be met"))
    steps = (workflow.definition or {}).get("steps") or {}
    for key, step in (steps.items() if isinstance(steps, dict) else ()):
        if isinstance(step, dict) and step.get("type") == "wait_until" and step.get("event"):
            wanted.append(("definition", str(step["event"]), f"step {key!r} would always time out"))
    catalog = dict(EventType.objects.filter(name__in={name for _, name, _ in wanted}).values_list("name", "is_active"))
    problems: dict[str, list[str]] = {}
    for field, name, consequence in wanted:
        if name not in catalog:
            problems.setdefault(field, []).append(
                f"The event type {name!r} is not in the event catalog: such events are refused, so {consequence}. "
                "Add it to the catalog (Event types) or pick a catalogued event.")
        elif not catalog[name]:
            problems.setdefault(field, []).append(
                f"The event type {name!r} is inactive in the event catalog: such events are refused, so {consequence}.")
    if workflow.trigger == Workflow.Trigger.FORM and cfg.get("form"):
        key = str(cfg["form"])
        form = Form.objects.filter(key=key).values_list("is_active", flat=True).first()
        # The receivers also take an event type named "form:<key>" as the form's submission.
        if not form and not EventType.objects.filter(name=f"form:{key}", is_active=True).exists():
            state = "is inactive" if form is False else "does not exist"
            problems.setdefault("trigger_config", []).append(
                f"The form {key!r} {state}: nobody can submit it, so this journey would never enroll anyone.")
    if workflow.trigger == Workflow.Trigger.STAGE and cfg.get("stage"):
        if not LifecycleStage.objects.filter(key=str(cfg["stage"]), is_active=True).exists():
            problems.setdefault("trigger_config", []).append(
                f"No active lifecycle stage {cfg['stage']!r}: no lead ever enters it, so this journey would never "
                "enroll anyone.")
    return problems


def _topics_check(definition) -> list[str]:
    """Each email step's ``topic`` names an email subscription topic."""
    from martech.models import SubscriptionType

    steps = (definition or {}).get("steps") if isinstance(definition, dict) else None
    named = {key: step.get("topic") for key, step in (steps or {}).items()
             if isinstance(step, dict) and step.get("topic") not in (None, "")}
    if not named:
        return []
    known = dict(SubscriptionType.objects.filter(key__in=[str(k) for k in named.values()]).values_list("key", "channel"))
    errors = []
    for key, topic in named.items():
        if steps[key].get("type") != "send_email":
            errors.append(f"{key}.topic: only an email step has a subscription topic.")
        elif topic not in known:
            errors.append(f"{key}.topic: no subscription topic {topic!r} (see Subscription topics).")
        elif known[topic] != ConsentChannel.EMAIL:
            errors.append(f"{key}.topic: the topic {topic!r} is not an email topic.")
    return errors


@transaction.atomic
def workflow_save(*, workflow: Workflow, actor=None, fields: list[str] | None = None) -> Workflow:
    """Validate and save the draft. Editing a published workflow only changes
    its draft: running enrollments keep their version until it is published
    and they are migrated explicitly.

    ``fields``: save only these (the admin form's). The row is locked and
    every other field is taken from it first, so a step the journey builder
    added, or a publish, committed since ``workflow`` was read is neither
    undone nor validated from a stale copy."""
    if fields is not None and workflow.pk:
        current = Workflow.objects.select_for_update().get(pk=workflow.pk)
        for f in Workflow._meta.concrete_fields:
            if f.name not in fields and not f.primary_key:
                setattr(workflow, f.attname, getattr(current, f.attname))
    workflow_validate(workflow=workflow)
    workflow.has_draft_changes = True
    if fields is not None and workflow.pk:
        workflow.save(update_fields=sorted({*fields, "has_draft_changes", "updated_at"}))
    else:
        workflow.save()
    return workflow


@transaction.atomic
def workflow_publish(*, workflow: Workflow, actor=None) -> WorkflowVersion:
    """Freeze the draft as the next immutable version and make it current;
    a draft or paused workflow becomes active. Refuses a trigger or goal that
    can never fire (``workflow_never_fires``); an awaited event that can
    never come is the caller's to report (it only makes the step time out)."""
    wf = Workflow.objects.select_for_update().get(pk=workflow.pk)
    # Publishing is what makes it active: check the draft as it will be.
    wf.status = Workflow.Status.DRAFT if wf.current_version_id is None else wf.status
    workflow_validate(workflow=wf)
    blocking = {f: m for f, m in workflow_never_fires(workflow=wf).items() if f in BLOCKING_FIELDS}
    if blocking:
        raise ValidationError(blocking)
    number = (wf.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = WorkflowVersion.objects.create(
        workflow=wf, number=number, definition=copy.deepcopy(wf.definition),
        settings={f: copy.deepcopy(getattr(wf, f)) for f in SETTINGS_FIELDS},
        # The templates as they are now: the version renders these until the
        # next publish, whatever later edits do (graph_validate above checked
        # that every one exists).
        templates=email_templates_content(ids=template_ids(wf.definition)),
        published_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    Workflow.objects.filter(pk=wf.pk).update(current_version=version, has_draft_changes=False, status=Workflow.Status.ACTIVE)
    configcache.bump(WORKFLOWS_KEY)
    workflow.current_version, workflow.has_draft_changes, workflow.status = version, False, Workflow.Status.ACTIVE
    log.info("workflow %s published v%s by %s", wf.pk, number, actor)
    return version


_ALLOWED = {
    "pause": ({Workflow.Status.ACTIVE}, Workflow.Status.PAUSED),
    "resume": ({Workflow.Status.PAUSED}, Workflow.Status.ACTIVE),
    "archive": ({Workflow.Status.DRAFT, Workflow.Status.ACTIVE, Workflow.Status.PAUSED}, Workflow.Status.ARCHIVED),
}


@transaction.atomic
def workflow_set_status(*, workflow: Workflow, action: str, actor=None) -> None:
    """pause (enrollments stop advancing and nobody new enrolls), resume,
    archive (running enrollments exit)."""
    wf = Workflow.objects.select_for_update().get(pk=workflow.pk)
    allowed, target = _ALLOWED[action]
    if wf.status not in allowed:
        raise ValidationError({"status": [f"Cannot {action} a workflow that is {wf.status}."]})
    Workflow.objects.filter(pk=wf.pk).update(status=target)
    configcache.bump(WORKFLOWS_KEY)
    workflow.status = target
    if target == Workflow.Status.ARCHIVED:
        Enrollment.objects.filter(workflow=wf, status=Enrollment.Status.ACTIVE).update(
            status=Enrollment.Status.EXITED, exit_reason="archived", ended_at=timezone.now(), due_at=None
        )


@transaction.atomic
def enrollments_migrate(*, workflow: Workflow, actor=None) -> tuple[int, int]:
    """Move running enrollments to the current version where their next step
    exists there; the others stay on their version. Returns (moved, kept)."""
    target = workflow.current_version
    if target is None:
        raise ValidationError({"current_version": ["Publish the workflow first."]})
    keys = list(target.definition["steps"])
    running = Enrollment.objects.select_for_update().filter(workflow=workflow, status=Enrollment.Status.ACTIVE).exclude(version=target)
    moved = running.filter(step__in=keys).update(version=target)
    kept = Enrollment.objects.filter(workflow=workflow, status=Enrollment.Status.ACTIVE).exclude(version=target).count()
    return moved, kept


# --- enrollment -------------------------------------------------------------------
def _suppressed(settings: dict, lead: Lead) -> str | None:
    if lead.lifecycle_stage_id and lead.lifecycle_stage.key in (settings.get("suppress_stages") or []):
        return "suppressed_stage"
    if settings.get("suppress_unsubscribed", True):
        from martech.selectors import lead_consent_state

        if lead_consent_state(lead=lead).get(ConsentChannel.EMAIL) == "withdrawn":
            return "unsubscribed"
    for seg in segments_by_id(settings.get("suppress_segments")).values():
        if segment_matches(seg, lead):
            return "suppressed_segment"
    return None


def enrollment_create(*, workflow: Workflow, lead: Lead, source: str, now: datetime | None = None,
                      check_criteria: bool = True) -> tuple[Enrollment | None, str]:
    """Enroll ``lead`` on the workflow's current version, or say why not:
    ("", reason) with reason in not_active, criteria, suppressed_*, unsubscribed,
    already_enrolled, reenroll_never, reenroll_wait. Idempotent: two triggers
    racing enroll once (a partial unique index on active enrollments)."""
    now = now or timezone.now()
    version = workflow.current_version
    if workflow.status != Workflow.Status.ACTIVE or version is None:
        return None, "not_active"
    s = version.settings
    if check_criteria and not condition_matches(s.get("enrollment_condition", ""), lead, now=now):
        return None, "criteria"
    reason = _suppressed(s, lead)
    if reason:
        return None, reason
    last = Enrollment.objects.filter(workflow=workflow, lead=lead, is_test=False).order_by("-enrolled_at").first()
    if last is not None:
        if last.status == Enrollment.Status.ACTIVE:
            return None, "already_enrolled"
        policy = s.get("reenroll", Workflow.Reenroll.NEVER)
        if policy == Workflow.Reenroll.NEVER:
            return None, "reenroll_never"
        if policy == Workflow.Reenroll.AFTER_DAYS and last.enrolled_at > now - timedelta(days=s.get("reenroll_days") or 0):
            return None, "reenroll_wait"
    def create() -> Enrollment:
        return Enrollment.objects.create(
            workflow=workflow, version=version, lead=lead, step=version.definition["start"], due_at=now,
            source=source[:100], enrolled_at=now,
        )

    try:
        if transaction.get_connection().in_atomic_block:
            with transaction.atomic():  # a savepoint: the caller's transaction survives the conflict
                enr = create()
        else:
            # Autocommit (the events receiver after the capture's commit): one
            # INSERT, nothing else to roll back, no BEGIN/COMMIT around it.
            enr = create()
    except IntegrityError:
        return None, "already_enrolled"
    tasks.wake_on_commit()  # its first step is due now
    return enr, ""


def _insert_select(model, *, lead_ids, fixed: dict) -> int:
    """``INSERT INTO <model> (lead_id, <fixed>) SELECT id, <fixed values>
    FROM (<lead_ids>) ON CONFLICT DO NOTHING``: rows for every lead of a
    queryset in one statement, without the ids ever leaving the database
    (100,000 leads are one round trip, not 100,000 ids read into Python and
    20 bulk inserts of 5,000 model objects). Returns the rows inserted; a row
    that hits a unique constraint (a trigger enrolled the lead meanwhile) is
    skipped, as ``bulk_create(ignore_conflicts=True)`` did."""
    from django.db import connection

    fields = [model._meta.get_field(name) for name in fixed]
    from django.db.models import F

    sub_sql, sub_params = lead_ids.order_by().values(insert_lead_id=F("pk")).query.sql_with_params()
    qn = connection.ops.quote_name
    # PostgreSQL types a bare parameter in a SELECT list as text, which does
    # not assign to jsonb or timestamptz: cast each to its column's type.
    # SQLite needs no cast (and CAST(... AS datetime) would mangle the text).
    pg = connection.vendor == "postgresql"
    holders = [f"CAST(%s AS {f.db_type(connection)})" if pg else "%s" for f in fields]
    columns = ", ".join(qn(c) for c in ["lead_id", *(f.column for f in fields)])
    # "WHERE true": SQLite's parser needs it before ON CONFLICT in INSERT ... SELECT.
    sql = (f"INSERT INTO {qn(model._meta.db_table)} ({columns}) "
           f"SELECT s.insert_lead_id, {', '.join(holders)} FROM ({sub_sql}) s WHERE true ON CONFLICT DO NOTHING")
    params = [f.get_db_prep_save(v, connection) for f, v in zip(fields, fixed.values())] + list(sub_params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def workflow_enroll_bulk(*, workflow: Workflow, lead_ids=None, leads=None, condition: str = "", source: str,
                         now: datetime | None = None) -> int:
    """Enroll many leads set-based (``leads``: a segment's queryset; or
    ``lead_ids``; ``condition``: an extra condition): criteria, suppression
    and the skipping of existing enrollments run in SQL, and the rows are
    inserted by one INSERT ... SELECT. Returns the number enrolled."""
    now = now or timezone.now()
    version = workflow.current_version
    if workflow.status != Workflow.Status.ACTIVE or version is None:
        raise ValidationError({"workflow": ["Only an active, published workflow enrolls leads."]})
    s = version.settings
    qs = leads if leads is not None else Lead.objects.all()
    if lead_ids is not None:
        qs = qs.filter(pk__in=list(lead_ids))
    qs = qs.filter(condition_q(condition)).filter(condition_q(s.get("enrollment_condition", "")))
    if s.get("suppress_stages"):
        qs = qs.exclude(lifecycle_stage__key__in=s["suppress_stages"])
    if s.get("suppress_unsubscribed", True):
        from martech.selectors import leads_with_consent

        qs = leads_with_consent(qs, channel=ConsentChannel.EMAIL).exclude(consent_email="withdrawn")
    for seg in segments_by_id(s.get("suppress_segments")).values():
        qs = qs.exclude(pk__in=Lead.objects.filter(segment_q(seg, now=now)).values("pk"))
    previous = Enrollment.objects.filter(workflow=workflow, is_test=False)
    policy = s.get("reenroll", Workflow.Reenroll.NEVER)
    if policy == Workflow.Reenroll.NEVER:
        qs = qs.exclude(pk__in=previous.values("lead_id"))
    else:
        blocked = previous.filter(status=Enrollment.Status.ACTIVE)
        if policy == Workflow.Reenroll.AFTER_DAYS:
            blocked = previous.filter(enrolled_at__gt=now - timedelta(days=s.get("reenroll_days") or 0)) | blocked
        qs = qs.exclude(pk__in=blocked.values("lead_id"))
    # One statement: atomic by itself, nothing half-written.
    return _insert_select(Enrollment, lead_ids=qs, fixed={
        "workflow": workflow.pk, "version": version.pk, "status": Enrollment.Status.ACTIVE,
        "step": version.definition["start"], "seq": 0, "due_at": now, "state": {}, "source": source[:100],
        "is_test": False, "enrolled_at": now, "exit_reason": "",
    })


def segments_sync(*, now: datetime | None = None) -> dict[int, int]:
    """The "entering a segment" trigger, run by the schedule: every active
    segment-triggered workflow enrolls the leads that entered its segment
    since the last run. Returns {workflow id: enrolled}."""
    ids = list(Workflow.objects.filter(status=Workflow.Status.ACTIVE, current_version__settings__trigger=Workflow.Trigger.SEGMENT)
               .order_by("pk").values_list("pk", flat=True))
    return {pk: workflow_segment_sync(workflow_id=pk, now=now) for pk in ids}


@transaction.atomic
def workflow_segment_sync(*, workflow_id: int, now: datetime | None = None) -> int:
    """Compare the segment's members now (its compiled condition, in SQL)
    with the members recorded last time (SegmentMember): leads not recorded
    have entered and are enrolled through ``workflow_enroll_bulk`` (criteria,
    suppression and the re-enrollment policy apply); leads that left are
    forgotten, so coming back is a new entry.

    One transaction with the workflow row locked: two schedulers running at
    once serialize, and the second finds nobody new (idempotent). A crash
    rolls back the recorded entries with the enrollments, so nobody is
    recorded without being considered. With ``"enroll_existing": false`` the
    first sync of a segment records its members without enrolling them."""
    now = now or timezone.now()
    wf = Workflow.objects.select_for_update(of=("self",)).select_related("current_version").get(pk=workflow_id)
    version = wf.current_version
    if wf.status != Workflow.Status.ACTIVE or version is None or version.settings.get("trigger") != Workflow.Trigger.SEGMENT:
        return 0
    cfg = version.settings.get("trigger_config") or {}
    seg = segments_by_id([cfg.get("segment")]).get(cfg.get("segment"))
    if seg is None:
        log.warning("nurture: workflow %s watches segment %s, which no longer exists", wf.pk, cfg.get("segment"))
        return 0
    in_segment = Lead.objects.filter(segment_q(seg, now=now))
    members = SegmentMember.objects.filter(workflow=wf)
    members.exclude(segment=seg).delete()  # an earlier version watched another segment
    members.exclude(lead_id__in=in_segment.values("pk")).delete()
    baseline = wf.segment_baseline_id != seg.pk and not cfg.get("enroll_existing", True)
    # The rows of this sync are those above the highest id before it (the
    # workflow lock keeps any other sync of this workflow out meanwhile).
    mark = members.aggregate(m=Max("pk"))["m"] or 0
    # The newcomers are recorded in SQL (INSERT ... SELECT): their ids never
    # come to Python.
    entered = _insert_select(SegmentMember, lead_ids=in_segment.exclude(pk__in=members.values("lead_id")),
                             fixed={"workflow": wf.pk, "segment": seg.pk, "entered_at": now})
    enrolled = 0
    if entered and not baseline:
        # One set-based enrollment over the newcomers (a subquery, not
        # 100,000 bound ids).
        newcomers = Lead.objects.filter(pk__in=SegmentMember.objects.filter(workflow=wf, pk__gt=mark).values("lead_id"))
        enrolled = workflow_enroll_bulk(workflow=wf, leads=newcomers, source=f"segment:{seg.pk}", now=now)
    if wf.segment_baseline_id != seg.pk:
        Workflow.objects.filter(pk=wf.pk).update(segment_baseline_id=seg.pk)
    return enrolled


def enrollments_exit_for_goal_event(*, lead_ids: list[int], event_names: set[str], now: datetime | None = None) -> int:
    """Leads that just did a workflow's goal event leave it, converted."""
    now = now or timezone.now()
    qs = Enrollment.objects.filter(
        status=Enrollment.Status.ACTIVE, lead_id__in=lead_ids, version__settings__goal_event__in=list(event_names)
    )
    return qs.update(status=Enrollment.Status.CONVERTED, exit_reason="goal", ended_at=now, due_at=None)


def enrollments_wake_for_events(*, lead_ids: list[int], event_names: set[str], now: datetime | None = None) -> int:
    """A wait_until on an event re-checks at once when the event arrives."""
    now = now or timezone.now()
    woke = Enrollment.objects.filter(
        status=Enrollment.Status.ACTIVE, lead_id__in=lead_ids, state__waiting_event__in=list(event_names), due_at__gt=now
    ).update(due_at=now)
    if woke:
        tasks.wake_on_commit()
    return woke


def enrollments_apply_events(*, lead_ids: list[int], goal_version_ids: Iterable[int] = (),
                             wait_events: Iterable[str] = (), now: datetime | None = None) -> int:
    """New events of ``lead_ids`` (the events receiver's form of the two
    above, each UPDATE only when it can match): an active enrollment on one
    of ``goal_version_ids`` (the versions whose goal event came, which the
    receiver knows from its cached versions: no join) leaves, converted;
    then one waiting for one of ``wait_events`` (wait_until) is due now (the
    goal first, so it wins when both apply). Returns the enrollments changed."""
    now = now or timezone.now()
    goal_ids, waits = sorted(set(goal_version_ids)), sorted(set(wait_events))
    changed = 0
    if goal_ids:
        changed += Enrollment.objects.filter(
            status=Enrollment.Status.ACTIVE, lead_id__in=lead_ids, version_id__in=goal_ids,
        ).update(status=Enrollment.Status.CONVERTED, exit_reason="goal", ended_at=now, due_at=None)
    if waits:
        changed += enrollments_wake_for_events(lead_ids=lead_ids, event_names=set(waits), now=now)
    return changed


def enrollments_wake_for_consent(*, lead_id: int, confirmed: bool, now: datetime | None = None) -> int:
    """The lead's email consent was granted: an email step waiting for a
    double opt-in click runs at once. A confirmed double opt-in (the person
    clicked) also lifts an earlier unsubscribe suppression of the lead's
    address, never a bounce's or a complaint's. Idempotent."""
    now = now or timezone.now()
    if not confirmed:
        # Nothing to lift: one UPDATE, no lock (a form's consent in its request).
        woke = Enrollment.objects.filter(lead_id=lead_id, status=Enrollment.Status.ACTIVE,
                                         state__awaiting_confirmation=True, due_at__gt=now).update(due_at=now)
        if woke:
            tasks.wake_on_commit()
        return woke
    with transaction.atomic():
        lead = Lead.objects.select_for_update().filter(pk=lead_id).values_list("email", flat=True)
        email = lead.first()
        if confirmed and email:
            Suppression.objects.filter(address=email.lower(), reason=Suppression.Reason.UNSUBSCRIBE).delete()
        woke = Enrollment.objects.filter(lead_id=lead_id, status=Enrollment.Status.ACTIVE,
                                         state__awaiting_confirmation=True, due_at__gt=now).update(due_at=now)
        if woke:
            tasks.wake_on_commit()
        return woke


# --- tracking, unsubscribe, bounces -------------------------------------------------
def _record_event(*, lead: Lead, name: str, key: str, properties: dict, at: datetime | None = None,
                  context: dict | None = None) -> bool:
    """Record an event on the lead's timeline through the core ingest,
    idempotent by ``key`` (its messageId). True when it was new."""
    from martech.services.ingest import ACCEPTED, events_ingest

    result = events_ingest(items=[{
        "type": "track", "event": name, "messageId": key,
        "timestamp": (at or timezone.now()).isoformat(), "traits": {"email": lead.email} if lead.email else {},
        "userId": f"lead:{lead.pk}" if not lead.email else None,
        "properties": properties, **({"context": context} if context else {}),
    }], source="nurture")
    return result.results[0].status == ACCEPTED


def _record_message_event(*, message: Message, name: str, suffix: str, properties: dict,
                          context: dict | None = None) -> bool:
    return _record_event(lead=message.lead, name=name, key=f"nurture:{suffix}:{message.key}",
                         properties={"workflow": message.workflow_id, "step": message.step, **properties},
                         context=context)


def click_campaign_context(*, message: Message, url: str) -> dict:
    """The UTM context of an email click, so the core ingest makes it an
    email touch with its campaign (without it the click had no UTMs and was
    counted as ``direct``): the workflow's campaign when it has one, else
    the link's own UTM tags; source ``nurture`` and medium ``email`` where
    neither says."""
    from urllib.parse import parse_qs, urlsplit

    campaign = Workflow.objects.filter(pk=message.workflow_id).values_list(
        "campaign__utm_source", "campaign__utm_medium", "campaign__utm_campaign").first()
    if campaign and campaign[2]:
        utm = {"source": campaign[0], "medium": campaign[1], "name": campaign[2]}
    else:
        query = parse_qs(urlsplit(url).query) if "utm_" in url else {}
        utm = {key: query[f"utm_{tag}"][0] for key, tag in (("source", "source"), ("medium", "medium"),
                                                           ("name", "campaign"), ("term", "term"),
                                                           ("content", "content")) if query.get(f"utm_{tag}")}
    return {"campaign": {"source": "nurture", "medium": "email", **{k: v for k, v in utm.items() if v}}}


@transaction.atomic
def message_track(*, message: Message, kind: str, url: str = "") -> None:
    """An open (pixel) or click (redirect): stamp the message once and record
    an ``email_opened`` / ``email_clicked`` event through the core ingest
    (idempotent by messageId), which feeds scoring, goals and attribution."""
    now = timezone.now()
    if kind == "open":
        Message.objects.filter(pk=message.pk, opened_at__isnull=True).update(opened_at=now)
        _record_message_event(message=message, name="email_opened", suffix="open", properties={})
    else:
        Message.objects.filter(pk=message.pk, clicked_at__isnull=True).update(clicked_at=now)
        Message.objects.filter(pk=message.pk, opened_at__isnull=True).update(opened_at=now)
        _record_message_event(message=message, name="email_clicked",
                              suffix=f"click:{hashlib.sha256(url.encode()).hexdigest()[:16]}", properties={"url": url},
                              context=click_campaign_context(message=message, url=url))


@transaction.atomic
def message_unsubscribe(*, message: Message, source: str, evidence: dict | None = None) -> bool:
    """Withdraw email consent, suppress the address, stamp the message.
    Repeating it changes nothing (returns False). Takes the lead's row lock
    first: a send in progress to this lead finishes before it, and no later
    send passes the send-time check. ``evidence``: the request's (ip,
    user_agent, page), kept on the consent record."""
    lead = message.lead
    Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
    now = timezone.now()
    stamped = Message.objects.filter(pk=message.pk, unsubscribed_at__isnull=True).update(unsubscribed_at=now)
    address = (message.to or "").lower()
    _, created = Suppression.objects.get_or_create(address=address, defaults={"reason": Suppression.Reason.UNSUBSCRIBE,
                                                                               "detail": f"message {message.key}"})
    if stamped or created:
        consent_record(lead=lead, channel=ConsentChannel.EMAIL, granted=False, source=source,
                       evidence={**(evidence or {}), "message": message.key})
        _record_message_event(message=message, name="email_unsubscribed", suffix="unsub", properties={})
    return bool(stamped or created)


@transaction.atomic
def message_preferences_save(*, message: Message, channels: dict[str, bool], topics: dict[str, bool],
                             evidence: dict, source: str = "nurture:preferences") -> int:
    """The preference page reached from ``message``: the person's choices
    per channel and topic (martech.services.preferences.preferences_update).
    Turning email off is an unsubscribe (``message_unsubscribe``: the
    address is suppressed too); turning it back on lifts the unsubscribe
    suppression of the address the message went to (never a bounce's or a
    complaint's). Returns the consent records written."""
    from martech.selectors import lead_consent_state
    from martech.services.preferences import preferences_update

    lead = message.lead
    Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
    evidence = {**evidence, "message": message.key}
    before = lead.consent_records.count()
    email_now = lead_consent_state(lead=lead).get(ConsentChannel.EMAIL)
    if channels.get(ConsentChannel.EMAIL) is False and email_now == "granted":
        message_unsubscribe(message=message, source=source, evidence=evidence)
    preferences_update(lead=lead, channels=channels, topics=topics, source=source, evidence=evidence)
    if channels.get(ConsentChannel.EMAIL) and email_now != "granted":
        Suppression.objects.filter(address=(message.to or "").lower(), reason=Suppression.Reason.UNSUBSCRIBE).delete()
    return lead.consent_records.count() - before


@transaction.atomic
def message_unsubscribe_all(*, message: Message, evidence: dict, source: str = "nurture:preferences") -> bool:
    """"Unsubscribe from all" on the preference page: email as the one-click
    unsubscribe does, and every other channel the lead consented to."""
    from martech.selectors import lead_consent_state
    from martech.services.preferences import preferences_update

    lead = message.lead
    Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
    evidence = {**evidence, "message": message.key}
    changed = message_unsubscribe(message=message, source=source, evidence=evidence)
    granted = [c for c, status in lead_consent_state(lead=lead).items() if status == "granted"]
    return bool(preferences_update(lead=lead, channels={c: False for c in granted}, topics={}, source=source,
                                   evidence=evidence)) or changed


# What an ESP's tracking event (anymail's normalized kinds) records on the
# lead's timeline; opens and clicks are not here: our own pixel and
# redirect record those, and counting the ESP's too would double them.
ESP_EVENT_TYPES = {
    "delivered": "email_delivered",
    "bounced": "email_bounced",
    "complained": "email_complained",
    "unsubscribed": "email_unsubscribed",
}


def esp_event_record(*, esp: str, kind: str, recipient: str, message_id: str = "", event_id: str = "",
                     hard: bool = True, detail: str = "", at: datetime | None = None) -> bool:
    """An ESP's delivery, bounce, complaint or unsubscribe for one recipient
    (anymail tracking webhook). Finds the message by the ESP's message id
    (else the latest email to the address) and its lead, then:

    - delivered: stamps ``delivered_at``;
    - bounced: stamps ``bounced_at``; a hard bounce suppresses the address;
    - complained: suppresses the address and withdraws email consent;
    - unsubscribed: suppresses the address and withdraws email consent
      (``message_unsubscribe`` when the message is known);

    and records ``email_<kind>`` on the lead's timeline. Idempotent: ESPs
    retry webhooks, so the event is keyed by (ESP, kind, message id,
    recipient), or the ESP's event id when there is no message id, and a
    repeat changes nothing (returns False). Concurrent posts of one event are
    serialized on the lead's row (the first lock of the one lock order); a
    deadlock or serialization failure reruns the whole transaction."""
    from martech.db import run_in_transaction

    if kind not in ESP_EVENT_TYPES:
        return False
    address = (recipient or "").strip().lower()
    if not address:
        raise ValidationError({"recipient": ["The ESP's event names no recipient address."]})
    return run_in_transaction(
        lambda: _esp_event_record(esp=esp, kind=kind, address=address, message_id=message_id,
                                  event_id=event_id, hard=hard, detail=detail, at=at)
    )


def _esp_event_record(*, esp: str, kind: str, address: str, message_id: str, event_id: str, hard: bool,
                      detail: str, at: datetime | None) -> bool:
    emails = Message.objects.filter(channel=Message.Channel.EMAIL)
    message = emails.filter(provider_id=message_id).select_related("lead").first() if message_id else None
    lead = message.lead if message else Lead.objects.filter(email=address).first()
    if message is None and lead is not None:
        # No (known) message id: the lead's latest email (index nurture_msg_cap).
        message = emails.filter(lead=lead).select_related("lead").order_by("-created_at", "-pk").first()
    if lead is not None:
        # One lock order: the lead first. Concurrent posts of this event wait
        # here, and the second finds the first's event and does nothing.
        Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk", flat=True).first()
    now = timezone.now()
    reason = {"bounced": Suppression.Reason.BOUNCE if hard else None, "complained": Suppression.Reason.COMPLAINT,
              "unsubscribed": Suppression.Reason.UNSUBSCRIBE}.get(kind)
    if kind == "unsubscribed" and message is not None and lead is not None:
        return message_unsubscribe(message=message, source=f"esp:{esp}")
    suppressed = False
    if reason:
        _, suppressed = Suppression.objects.get_or_create(
            address=address, defaults={"reason": reason, "detail": f"{esp}: {detail}".strip(": ")[:500]})
    # A soft bounce (the ESP retries, or gave up for now) is on the timeline
    # but neither suppresses nor counts as the message's bounce.
    stamp = {"delivered": "delivered_at", "bounced": "bounced_at" if hard else None}.get(kind)
    stamped = 0
    if message is not None and stamp:
        stamped = Message.objects.filter(pk=message.pk, **{f"{stamp}__isnull": True}).update(**{stamp: now})
    if lead is None:
        return bool(suppressed or stamped)
    ref = message_id or event_id or (f"message:{message.key}" if message else "") or (at or now).isoformat()
    key = f"esp:{esp.lower().replace(' ', '_')}:{kind}:{hashlib.sha256(f'{ref}|{address}'.encode()).hexdigest()[:32]}"
    properties = {"esp": esp, "recipient": address}
    if message is not None:
        properties.update(workflow=message.workflow_id, step=message.step, message=message.key)
    if kind == "bounced":
        properties["bounce"] = "hard" if hard else "soft"
    if detail:
        properties["detail"] = detail[:500]
    new = _record_event(lead=lead, name=ESP_EVENT_TYPES[kind], key=key, properties=properties, at=at)
    if new and kind in ("complained", "unsubscribed"):
        consent_record(lead=lead, channel=ConsentChannel.EMAIL, granted=False, source=f"esp:{kind}",
                       evidence={"esp": esp, "message": message.key if message else "", "recipient": address})
    return new


def messages_confirm_sent(*, provider_id: str = "", key: str = "") -> int:
    """The ESP says it sent or delivered a message (anymail's ``sent`` or
    ``delivered`` tracking event): one still ``sending`` or ``in_doubt`` is
    ``sent``. Found by the ESP's message id, or by our key echoed in the
    event's metadata (a worker that died right after the ESP's answer never
    stored the id). Idempotent; returns the messages settled."""
    q = Message.objects.none()
    if provider_id:
        q = Message.objects.filter(provider_id=provider_id)
    if key:
        q = q | Message.objects.filter(key=key)
    settled = 0
    for pk, lead_id in q.filter(status__in=[Message.Status.SENDING, Message.Status.IN_DOUBT]).values_list("pk", "lead_id"):
        with transaction.atomic():
            Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk").first()
            fields = {"status": Message.Status.SENT, "sent_at": timezone.now(), "status_reason": "confirmed_by_esp"}
            if provider_id:
                fields["provider_id"] = provider_id[:255]
            settled += Message.objects.filter(
                pk=pk, status__in=[Message.Status.SENDING, Message.Status.IN_DOUBT]).update(**fields)
    return settled


def _messages_settle(*, ids, actor, to_status: str, reason: str, verb: str) -> int:
    from django.contrib.admin.models import CHANGE, LogEntry

    done = 0
    for pk, lead_id in Message.objects.filter(pk__in=list(ids), status=Message.Status.IN_DOUBT).order_by("pk").values_list("pk", "lead_id"):
        with transaction.atomic():
            Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk").first()
            fields = {"status": to_status, "status_reason": reason}
            fields.update({"claimed_at": None} if to_status == Message.Status.QUEUED else {"sent_at": timezone.now()})
            if not Message.objects.filter(pk=pk, status=Message.Status.IN_DOUBT).update(**fields):
                continue  # settled meanwhile (the ESP confirmed it, another person acted)
            LogEntry.objects.log_actions(user_id=actor.pk, queryset=Message.objects.filter(pk=pk), action_flag=CHANGE,
                                         change_message=f"In-doubt message {verb}.", single_object=True)
            done += 1
    return done


def messages_resend(*, ids, actor) -> int:
    """A person decided in-doubt messages did not go out: they are queued
    again (the recovery sweep sends them within a scheduler tick, with the
    send-time checks). Audited per message (admin log); returns the count."""
    return _messages_settle(ids=ids, actor=actor, to_status=Message.Status.QUEUED,
                            reason=f"resend by {actor.get_username()}"[:100], verb="queued to be resent")


def messages_mark_sent(*, ids, actor) -> int:
    """A person confirmed in-doubt messages went out (e.g. in the ESP's log).
    Audited per message (admin log); returns the count."""
    return _messages_settle(ids=ids, actor=actor, to_status=Message.Status.SENT,
                            reason=f"marked sent by {actor.get_username()}"[:100], verb="marked sent")


# --- test mode -----------------------------------------------------------------------
def workflow_test_run(*, workflow: Workflow, lead: Lead, use_draft: bool = True, max_steps: int = 100) -> list[dict]:
    """Walk the workflow for one test lead with waits compressed and every
    effect dry: each step's outcome and rendered message is returned, nothing
    is written (no enrollment, message, task, field or audience change)."""
    version = None if use_draft else workflow.current_version
    definition = workflow.definition if version is None else version.definition
    graph_validate(definition)
    enr = Enrollment(workflow=workflow, lead=lead, step=definition["start"], state={}, enrolled_at=timezone.now())
    enr.pk = 0
    # A draft renders the templates as they are now; a published version
    # renders its snapshot, as its enrollments do.
    templates = version.templates if version is not None else email_templates_content(ids=template_ids(definition))
    ctx = engine.Ctx(now=timezone.now(), dry=True, compress_waits=True, templates=templates)
    out_rows: list[dict] = []
    key = definition["start"]
    for _ in range(max_steps):
        step = definition["steps"][key]
        out = engine.decide(enr, key, step, ctx, key=f"test:{workflow.pk}:{key}")
        row = {"step": key, "type": step["type"], "outcome": out.outcome, "detail": out.detail}
        if out.message:
            row["message"] = {k: v for k, v in out.message.items() if k in ("to", "subject", "body", "html", "channel")}
        out_rows.append(row)
        if out.next_step is None or out.delay_until is not None:
            break
        key = out.next_step
    return out_rows


# --- email templates ------------------------------------------------------------------
def email_template_validate(*, template: EmailTemplate) -> None:
    """Every text field parses, names only known merge fields and valid
    conditions; a subject and an HTML body are given. Raises ValidationError
    keyed by field, each message saying where and why."""
    errors: dict[str, list[str]] = {}
    for field in EmailTemplate.CONTENT_FIELDS.values():
        try:
            channels.template_check(getattr(template, field) or "")
        except ValidationError as exc:
            errors[field] = exc.messages
    for field in ("subject", "html_body"):
        if not (getattr(template, field) or "").strip():
            errors.setdefault(field, []).append("Required.")
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def email_template_save(*, template: EmailTemplate, actor=None) -> EmailTemplate:
    """Validate and save a template. Published workflow versions keep the
    content they snapshotted; drafts and test runs see the change at once."""
    email_template_validate(template=template)
    if EmailTemplate.objects.filter(name=template.name).exclude(pk=template.pk).exists():
        raise ValidationError({"name": [f"A template named {template.name!r} exists already."]})
    template.updated_by = actor if getattr(actor, "is_authenticated", False) and actor.pk else None
    template.save()
    return template


@transaction.atomic
def email_template_delete(*, template: EmailTemplate) -> None:
    """Delete a template no workflow draft names (running versions keep their
    snapshot either way); else a ValidationError naming the workflows."""
    from nurture.selectors import workflows_using_template

    # The template's row first: a workflow save naming it holds the row while
    # it commits (``graph._existing_templates``), so the look-up below sees
    # that draft, or the save finds the template gone and refuses it.
    if not EmailTemplate.objects.select_for_update().filter(pk=template.pk).exists():
        return
    users = workflows_using_template(template_id=template.pk)
    if users:
        raise ValidationError({"id": [f"Used by the workflow(s) {', '.join(str(w) for w in users)}: "
                                      f"pick another template in their send-email steps first."]})
    template.delete()


def email_templates_content(*, ids) -> dict[str, dict]:
    """{"<id>": content} of the existing templates among ``ids``."""
    wanted = {int(i) for i in ids}
    return {str(t.pk): t.content() for t in EmailTemplate.objects.filter(pk__in=wanted)} if wanted else {}


def email_template_send_test(*, content: dict, lead: Lead | None, user) -> str:
    """Send ``content`` (a template's, saved or not) rendered for ``lead``
    (None: an empty lead, so every fallback shows) to ``user``'s own
    address, through the email connection the engine sends with. Marked as
    a test: "[Test]" in the subject, an ``X-Nurture-Test`` header, no
    tracking and no Message row. Raises ValidationError when the user has no
    email address or the content does not validate; a backend refusal
    propagates. Returns the address.

    Runs in the request (not a task): the person pressing the button needs
    the backend's answer, and the connection has the engine's send timeout."""
    address = (getattr(user, "email", "") or "").strip()
    if not address:
        raise ValidationError({"email": ["Your user account has no email address: add one to your profile "
                                         "to receive test sends."]})
    email_template_validate(template=EmailTemplate(**{f: content.get(k) or "" for k, f in EmailTemplate.CONTENT_FIELDS.items()}))
    rendered = channels.render_email(content, lead if lead is not None else Lead())
    session = channels.EmailSession()
    try:
        session.send(channels.email_build_test(rendered, to=address), commit_point=lambda: None)
    finally:
        session.close()
    log.info("nurture: test email %r sent to %s by %s", rendered["subject"], address, user)
    return address
