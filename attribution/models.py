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


def default_currency() -> str:
    """Amounts given without a currency are in the company currency."""
    return settings.MARTECH_COMPANY_CURRENCY


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
    # A deal without its own expected close date is expected this many days
    # after it entered the stage (blank: no default, the forecast lists it as unscheduled).
    days_to_close = models.PositiveIntegerField(
        null=True, blank=True, help_text="Default expected close: this many days after a deal enters the stage."
    )
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
    # Money is Decimal with a currency (docs/architecture.md, Data rules).
    amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"), validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default=default_currency)
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
    # Forecast: the deal's own expected close date and win probability
    # (percent); blank takes the stage's (days_to_close, probability).
    expected_close_date = models.DateField(null=True, blank=True)
    probability = models.DecimalField(
        max_digits=5, decimal_places=2, null=True, blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Win probability in percent; blank: the stage's.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "opportunities"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["stage", "closed_at"], name="opp_stage_closed_idx")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        closed_before_created(self.created_at, self.closed_at)


CLOSED_BEFORE_CREATED = "Must not be before the opportunity's creation (created_at)."


def closed_before_created(created_at, closed_at) -> None:
    """The one rule every write path applies (model clean, API input, the
    stage service): a deal closes at or after it was created."""
    if created_at is not None and closed_at is not None and closed_at < created_at:
        from django.core.exceptions import ValidationError

        raise ValidationError({"closed_at": [CLOSED_BEFORE_CREATED]})


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
        return f"{self.lead} on {self.opportunity} ({self.role or 'contact'})"


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
        return f"{self.opportunity}: {self.from_stage.name if self.from_stage else 'created'} → {self.to_stage.name}"


class OpportunityDeletion(models.Model):
    """A deal deleted here, once per CRM connection that held it (by its CRM
    id). Two jobs: the tombstone a pull checks, so the CRM's copy is never
    created here again (``crm_sync._write``), and, when the connection
    pushes deals, the delete the CRM outbox sends there (object type
    "deal_deletion"), so the report and the CRM keep agreeing. A connection
    that only pulls deals keeps its copy (``KEPT``): the tombstone alone
    holds the deletion here. A deal deleted in the CRM first is recorded
    for that connection as ``REMOTE``, which is no tombstone (restored
    there, it comes back). Written only by services.opportunity_delete."""

    class Status(models.TextChoices):
        PENDING = "pending", "To delete in the CRM"
        DONE = "done", "Deleted in the CRM"
        KEPT = "kept", "Kept in the CRM (the connection does not push deals)"
        # Deleted there first, so not a tombstone: a deal restored in the CRM comes back with the next pull.
        REMOTE = "remote", "Deleted in the CRM"

    connection = models.ForeignKey("crm.Connection", on_delete=models.CASCADE, related_name="+")
    remote_id = models.CharField(max_length=64)
    # The deleted row's id and what it was, for the audit (the row itself is gone).
    opportunity_id = models.BigIntegerField()
    name = models.CharField(max_length=255)
    amount = models.DecimalField(max_digits=18, decimal_places=2)
    currency = models.CharField(max_length=3)
    deleted_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    source = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "deleted opportunity"
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="oppdel_conn_remote_uniq")]

    def __str__(self) -> str:
        return f"{self.name} ({self.remote_id}, {self.get_status_display().lower()})"


class CampaignSpend(models.Model):
    """What one campaign cost on one day (imported from ad platforms' CSVs)."""

    campaign = models.ForeignKey("martech.Campaign", on_delete=models.CASCADE, related_name="spend")
    date = models.DateField()
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default=default_currency)
    impressions = models.PositiveBigIntegerField(default=0)
    clicks = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-date", "campaign"]
        constraints = [models.UniqueConstraint(fields=["campaign", "date"], name="spend_campaign_date_uniq")]

    def __str__(self) -> str:
        return f"{self.campaign} on {self.date}: {self.amount} {self.currency}"


class ExchangeRate(models.Model):
    """What one unit of ``currency`` was worth in the company currency
    (``MARTECH_COMPANY_CURRENCY``) on ``date``. An amount is converted with
    the latest rate on or before its date (attribution.money); writes go
    through attribution.money.exchange_rate_upsert, which recomputes what
    the change moves."""

    currency = models.CharField(max_length=3, help_text="ISO 4217 code, e.g. EUR.")
    date = models.DateField()
    rate = models.DecimalField(
        max_digits=24, decimal_places=10, validators=[MinValueValidator(Decimal("0.0000000001"))],
        help_text="Company-currency units for one unit of this currency.",
    )
    source = models.CharField(max_length=60, blank=True, help_text="Where the rate came from (admin, CSV, the fetch URL).")
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["currency", "-date"]
        constraints = [
            # Also the index the lookups read: a currency's rates by date.
            models.UniqueConstraint(fields=["currency", "date"], name="exchangerate_currency_date_uniq"),
            models.CheckConstraint(condition=models.Q(rate__gt=0), name="exchangerate_rate_positive"),
        ]

    def __str__(self) -> str:
        return f"1 {self.currency} = {self.rate.normalize():f} on {self.date}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        code = (self.currency or "").strip().upper()
        if len(code) != 3 or not code.isalpha():
            raise ValidationError({"currency": [f"A three-letter ISO 4217 code (got {self.currency!r})."]})
        if code == settings.MARTECH_COMPANY_CURRENCY:
            raise ValidationError({"currency": [f"{code} is the company currency; it needs no rate."]})
        self.currency = code


class ForecastSnapshot(models.Model):
    """The forecast as it stood on ``taken_on``: per expected close month
    (None: open deals without an expected close date) and source, the
    weighted and commit forecast in ``currency`` (the company currency). A
    daily task takes it (attribution.forecast.forecast_snapshot_take), so
    accuracy can later compare what was forecast with what closed."""

    taken_on = models.DateField()
    month = models.DateField(null=True, blank=True, help_text="First day of the expected close month.")
    source = models.CharField(max_length=20, blank=True)
    currency = models.CharField(max_length=3)
    open_deals = models.PositiveIntegerField(default=0)
    pipeline = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))
    weighted = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))
    commit = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))
    # Open deals left out because their currency had no rate on their date.
    unconverted_deals = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-taken_on", "month", "source"]
        constraints = [
            models.UniqueConstraint(
                fields=["taken_on", "month", "source"], condition=models.Q(month__isnull=False),
                name="forecastsnap_day_month_source_uniq",
            ),
            models.UniqueConstraint(
                fields=["taken_on", "source"], condition=models.Q(month__isnull=True), name="forecastsnap_day_unscheduled_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"Forecast of {self.taken_on} for {self.month or 'unscheduled'} ({self.source or 'no source'})"


class Touchpoint(models.Model):
    """A marketing touch of a lead, built from one event (see
    services.touchpoints_rebuild). Repeats of one channel inside the session
    window are collapsed into the first, so the event behind a touch is the
    session's first."""

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="touchpoints")
    # No database foreign key: on PostgreSQL the events table is partitioned by
    # time and its key is (id, occurred_at). Event retention keeps every event a
    # touchpoint points at (martech/retention.py); deleting an event still
    # deletes its touchpoint through Django's cascade.
    event = models.OneToOneField("martech.Event", on_delete=models.CASCADE, related_name="touchpoint",
                                 db_constraint=False)
    occurred_at = models.DateTimeField()
    channel = models.CharField(max_length=20, choices=Channel.choices)
    campaign = models.ForeignKey("martech.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="touchpoints")
    # The lead's last touch at or before it was created (its first, when the lead predates every touch).
    is_lead_creation = models.BooleanField(default=False)

    class Meta:
        ordering = ["lead", "occurred_at", "id"]
        indexes = [
            # Paths are read per lead in time order.
            models.Index(fields=["lead", "occurred_at"], name="touch_lead_time_idx"),
            # New leads per channel/campaign/month for cost per lead: one in five touches or fewer, index-only.
            models.Index(
                fields=["occurred_at", "channel", "campaign"], condition=models.Q(is_lead_creation=True),
                name="touch_lead_creation_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} touch of {self.lead} at {self.occurred_at:%Y-%m-%d %H:%M}"


class TouchpointPending(models.Model):
    """A lead whose touchpoints wait for a rebuild: new events of it were
    stored (attribution.receivers). The woken task (tasks.touchpoints_woken)
    takes rows in key order and deletes them in the transaction that rebuilds
    their leads, so a failed run leaves them for the next one; a row added
    while a run goes on has a higher key and waits for the next run. Several
    rows of one lead are one rebuild. No foreign key: a merged-away lead's
    rows rebuild nothing and go."""

    id = models.BigAutoField(primary_key=True)
    lead_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"touchpoints of lead {self.lead_id} pending"


class PositionWeights(models.Model):
    """The custom position-based model's shares, in percent (renormalized, so
    they need not sum to 100). Edited in the admin; one row."""

    first = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("25"), validators=[MinValueValidator(0)])
    lead_creation = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("25"), validators=[MinValueValidator(0)])
    opportunity_creation = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("25"), validators=[MinValueValidator(0)])
    closed_won = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("0"), validators=[MinValueValidator(0)])
    last = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("15"), validators=[MinValueValidator(0)])
    other = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("10"), validators=[MinValueValidator(0)])
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        verbose_name = verbose_name_plural = "custom position weights"

    def __str__(self) -> str:
        return "Custom position weights"

    def as_weights(self) -> dict[str, float]:
        return {r: float(getattr(self, r)) for r in ("first", "lead_creation", "opportunity_creation", "closed_won", "last", "other")}

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if not any(self.as_weights().values()):
            raise ValidationError("At least one share must be above zero.")


def channel_label(code: str) -> str:
    """A channel code as its label (credits keep the code as text, without choices)."""
    try:
        return Channel(code).label
    except ValueError:
        return code


class AttributionModel(models.TextChoices):
    FIRST_TOUCH = "first_touch", "First touch"
    LAST_TOUCH = "last_touch", "Last touch"
    LAST_NON_DIRECT = "last_non_direct", "Last non-direct"
    LINEAR = "linear", "Linear"
    TIME_DECAY = "time_decay", "Time decay"
    U_SHAPED = "u_shaped", "U-shaped (40/20/40)"
    W_SHAPED = "w_shaped", "W-shaped (30/30/30/10)"
    FULL_PATH = "full_path", "Full path / Z-shaped"
    CUSTOM = "custom", "Custom position weights"
    MARKOV = "markov", "Markov chain, per path (removal effects on each path)"
    MARKOV_GLOBAL = "markov_global", "Markov chain, global (removal-effect shares)"
    SHAPLEY = "shapley", "Shapley value (simplified: conversions split over their channels)"


class AttributionRun(models.Model):
    """The channel values a data-driven model learned in its last full run;
    incremental runs reuse them."""

    model = models.CharField(max_length=20, choices=AttributionModel.choices, unique=True)
    channel_values = models.JSONField(default=dict)
    journeys = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.get_model_display()} at {self.computed_at:%Y-%m-%d %H:%M}"


class AttributionCredit(models.Model):
    """Materialized result: one model's credit for one touch of one
    opportunity, for the touches the model gives weight (first, last and
    last non-direct: one row per opportunity; computation.path_credit_rows).
    An opportunity without touches gets one row with no touch
    (channel "unattributed"), so totals always equal the revenue. The
    opportunity's dates and state are copied here so reports read one table."""

    UNATTRIBUTED = "unattributed"

    model = models.CharField(max_length=20, choices=AttributionModel.choices)
    # No database constraints on these three: a full run COPYs millions of
    # rows, and PostgreSQL checks each constrained row with a trigger queued
    # to commit (Django's are deferred), which cost more than the COPY
    # itself. The rows are derived (always written by attribution_compute
    # from existing ids, in one transaction) and the ORM still cascades
    # deletes and nulls campaigns (on_delete runs in Django's collector).
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE, related_name="credits", db_constraint=False)
    touchpoint = models.ForeignKey(
        Touchpoint, null=True, blank=True, on_delete=models.CASCADE, related_name="credits", db_constraint=False
    )
    channel = models.CharField(max_length=20)
    # No index either: only a campaign's deletion looks credits up by it.
    campaign = models.ForeignKey(
        "martech.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False,
        db_index=False,
    )
    touched_at = models.DateTimeField(null=True, blank=True)
    is_opportunity_creation = models.BooleanField(default=False)
    # The opportunity's first row overall / for this channel / for this
    # campaign / for this (channel, campaign) pair: the rollup sums these, so
    # reports count distinct opportunities per group under any channel and
    # campaign filter without a COUNT(DISTINCT) over the credits.
    first_of_opportunity = models.BooleanField(default=False)
    first_of_channel = models.BooleanField(default=False)
    first_of_campaign = models.BooleanField(default=False)
    first_of_channel_campaign = models.BooleanField(default=False)
    weight = models.FloatField()
    credit = models.DecimalField(max_digits=18, decimal_places=2)
    currency = models.CharField(max_length=3)
    # The credit in the company currency (the deal's amount converted, then
    # split by the same weights) and the date of the rate used; both null
    # when the deal's currency had no rate on or before its date, and both
    # null for a deal in the company currency, whose company credit is its
    # credit (not stored twice: computation.stored_company_amount). Read it
    # as ``company_amount``.
    company_credit = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    rate_date = models.DateField(null=True, blank=True)
    is_won = models.BooleanField()
    is_closed = models.BooleanField()
    opportunity_created_at = models.DateTimeField()
    opportunity_closed_at = models.DateTimeField(null=True, blank=True)

    # Indexes: only the foreign keys' (refreshes and cascades find rows by
    # opportunity, touchpoint deletions by touchpoint). Reports read
    # AttributionRollup, so the credits need no date index; every index is
    # paid for on each of a full run's millions of rows.

    @property
    def company_amount(self) -> Decimal | None:
        """The credit in the company currency: ``company_credit``, the credit
        itself for a deal in the company currency, None when the deal's
        currency had no rate."""
        if self.company_credit is not None:
            return self.company_credit
        return self.credit if self.currency == settings.MARTECH_COMPANY_CURRENCY else None

    def __str__(self) -> str:
        return f"{self.get_model_display()}: {channel_label(self.channel)} credit {self.credit} on {self.opportunity}"


class AttributionRollup(models.Model):
    """The credits pre-aggregated per (model, basis, UTC day, channel,
    campaign), written by the same transaction that writes the credits
    (computation.rollup_refresh), so the report API reads a few thousand rows
    instead of millions. ``basis`` says which date ``day`` is: ``won`` rows
    sum the credits of won deals by close day (revenue, conversions),
    ``created`` rows those of every deal by creation day (pipeline,
    opportunity counts). The ``first_*`` counts are the credits' first-row
    flags summed, which keeps opportunity counts per group exact."""

    WON = "won"
    CREATED = "created"

    model = models.CharField(max_length=20, choices=AttributionModel.choices)
    basis = models.CharField(max_length=8, choices=[(WON, "Won, by close day"), (CREATED, "All, by creation day")])
    day = models.DateField()
    channel = models.CharField(max_length=20)
    # A plain id, not a foreign key: a deleted campaign's history still adds up (the credits keep theirs by SET_NULL).
    campaign_id = models.BigIntegerField(null=True, blank=True)
    # The deals' own currency: ``credit`` sums amounts in it, ``company_credit``
    # the same converted (``unconverted`` what had no rate, in ``currency``),
    # with the first and last rate dates used.
    currency = models.CharField(max_length=3, default="")
    credit = models.DecimalField(max_digits=20, decimal_places=2)
    company_credit = models.DecimalField(max_digits=22, decimal_places=2, default=Decimal("0"))
    unconverted = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))
    rate_date_first = models.DateField(null=True, blank=True)
    rate_date_last = models.DateField(null=True, blank=True)
    weight = models.FloatField()
    first_of_opportunity = models.PositiveIntegerField(default=0)
    first_of_channel = models.PositiveIntegerField(default=0)
    first_of_campaign = models.PositiveIntegerField(default=0)
    first_of_channel_campaign = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            # The report's one filter: a model, a basis, a range of days.
            models.Index(fields=["model", "basis", "day"], name="rollup_model_basis_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_model_display()}, {self.get_basis_display().lower()}, {self.day}: {channel_label(self.channel)} {self.credit}"
