"""Nurture workflows: definitions, immutable published versions, enrollments,
step executions and messages, suppressions and ad audiences.

A workflow's steps are a graph kept as JSON (see ``nurture.graph`` for the
shape and its validation). The draft lives on ``Workflow.definition``;
publishing copies it into a ``WorkflowVersion`` that never changes, and every
enrollment points at the version it started on.
"""
from __future__ import annotations

from django.conf import settings as django_settings
from django.db import models
from django.utils import timezone

from martech.models import Lead

# martech.configcache key of the active workflows the trigger receivers cache.
WORKFLOWS_KEY = "nurture.workflows"
# ... and of the event names any workflow version exits on or waits for.
VERSION_EVENTS_KEY = "nurture.version_events"


class Workflow(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    class Trigger(models.TextChoices):
        EVENT = "event", "Event (with property conditions)"
        FORM = "form", "Form submission"
        SEGMENT = "segment", "Entering a segment"
        STAGE = "stage", "Lifecycle stage change"
        SCORE = "score", "Score crosses a threshold"
        CRM_FIELD = "crm_field", "CRM field change"
        MANUAL = "manual", "Manual enrollment only"

    class Reenroll(models.TextChoices):
        NEVER = "never", "Never"
        ALWAYS = "always", "Always (after the previous enrollment ended)"
        AFTER_DAYS = "after_days", "After N days"

    name = models.CharField(max_length=200, unique=True)
    owner = models.ForeignKey(django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT, db_index=True)
    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.MANUAL)
    # event: {"event": "cart_abandoned", "condition": "..."}; form: {"form": "<key>"};
    # stage: {"stage": "mql"}; score: {"threshold": 80}; crm_field: {"fields": ["status"]};
    # segment: {"segment": <id>, "enroll_existing": true}
    trigger_config = models.JSONField(default=dict, blank=True)
    enrollment_condition = models.TextField(blank=True, help_text="Condition language; empty enrolls everyone triggered.")
    reenroll = models.CharField(max_length=12, choices=Reenroll.choices, default=Reenroll.NEVER)
    reenroll_days = models.PositiveIntegerField(null=True, blank=True)
    suppress_stages = models.JSONField(default=list, blank=True, help_text="Lifecycle stage keys that are never enrolled.")
    suppress_segments = models.JSONField(default=list, blank=True, help_text="Segment ids whose members are never enrolled.")
    suppress_unsubscribed = models.BooleanField(default=True, help_text="Skip leads whose email consent is withdrawn.")
    goal_condition = models.TextField(blank=True, help_text="Meeting it exits the lead and counts a conversion.")
    goal_event = models.CharField(max_length=100, blank=True, help_text="An event name that meets the goal.")
    # Attribution: a click in this workflow's emails is an email touch on this campaign.
    campaign = models.ForeignKey(
        "martech.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The campaign its email clicks are credited to (an email touch on it). Without one, a click "
                  "takes the campaign of the link's UTM tags, if any.",
    )

    class InDoubtPolicy(models.TextChoices):
        HOLD = "hold", "Hold for a person (Messages › needs attention)"
        RESEND = "resend", "Resend (risks a duplicate)"
        GIVE_UP = "give_up", "Give up (risks a missed email)"

    # What recovery does with a message a dead worker may or may not have
    # sent, once it has been in doubt for in_doubt_minutes (see docs/nurture.md, "Crashes").
    in_doubt_policy = models.CharField(max_length=8, choices=InDoubtPolicy.choices, default=InDoubtPolicy.HOLD)
    in_doubt_minutes = models.PositiveIntegerField(default=60)
    # The draft step graph (see nurture.graph).
    definition = models.JSONField(default=dict, blank=True)
    current_version = models.ForeignKey(
        "WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    has_draft_changes = models.BooleanField(default=True, editable=False)
    # The segment whose members SegmentMember holds for this workflow (a
    # segment trigger's first sync with "enroll_existing": false records the
    # members already there without enrolling them).
    segment_baseline_id = models.PositiveBigIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WorkflowVersion(models.Model):
    """Immutable once written: a snapshot of everything an enrollment needs."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField()
    settings = models.JSONField(default=dict, help_text="Criteria, suppression and goal at publish time.")
    # The email templates its send-email steps name, as they were at publish
    # time: {"<template id>": EmailTemplate.content()}. The engine renders
    # from here, so editing a template changes nothing until the next publish.
    templates = models.JSONField(default=dict, blank=True)
    published_at = models.DateTimeField(default=timezone.now)
    published_by = models.ForeignKey(django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="nurture_version_unique")]

    def __str__(self) -> str:
        return f"{self.workflow} v{self.number}"


class Enrollment(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        COMPLETED = "completed", "Completed"
        CONVERTED = "converted", "Goal met"
        EXITED = "exited", "Exited"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="enrollments")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="enrollments")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="nurture_enrollments")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    step = models.CharField(max_length=64, blank=True, help_text="Key of the step to run next.")
    # Counts visits so the idempotency key of a step stays unique if a graph
    # ever revisits it; also the number of steps executed.
    seq = models.PositiveIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True)
    # wait_until bookkeeping: {"deadline": iso}
    state = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=100, blank=True)
    is_test = models.BooleanField(default=False)
    enrolled_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_reason = models.CharField(max_length=100, blank=True)

    class Meta:
        indexes = [
            # The scheduler's one query: active enrollments due now, oldest first.
            models.Index(fields=["due_at"], name="nurture_enr_due", condition=models.Q(status="active")),
            models.Index(fields=["lead", "workflow"], name="nurture_enr_lead_wf"),
        ]
        constraints = [
            # At most one running enrollment of a lead per workflow: two
            # triggers racing enroll once.
            models.UniqueConstraint(
                fields=["workflow", "lead"], condition=models.Q(status="active"), name="nurture_one_active_enrollment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.lead} in {self.workflow} ({self.get_status_display().lower()})"


class StepExecution(models.Model):
    """One decided step. ``key`` is the idempotency key, inserted in the
    transaction that decides the step: a second worker or a retried task hits
    the unique index and does nothing."""

    # The outcome of a wait step that has started: the enrollment's step has
    # already moved on to the one after the wait, due when the wait ends.
    WAITED = "waited"

    enrollment = models.ForeignKey(Enrollment, on_delete=models.CASCADE, related_name="executions")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+")
    step = models.CharField(max_length=64)
    step_type = models.CharField(max_length=20)
    key = models.CharField(max_length=120, unique=True)
    outcome = models.CharField(max_length=40)
    detail = models.JSONField(default=dict, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    executed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["workflow", "step"], name="nurture_exec_wf_step")]

    def __str__(self) -> str:
        from nurture.labels import step_type_label

        return f"Step {self.step!r} ({step_type_label(self.step_type)}): {self.outcome.replace('_', ' ')}"


class Message(models.Model):
    """A message to a lead. Created ``queued`` (with ``claimed_at``) in the
    deciding transaction; delivery then, per message and under the lead's
    row lock, checks consent and suppression again, marks it ``sending``
    right before the point of no return of the channel call and ``sent``
    right after it. A worker killed in between leaves it ``sending``:
    recovery asks the backend whether it went out (when the backend can
    tell) and never resends blindly (see nurture.engine)."""

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        SMS = "sms", "SMS"
        NOTIFY = "notify", "Notification"
        WEBHOOK = "webhook", "Webhook"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued (not handed to the channel yet)"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped at send time (see reason)"
        IN_DOUBT = "in_doubt", "In doubt (may have gone out: not resent)"
        TEST = "test", "Rendered in test mode (not sent)"

    # Waiting for delivery, or not known to be settled: a later message of
    # the same enrollment waits behind these (steps go out in order).
    UNSETTLED = (Status.QUEUED, Status.SENDING, Status.IN_DOUBT)

    key = models.CharField(max_length=120, unique=True)
    execution = models.ForeignKey(StepExecution, on_delete=models.CASCADE, related_name="messages")
    # The execution's enrollment, kept here: each send asks for the
    # enrollment's unsettled earlier messages (steps go out in order) on
    # this column's index, not through a join the planner may drive from
    # the status index (every queued message of a backlog).
    enrollment = models.ForeignKey(Enrollment, null=True, on_delete=models.CASCADE, related_name="messages")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="nurture_messages")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+")
    step = models.CharField(max_length=64)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    is_marketing = models.BooleanField(default=True)
    # The subscription topic of its step: not sent to a lead who left the topic.
    topic = models.ForeignKey("martech.SubscriptionType", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+")
    to = models.CharField(max_length=500)
    subject = models.CharField(max_length=500, blank=True)
    body = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Why it was skipped at send time (no_consent, suppressed, ...), or how
    # an in-doubt message was settled (confirmed by the ESP, resent, ...).
    status_reason = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When a worker last took it (queued) or started its send (sending): the
    # recovery lease runs from here.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    bounced_at = models.DateTimeField(null=True, blank=True)
    # The provider's id (the ESP's message id through anymail, Twilio's
    # sid): tracking events find the message by it.
    provider_id = models.CharField(max_length=255, blank=True, db_index=True)

    class Meta:
        indexes = [
            # Frequency cap: a lead's marketing emails in the last week.
            models.Index(fields=["lead", "channel", "created_at"], name="nurture_msg_cap"),
            models.Index(fields=["status", "created_at"], name="nurture_msg_status"),
            # Recovery's sweep: unsettled messages whose lease ran out.
            models.Index(fields=["status", "claimed_at"], name="nurture_msg_claim",
                         condition=models.Q(status__in=["queued", "sending", "in_doubt"])),
        ]

    def __str__(self) -> str:
        what = self.subject or self.get_channel_display()
        return f"{what} to {self.to} ({self.get_status_display().split(' (')[0].lower()})"


class Suppression(models.Model):
    """Addresses never mailed again (hard bounce, complaint, unsubscribe)."""

    class Reason(models.TextChoices):
        BOUNCE = "bounce", "Bounced"
        COMPLAINT = "complaint", "Complaint"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"

    address = models.CharField(max_length=254, unique=True)
    reason = models.CharField(max_length=12, choices=Reason.choices)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.address} ({self.get_reason_display().lower()})"


class AudienceMember(models.Model):
    """Members of a retargeting audience kept here; exported hashed."""

    audience = models.CharField(max_length=100, db_index=True)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="nurture_audiences")
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["audience", "lead"], name="nurture_audience_member_unique")]

    def __str__(self) -> str:
        return f"{self.lead} in audience {self.audience}"


class SegmentMember(models.Model):
    """The leads a segment-triggered workflow last saw in its segment.
    ``segments_sync`` compares the segment's members now (its compiled Q, in
    SQL) with these rows: leads not here yet have *entered* and are enrolled
    (re-enrollment policy applies); rows of leads that left are deleted, so
    leaving and coming back is a new entry."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="segment_members")
    segment = models.ForeignKey("scoring.Segment", on_delete=models.CASCADE, related_name="+")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="+")
    entered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "lead"], name="nurture_segment_member_unique")]

    def __str__(self) -> str:
        return f"{self.lead} in segment {self.segment} (workflow {self.workflow})"


class EmailTemplate(models.Model):
    """An email that send-email steps name by id (step key ``template``).

    Subject, preheader and bodies use the template language of
    ``nurture.channels`` (merge fields with fallbacks, conditional blocks);
    saving checks them (``nurture.services.email_template_save``). A blank
    text body is derived from the HTML when the email is rendered."""

    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=500, help_text="Merge fields allowed, e.g. Hi {{first_name|there}}.")
    preheader = models.CharField(max_length=255, blank=True,
                                 help_text="The preview line an inbox shows after the subject (hidden in the email).")
    html_body = models.TextField("HTML body", help_text="Merge fields are HTML-escaped; "
                                 "{{#if score >= 50}}…{{else}}…{{/if}} shows a part only to leads who match.")
    text_body = models.TextField("Text body", blank=True,
                                 help_text="The plain-text part. Leave blank to derive it from the HTML body.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(django_settings.AUTH_USER_MODEL, null=True, blank=True, editable=False,
                                   on_delete=models.SET_NULL, related_name="+")

    # The fields a template's text lives in, as the renderer names them.
    CONTENT_FIELDS = {"subject": "subject", "preheader": "preheader", "html": "html_body", "text": "text_body"}

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def content(self) -> dict[str, str]:
        """What ``channels.render_email`` renders, and what a published
        workflow version keeps of the template."""
        return {"name": self.name, **{key: getattr(self, f) for key, f in self.CONTENT_FIELDS.items()}}

    def clean(self) -> None:
        from nurture.services import email_template_validate

        email_template_validate(template=self)


class StepTally(models.Model):
    """What retention deleted, still counted: per workflow and step, the
    executions and message outcomes of rows past their retention days
    (nurture.retention folds them in, in the transaction that deletes them).
    The workflow metrics add these to the rows still held."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+")
    step = models.CharField(max_length=64)
    executed = models.PositiveBigIntegerField(default=0)
    sent = models.PositiveBigIntegerField(default=0)
    delivered = models.PositiveBigIntegerField(default=0)
    opened = models.PositiveBigIntegerField(default=0)
    clicked = models.PositiveBigIntegerField(default=0)
    unsubscribed = models.PositiveBigIntegerField(default=0)
    bounced = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "step"], name="nurture_steptally_unique")]

    def __str__(self) -> str:
        return f"{self.workflow} step {self.step}: {self.executed} executed (deleted rows)"
