"""Routing: reps, teams, territories, rule-set versions, assignments, SLA.

Writes go through ``routing.services``; these models hold fields,
constraints, ``clean()`` and cheap predicates (availability is computed by
``routing.engine`` from the fields here, without queries).
"""
from __future__ import annotations

import re
from datetime import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from martech.models import Lead, validate_time_zone

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def default_working_hours() -> dict:
    return {d: [["09:00", "17:00"]] for d in WEEKDAYS[:5]}


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def validate_working_hours(value) -> None:
    """``{"mon": [["09:00", "17:00"]], ...}``; an interval whose end is before
    its start runs past midnight into the next day (a night shift)."""
    if not isinstance(value, dict):
        raise ValidationError("Give an object keyed by weekday (mon..sun).")
    for day, intervals in value.items():
        if day not in WEEKDAYS:
            raise ValidationError(f"{day!r} is not a weekday; use one of {', '.join(WEEKDAYS)}.")
        if not isinstance(intervals, list):
            raise ValidationError(f"{day}: give a list of [start, end] pairs.")
        for pair in intervals:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(p, str) and _HHMM.match(p) for p in pair)):
                raise ValidationError(f"{day}: {pair!r} is not a [\"HH:MM\", \"HH:MM\"] pair.")
            if pair[0] == pair[1]:
                raise ValidationError(f"{day}: {pair!r} is empty (start equals end).")


def validate_holidays(value) -> None:
    from datetime import date

    if not isinstance(value, list):
        raise ValidationError("Give a list of dates (YYYY-MM-DD).")
    for item in value:
        try:
            date.fromisoformat(item)
        except (TypeError, ValueError):
            raise ValidationError(f"{item!r} is not a YYYY-MM-DD date.") from None


def validate_string_list(value) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() and "\x00" not in v for v in value):
        raise ValidationError("Give a list of non-empty strings.")


class Team(models.Model):
    class Method(models.TextChoices):
        ROUND_ROBIN = "round_robin", "Round robin"
        WEIGHTED = "weighted", "Weighted round robin"
        CAPACITY = "capacity", "Capacity-based (skip reps at capacity)"
        LEAST_LOADED = "least_loaded", "Least loaded"

    name = models.CharField(max_length=100, unique=True)
    method = models.CharField(max_length=20, choices=Method.choices, default=Method.ROUND_ROBIN)
    sla_policy = models.ForeignKey("SlaPolicy", null=True, blank=True, on_delete=models.SET_NULL, related_name="teams")
    is_active = models.BooleanField(default=True)
    # Where an SLA escalation goes when the rep has no manager (else the
    # routing admins: martech.roles.ROUTING_ADMINS). Never nobody, silently.
    escalation_contact = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Told of SLA breaches of reps without a manager; empty = the routing admins.",
    )
    # The round-robin pointer: the virtual clock of the team's fair queue. The
    # row is locked (select_for_update) while a rep is chosen, so several
    # workers routing at once take turns instead of picking the same rep.
    rr_clock = models.FloatField(default=0.0, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Rep(models.Model):
    name = models.CharField(max_length=150)
    email = models.EmailField(unique=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="sales_rep"
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="reps")
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    working_hours = models.JSONField(
        default=default_working_hours, blank=True, validators=[validate_working_hours],
        help_text='Local hours per weekday, e.g. {"mon": [["09:00", "17:00"]]}; an end before the start runs '
        "past midnight. Empty = always on.",
    )
    holidays = models.JSONField(default=list, blank=True, validators=[validate_holidays],
                                help_text="Local dates off, YYYY-MM-DD.")
    max_open_leads = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = no limit.")
    max_per_day = models.PositiveIntegerField(null=True, blank=True, help_text="New leads per local day; empty = no limit.")
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    is_active = models.BooleanField(default=True)
    manager = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reports")
    backup = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="backing")
    hubspot_owner_id = models.CharField(max_length=32, blank=True)
    salesforce_user_id = models.CharField(max_length=18, blank=True)
    # Position in the team's fair queue (see Team.rr_clock); written under the team lock.
    rr_pass = models.FloatField(default=0.0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.backup_id and self.backup_id == self.pk:
            raise ValidationError({"backup": "A rep cannot be their own backup."})
        if self.manager_id and self.manager_id == self.pk:
            raise ValidationError({"manager": "A rep cannot be their own manager."})


class OutOfOffice(models.Model):
    """An absence with start and end times: a partial day counts."""

    rep = models.ForeignKey(Rep, on_delete=models.CASCADE, related_name="absences")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = "out-of-office period"
        ordering = ["-starts_at"]
        indexes = [models.Index(fields=["rep", "ends_at"])]
        constraints = [models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="ooo_ends_after_start")]

    def __str__(self) -> str:
        return f"{self.rep} away {self.starts_at:%Y-%m-%d %H:%M} – {self.ends_at:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The end must be after the start."})


class Territory(models.Model):
    """Structured matching on the lead (and its account). Every non-empty
    criterion must hold; within a criterion any value may match."""

    name = models.CharField(max_length=100, unique=True)
    countries = models.JSONField(default=list, blank=True, help_text='ISO codes, e.g. ["US", "CA"].')
    regions = models.JSONField(default=list, blank=True)
    postal_prefixes = models.JSONField(default=list, blank=True)
    industries = models.JSONField(default=list, blank=True, help_text="Account industries.")
    min_employees = models.PositiveIntegerField(null=True, blank=True)
    max_employees = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "territories"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        for name in ("countries", "regions", "postal_prefixes", "industries"):
            try:
                validate_string_list(getattr(self, name))
            except ValidationError as exc:
                errors[name] = exc.messages
        if self.min_employees is not None and self.max_employees is not None and self.min_employees > self.max_employees:
            errors["max_employees"] = ["Must be at least min_employees."]
        if errors:
            raise ValidationError(errors)
        self.countries = [c.strip().upper() for c in self.countries]
        self.postal_prefixes = [p.strip().upper().replace(" ", "") for p in self.postal_prefixes]

    def _normalized(self) -> tuple[frozenset, frozenset, tuple, frozenset]:
        # Kept on the instance: published rules (and their territories) are
        # cached per process and checked for every lead.
        key = (tuple(self.countries), tuple(self.regions), tuple(self.postal_prefixes), tuple(self.industries))
        cached = self.__dict__.get("_norm")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_norm"] = (key, (
                frozenset(c.upper() for c in self.countries), frozenset(r.strip().lower() for r in self.regions),
                tuple(p.upper().replace(" ", "") for p in self.postal_prefixes),
                frozenset(i.strip().lower() for i in self.industries)))
        return cached[1]

    def matches(self, lead: Lead) -> bool:
        countries, regions, prefixes, industries = self._normalized()
        if countries and (lead.country or "").upper() not in countries:
            return False
        if regions and (lead.region or "").strip().lower() not in regions:
            return False
        account = lead.account if lead.account_id else None
        if prefixes:
            postal = (lead.postal_code or "").upper().replace(" ", "")
            if not postal or not postal.startswith(prefixes):
                return False
        if industries:
            industry = (account.industry if account else "").strip().lower()
            if industry not in industries:
                return False
        if self.min_employees is not None or self.max_employees is not None:
            size = account.employee_count if account else None
            if size is None:
                return False
            if self.min_employees is not None and size < self.min_employees:
                return False
            if self.max_employees is not None and size > self.max_employees:
                return False
        return True

    def to_q(self) -> Q:
        q = Q()
        if self.countries:
            q &= Q(country__in=self.countries)
        if self.regions:
            rq = Q()
            for r in self.regions:
                rq |= Q(region__iexact=r.strip())
            q &= rq
        if self.postal_prefixes:
            pq = Q()
            for p in self.postal_prefixes:
                pq |= Q(postal_code__istartswith=p)
            q &= pq
        if self.industries:
            iq = Q()
            for i in self.industries:
                iq |= Q(account__industry__iexact=i.strip())
            q &= iq
        if self.min_employees is not None:
            q &= Q(account__employee_count__gte=self.min_employees)
        if self.max_employees is not None:
            q &= Q(account__employee_count__lte=self.max_employees)
        return q


class RuleSet(models.Model):
    """A draft (edited by sales ops) or a published version (immutable). The
    live set is the latest published one; rollback publishes a copy of an
    earlier version as a new version, so the history only grows."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    name = models.CharField(max_length=100, default="Routing rules")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT, editable=False)
    version = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)
    fallback_team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Required to publish: leads no rule matches go here (waiting if nobody is eligible).",
    )
    copied_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    published_at = models.DateTimeField(null=True, blank=True, editable=False)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ["-version", "-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="draft", version__isnull=True) | Q(status="published", version__isnull=False),
                name="ruleset_version_iff_published",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" if self.version else f"{self.name} (draft #{self.pk})"

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


class Rule(models.Model):
    class Action(models.TextChoices):
        TEAM = "team", "Assign to a team"
        REP = "rep", "Assign to a rep"
        ACCOUNT_OWNER = "account_owner", "Assign to the matched account's owner"
        NURTURE = "nurture", "Hand to the nurture queue"

    rule_set = models.ForeignKey(RuleSet, on_delete=models.CASCADE, related_name="rules")
    order = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=100)
    condition = models.TextField(
        blank=True, help_text='In the shared condition language, e.g. score >= 50 and country in ("US", "CA"). '
        "Empty = every lead (with the territory, if set)."
    )
    territory = models.ForeignKey(Territory, null=True, blank=True, on_delete=models.PROTECT, related_name="rules")
    action = models.CharField(max_length=20, choices=Action.choices, default=Action.TEAM)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The team (action team); for rep/account owner the team that takes the lead when they and their backup are unavailable.",
    )
    rep = models.ForeignKey(Rep, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["rule_set", "order", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from routing.conditions import condition_validate

        errors = {}
        if self.action == self.Action.TEAM and not self.team_id:
            errors["team"] = ["Choose the team this rule assigns to."]
        if self.action == self.Action.REP and not self.rep_id:
            errors["rep"] = ["Choose the rep this rule assigns to."]
        try:
            condition_validate(self.condition)
        except ValidationError as exc:
            errors["condition"] = exc.messages
        if errors:
            raise ValidationError(errors)


class SlaPolicy(models.Model):
    """First touch within N business hours of the rep (their working hours,
    time zone and holidays), then the escalation chain."""

    name = models.CharField(max_length=100, unique=True)
    first_touch_hours = models.DecimalField(max_digits=6, decimal_places=2, validators=[MinValueValidator(0.01)])
    notify_manager_after_hours = models.DecimalField(
        max_digits=6, decimal_places=2, default=1, validators=[MinValueValidator(0)],
        help_text="Business hours after the breach before the manager is notified.",
    )
    reassign_after_hours = models.DecimalField(
        max_digits=6, decimal_places=2, default=2, validators=[MinValueValidator(0)],
        help_text="Business hours after the breach before the lead is reassigned.",
    )

    class Meta:
        verbose_name = "SLA policy"
        verbose_name_plural = "SLA policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.reassign_after_hours is not None and self.notify_manager_after_hours is not None \
                and self.reassign_after_hours < self.notify_manager_after_hours:
            raise ValidationError({"reassign_after_hours": "Reassign comes after notifying the manager."})


class Assignment(models.Model):
    """One routing decision, kept without a time limit. At most one is
    current per lead (a unique partial index), which is what makes a second
    worker's decision for the same lead fail instead of doubling it."""

    class Status(models.TextChoices):
        ASSIGNED = "assigned", "Assigned"
        WAITING = "waiting", "Waiting for an eligible rep"
        NURTURE = "nurture", "Nurture queue"

    class Trigger(models.TextChoices):
        NEW_LEAD = "new_lead", "New lead"
        STAGE = "stage_change", "Stage change"
        ADMIN = "admin", "Admin action"
        API = "api", "API call"
        HANDOFF = "handoff", "SQL handoff"
        DEACTIVATION = "deactivation", "Rep deactivated"
        WAITING = "waiting", "Waiting queue"
        ESCALATION = "escalation", "SLA escalation"
        FIRST_SCORE = "first_score", "First score"

    class Lifecycle(models.TextChoices):
        """Where the rep's work on the lead stands. Open and worked count
        against the rep's ``max_open_leads`` (``open_assignments_q``); closed
        does not."""

        OPEN = "open", "Open"
        WORKED = "worked", "Worked (first touch)"
        CLOSED = "closed", "Closed"

    class CloseReason(models.TextChoices):
        CONVERTED = "converted", "Converted"
        DISQUALIFIED = "disqualified", "Disqualified"
        REASSIGNED = "reassigned", "Reassigned"
        CRM_OWNER = "crm_owner_changed", "Owner changed in the CRM"
        API = "api", "Closed through the API"

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="routing_assignments")
    status = models.CharField(max_length=10, choices=Status.choices)
    is_current = models.BooleanField(default=True)
    rep = models.ForeignKey(Rep, null=True, blank=True, on_delete=models.PROTECT, related_name="assignments")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT, related_name="assignments")
    rule_set = models.ForeignKey(RuleSet, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rule_set_version = models.PositiveIntegerField(null=True, blank=True)
    rule = models.ForeignKey(Rule, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rule_name = models.CharField(max_length=100, blank=True)
    method = models.CharField(max_length=20, blank=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    reason = models.CharField(max_length=255, blank=True)
    explanation = models.JSONField(default=dict)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=100, blank=True)
    # SLA
    sla_policy = models.ForeignKey(SlaPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    sla_due_at = models.DateTimeField(null=True, blank=True)
    first_touch_at = models.DateTimeField(null=True, blank=True)
    first_touch_source = models.CharField(max_length=100, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    # Lifecycle (issue 17): open -> worked (first touch) -> closed.
    lifecycle = models.CharField(max_length=10, choices=Lifecycle.choices, default=Lifecycle.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=20, choices=CloseReason.choices, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["lead", "-created_at"]),
            models.Index(fields=["status", "is_current", "created_at"], name="routing_waiting_idx"),
            models.Index(fields=["rep", "is_current", "status"], name="routing_rep_open_idx"),
            # A rep's leads of the day (services.rep_loads: daily caps).
            models.Index(fields=["rep", "assigned_at"], name="routing_rep_day_idx"),
            # The waiting queue, team by team (services.waiting_assign).
            models.Index(fields=["team", "created_at", "id"], condition=Q(status="waiting", is_current=True),
                         name="routing_waiting_team_idx"),
            models.Index(fields=["sla_due_at"], condition=Q(is_current=True, first_touch_at__isnull=True),
                         name="routing_sla_open_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["lead"], condition=Q(is_current=True), name="routing_one_current_assignment"),
        ]

    def __str__(self) -> str:
        who = self.rep or self.team or "-"
        return f"Lead {self.lead_id} → {who} ({self.get_status_display()})"


OPEN_LIFECYCLES = (Assignment.Lifecycle.OPEN, Assignment.Lifecycle.WORKED)


def open_assignments_q(prefix: str = "") -> Q:
    """The assignments a rep is working: current, assigned, not closed. The
    one definition every cap count (router, admin, decision record) uses;
    ``prefix`` is a relation path ("assignments__") for counting from reps."""
    return Q(**{f"{prefix}is_current": True, f"{prefix}status": Assignment.Status.ASSIGNED,
                f"{prefix}lifecycle__in": OPEN_LIFECYCLES})


class Escalation(models.Model):
    """One step of an SLA escalation chain, written once per (assignment,
    level): a repeated run of the escalation task finds it and does nothing."""

    class Level(models.IntegerChoices):
        REMIND_REP = 1, "Remind the rep"
        NOTIFY_MANAGER = 2, "Notify the manager"
        REASSIGN = 3, "Reassign"

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="escalations")
    level = models.PositiveSmallIntegerField(choices=Level.choices)
    created_at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict)

    class Meta:
        ordering = ["assignment", "level"]
        constraints = [models.UniqueConstraint(fields=["assignment", "level"], name="routing_escalation_once")]

    def __str__(self) -> str:
        return f"{self.get_level_display()} (assignment {self.assignment_id})"
