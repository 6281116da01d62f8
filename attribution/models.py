"""Opportunities (deals): pipelines and their ordered stages, contact roles
and stage history. Attribution results, spend and touchpoints build on these.

Writes go through ``attribution.services`` (opportunity_upsert,
opportunity_change_stage), which the API, CSV import and the CRM sync share.
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords

from martech.models import Account, Channel, Lead


class Pipeline(models.Model):
    key = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=120)
    is_default = models.BooleanField(default=False)
    hubspot_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True), name="pipeline_one_default"),
        ]

    def __str__(self) -> str:
        return self.name


class OpportunityStage(models.Model):
    """An ordered stage of a pipeline. ``key`` is what code and CRM mappings
    refer to (HubSpot dealstage ids, Salesforce StageName values map here)."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="stages")
    key = models.SlugField(max_length=60)
    name = models.CharField(max_length=120)
    order = models.PositiveSmallIntegerField()
    # Win probability in percent, for the weighted forecast.
    probability = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal("0"),
        validators=[MinValueValidator(0), MaxValueValidator(100)],
    )
    is_won = models.BooleanField(default=False)
    is_lost = models.BooleanField(default=False)
    history = HistoricalRecords()

    class Meta:
        ordering = ["pipeline", "order"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "key"], name="oppstage_pipeline_key_uniq"),
            models.UniqueConstraint(fields=["pipeline", "order"], name="oppstage_pipeline_order_uniq"),
            models.CheckConstraint(condition=~(models.Q(is_won=True) & models.Q(is_lost=True)), name="oppstage_not_won_and_lost"),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline.name}: {self.name}"

    @property
    def is_closed(self) -> bool:
        return self.is_won or self.is_lost


class Opportunity(models.Model):
    name = models.CharField(max_length=255)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.SET_NULL, related_name="opportunities")
    # Money is Decimal with a currency (DESIGN.md).
    amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"), validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default="USD")
    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="opportunities")
    # Changed only through services.opportunity_change_stage, which writes history.
    stage = models.ForeignKey(OpportunityStage, on_delete=models.PROTECT, related_name="opportunities")
    # When the deal was created (in the CRM, if it came from one), not when the row was.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    source = models.CharField(max_length=20, choices=Channel.choices, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_opportunities"
    )
    salesforce_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    hubspot_id = models.CharField(max_length=32, unique=True, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "opportunities"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["stage", "closed_at"], name="opp_stage_closed_idx")]

    def __str__(self) -> str:
        return self.name


class OpportunityContactRole(models.Model):
    """A lead's part in a deal; at most one primary per opportunity."""

    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE, related_name="contact_roles")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="opportunity_roles")
    role = models.CharField(max_length=60, blank=True, help_text="Decision maker, economic buyer, influencer ...")
    is_primary = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["opportunity", "lead"], name="opprole_opp_lead_uniq"),
            models.UniqueConstraint(
                fields=["opportunity"], condition=models.Q(is_primary=True), name="opprole_one_primary"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.lead_id} in {self.opportunity_id} ({self.role or 'contact'})"


class OpportunityStageChange(models.Model):
    """Stage history, written only by services.opportunity_change_stage."""

    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE, related_name="stage_changes")
    from_stage = models.ForeignKey(OpportunityStage, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_stage = models.ForeignKey(OpportunityStage, on_delete=models.PROTECT, related_name="+")
    changed_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["opportunity", "changed_at", "id"]
        indexes = [models.Index(fields=["opportunity", "changed_at"], name="oppchange_opp_time_idx")]

    def __str__(self) -> str:
        return f"{self.opportunity_id}: {self.from_stage_id} -> {self.to_stage_id}"
