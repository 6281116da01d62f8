"""Scoring models and rules, segments, lifecycle rules, score history,
SQL handoffs and stale-MQL flags.

Every write goes through ``martech.scoring.services``; the lead's own score
columns (``fit_score``, ``engagement_score``, ``total_score``) stay on
``martech.Lead`` and are written only by ``scores_recompute``.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from martech.conditions import ConditionField, parse
from martech.models import EventType, Lead, LifecycleStage, SalesTask, StageTransition


class ScoringModel(models.Model):
    """A set of fit and engagement rules. One model is active at a time: it is
    the one that writes the lead's scores."""

    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=False)
    half_life_days = models.DecimalField(
        max_digits=7, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0.01)],
        help_text="Engagement points lose half their value every this many days. Empty: no decay.",
    )
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_active", "name"]
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True),
                                    name="scoring_one_active_model"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (active)" if self.is_active else self.name


class FitRule(models.Model):
    model = models.ForeignKey(ScoringModel, on_delete=models.CASCADE, related_name="fit_rules")
    name = models.CharField(max_length=100)
    condition = ConditionField(help_text='e.g. job_title contains "vp" or account.employee_count >= 200')
    points = models.IntegerField()
    is_active = models.BooleanField(default=True)
    # When the rule last changed: shown beside each rule on the scoring
    # model's admin page (workers learn of a change through
    # martech.configcache, bumped on save and delete).
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.points:+d})"


class EngagementRule(models.Model):
    class Period(models.TextChoices):
        DAY = "day", "Per day"
        WEEK = "week", "Per week"
        MONTH = "month", "Per month"
        EVER = "ever", "Ever"

    model = models.ForeignKey(ScoringModel, on_delete=models.CASCADE, related_name="engagement_rules")
    name = models.CharField(max_length=100)
    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="+")
    # Reads only the event's own properties: properties.url contains "/pricing".
    condition = ConditionField(blank=True, help_text='Optional, on the event\'s properties, e.g. '
                                                     'properties.url contains "/pricing"')
    points = models.IntegerField()
    cap_points = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many points per period from this rule. Empty: no cap."
    )
    cap_period = models.CharField(max_length=5, choices=Period.choices, default=Period.DAY)
    distinct_property = models.CharField(
        max_length=100, blank=True,
        help_text="Count only the first event for each distinct value of this event property (e.g. url).",
    )
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.points:+d})"

    def clean(self) -> None:
        if self.condition:
            cond = parse(self.condition)
            wrong = sorted(f for f in cond.fields if not f.startswith("properties."))
            if wrong:
                raise ValidationError({"condition": [
                    f"An engagement rule's condition reads the event's properties only (properties.<name>), "
                    f"not {', '.join(wrong)}."]})


class ScoreHistory(models.Model):
    """One row per change of a lead's scores, for reporting."""

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="score_history")
    changed_at = models.DateTimeField(default=timezone.now, db_index=True)
    fit_score = models.IntegerField()
    engagement_score = models.IntegerField()
    total_score = models.IntegerField()
    old_total = models.IntegerField()
    reason = models.CharField(max_length=100)
    # Why, as of this computation: one entry per rule that gave points,
    # {"kind", "rule_id", "rule", "points", "events", "last_at"} (fit rules
    # first, each kind by rule id). The lead page and the API show the latest
    # row's breakdown; reports can read it per rule (services.BREAKDOWN_DOC).
    breakdown = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        indexes = [models.Index(fields=["lead", "-changed_at"], name="scorehistory_lead_idx")]
        verbose_name_plural = "score history"

    def __str__(self) -> str:
        return f"{self.lead_id}: {self.old_total} -> {self.total_score}"


class Segment(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    condition = ConditionField(help_text='e.g. score >= 50 and country in ("US", "CA")')
    # The parsed form, stored beside the text (docs/architecture.md, Data rules); rebuilt on save.
    condition_json = models.JSONField(default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class LifecycleRule(models.Model):
    """Moves leads to ``to_stage`` when the condition matches (checked after
    every rescoring) or when an event of ``event_type`` arrives."""

    name = models.CharField(max_length=100)
    order = models.PositiveSmallIntegerField(default=100)
    condition = ConditionField(blank=True, help_text="e.g. score >= 75 and fit_score >= 30")
    event_type = models.ForeignKey(EventType, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_stage = models.ForeignKey(LifecycleStage, on_delete=models.PROTECT, related_name="+")
    allow_backward = models.BooleanField(
        default=False, help_text="Also move leads that are further along (recycling). Off: forward only."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not self.condition and not self.event_type_id:
            raise ValidationError({"condition": ["Give a condition, an event type, or both."]})


class Handoff(models.Model):
    """The SQL handoff of one stage transition: owner, follow-up task,
    notifications. ``started_at`` is the SLA clock start routing reads."""

    transition = models.OneToOneField(StageTransition, on_delete=models.CASCADE, related_name="handoff")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="handoffs")
    started_at = models.DateTimeField(db_index=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    assigned_by = models.CharField(max_length=20, blank=True, help_text="routing, default_queue or unchanged")
    task = models.ForeignKey(SalesTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The notifications' state (services.handoffs_notify): null while they
    # wait or failed, the time they were all sent (or found nothing to send);
    # the failed tries, so the schedule's retries stop at HANDOFF_NOTIFY_ATTEMPTS.
    notified_at = models.DateTimeField(null=True, blank=True)
    notify_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # The waiting notifications, read by every woken run: a handful of rows.
            models.Index(fields=["id"], condition=models.Q(notified_at__isnull=True), name="handoff_notify_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"handoff of lead {self.lead_id} at {self.started_at:%Y-%m-%d %H:%M}"


class StaleFlag(models.Model):
    """An MQL with no activity for MARTECH_SCORING_STALE_MQL_DAYS; cleared
    when the lead is active again or leaves MQL."""

    lead = models.OneToOneField(Lead, on_delete=models.CASCADE, related_name="stale_flag")
    flagged_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"stale MQL {self.lead_id}"
