"""Core data of the platform: accounts, leads, identities, lifecycle stages,
consent, the event catalog and events, campaigns and UTM normalization, form
definitions, API clients and the notifications sent to the team.

Models hold fields, constraints and cheap predicates. Every write that matters
goes through a function in ``martech.services`` (or ``martech.notify``); this
module imports none of them, so services depend on models and never the
other way round.
"""
from __future__ import annotations

import hashlib
import secrets
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator, URLValidator
from django.db import models
from django.db.models.functions import Lower, Trim
from django.utils import timezone
from phonenumber_field.modelfields import PhoneNumberField
from simple_history.models import HistoricalRecords

from martech import fields as declared


class Channel(models.TextChoices):
    PAID_SEARCH = "paid_search", "Paid search"
    PAID_SOCIAL = "paid_social", "Paid social"
    DISPLAY = "display", "Display"
    EMAIL = "email", "Email"
    ORGANIC_SEARCH = "organic_search", "Organic search"
    ORGANIC_SOCIAL = "organic_social", "Organic social"
    REFERRAL = "referral", "Referral"
    DIRECT = "direct", "Direct"
    EVENTS = "events", "Events"
    OTHER = "other", "Other"


def validate_time_zone(value: str) -> None:
    if value and value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone name.", code="invalid_time_zone")


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


# --- Accounts and leads -----------------------------------------------------


class Account(TimestampedModel):
    name = models.CharField(max_length=255)
    # Normalized (lower-case, no scheme, no "www."); see services.normalize_domain.
    domain = models.CharField(max_length=255, unique=True, null=True, blank=True)
    industry = models.CharField(max_length=100, blank=True, db_index=True)
    employee_count = models.PositiveIntegerField(null=True, blank=True)
    annual_revenue = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166-1 alpha-2")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_accounts"
    )
    salesforce_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    hubspot_id = models.CharField(max_length=32, unique=True, null=True, blank=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(Lower("name"), name="account_name_lower_idx")]

    def __str__(self) -> str:
        return self.name if not self.domain else f"{self.name} ({self.domain})"


class LifecycleStage(models.Model):
    """Ordered, editable stages. Seeded by a data migration; ``key`` is what
    code and CRM mappings refer to, ``name`` what people read."""

    key = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    order = models.PositiveSmallIntegerField(unique=True)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["order"]

    def __str__(self) -> str:
        return self.name


class Lead(TimestampedModel):
    # One unique key per person: the normalized email (trimmed, lower-cased),
    # or a CRM id for records that come from a CRM without an email.
    email = models.EmailField(max_length=254, unique=True, null=True, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    job_title = models.CharField(max_length=150, blank=True)
    phone = PhoneNumberField(blank=True)
    company_name = models.CharField(max_length=255, blank=True)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.SET_NULL, related_name="leads")
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166-1 alpha-2", db_index=True)
    region = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20, blank=True)
    time_zone = models.CharField(max_length=64, blank=True, validators=[validate_time_zone])
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_leads"
    )
    # Changed only through services.lead_change_stage, which writes StageTransition.
    lifecycle_stage = models.ForeignKey(
        LifecycleStage, null=True, blank=True, on_delete=models.PROTECT, related_name="leads"
    )
    fit_score = models.IntegerField(default=0)
    engagement_score = models.IntegerField(default=0)
    # Not indexed, nor are fit/engagement: score writes (the bulk recompute
    # rewrites most leads) then stay heap-only (HOT) updates that touch none
    # of the table's ~20 indexes (migration 0004; scoring's 0004 leaves the
    # free space in each page they need). Segments on score scan anyway
    # (most thresholds match a large share); docs/scoring.md.
    total_score = models.IntegerField(default=0)

    original_source = models.CharField(max_length=20, choices=Channel.choices, blank=True, db_index=True)
    first_touch_at = models.DateTimeField(null=True, blank=True)
    first_utm_source = models.CharField(max_length=255, blank=True)
    first_utm_medium = models.CharField(max_length=255, blank=True)
    first_utm_campaign = models.CharField(max_length=255, blank=True)
    first_utm_term = models.CharField(max_length=255, blank=True)
    first_utm_content = models.CharField(max_length=255, blank=True)
    latest_touch_at = models.DateTimeField(null=True, blank=True)
    latest_utm_source = models.CharField(max_length=255, blank=True)
    latest_utm_medium = models.CharField(max_length=255, blank=True)
    latest_utm_campaign = models.CharField(max_length=255, blank=True)
    latest_utm_term = models.CharField(max_length=255, blank=True)
    latest_utm_content = models.CharField(max_length=255, blank=True)

    salesforce_lead_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    salesforce_contact_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    hubspot_id = models.CharField(max_length=32, unique=True, null=True, blank=True)
    properties = models.JSONField(default=dict, blank=True, help_text="Custom properties")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # The database refuses an email that is not already normalized, so
            # no write path can create "Ann@X.com " beside "ann@x.com".
            models.CheckConstraint(
                condition=models.Q(email__isnull=True) | models.Q(email=Lower(Trim("email"))),
                name="lead_email_normalized",
            ),
            models.CheckConstraint(
                condition=models.Q(email__isnull=False)
                | models.Q(salesforce_lead_id__isnull=False)
                | models.Q(salesforce_contact_id__isnull=False)
                | models.Q(hubspot_id__isnull=False),
                name="lead_has_a_key",
            ),
        ]
        indexes = [
            # The lead changelist and the API list page by (-created_at, -id).
            models.Index(fields=["-created_at", "-id"], name="lead_created_id_idx"),
            models.Index(fields=["lifecycle_stage", "-created_at"], name="lead_stage_created_idx"),
        ]

    def __str__(self) -> str:
        return self.email or self.hubspot_id or self.salesforce_lead_id or f"lead {self.pk}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def email_domain(self) -> str:
        return self.email.rpartition("@")[2] if self.email else ""


# Fields a capture, import or API write may set on a lead (besides
# "properties.<name>" for custom properties), and the CRM ids that find a
# lead as its email does; both read from the one declaration of the lead's
# fields (martech.fields), so form validation here and the services agree.
LEAD_WRITABLE_FIELDS = declared.writable(declared.LEAD_FIELDS) - {"properties"}
CRM_KEYS = declared.names(declared.LEAD_FIELDS, crm_key=True)
# Writable lead fields a form's visitor may not fill (declared without the
# FORM writer) beyond the CRM ids: a form sets them only through its
# defaults. An anonymous sender must not pick a lead's stage (and the
# handoffs and journeys a stage starts).
VISITOR_REFUSED_FIELDS = (LEAD_WRITABLE_FIELDS - set(declared.names(declared.LEAD_FIELDS, writer=declared.FORM))
                          - set(CRM_KEYS))


class Identity(models.Model):
    """An id under which a person was seen before or beside their email:
    an analytics anonymous id, a product user id, a CRM id."""

    class Kind(models.TextChoices):
        ANONYMOUS = "anonymous", "Anonymous id"
        USER = "user", "External user id"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    value = models.CharField(max_length=255)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="identities")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="identity_kind_value_uniq")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class StageTransition(models.Model):
    """History of lifecycle stage changes, written only by
    services.lead_change_stage in the transaction that changes the stage."""

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="stage_transitions")
    from_stage = models.ForeignKey(LifecycleStage, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_stage = models.ForeignKey(LifecycleStage, on_delete=models.PROTECT, related_name="+")
    changed_at = models.DateTimeField(default=timezone.now, db_index=True)
    reason = models.CharField(max_length=255)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who acted when it was not a person: "api:<client>", "form:<key>", "system".
    source = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        indexes = [models.Index(fields=["lead", "-changed_at"], name="stagetr_lead_idx")]

    def __str__(self) -> str:
        return f"{self.lead_id}: {self.from_stage_id} -> {self.to_stage_id}"


class ConsentChannel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    ADS = "ads", "Ads"
    PHONE = "phone", "Phone"


class SubscriptionType(models.Model):
    """A topic people subscribe to on one channel ("Product news", "Events"),
    edited in the admin and shown on the preference page. A lead with consent
    on the channel gets every topic until they leave it: the latest topic
    record (ConsentRecord with this topic) says withdrawn. A send-email step
    names its topic; a lead who left it is skipped for that step."""

    key = models.SlugField(max_length=60, unique=True, help_text="What email steps name, e.g. product-news.")
    name = models.CharField(max_length=120, help_text="What people read on the preference page.")
    description = models.TextField(blank=True, help_text="One line under the name on the preference page.")
    channel = models.CharField(max_length=10, choices=ConsentChannel.choices, default=ConsentChannel.EMAIL)
    order = models.PositiveSmallIntegerField(default=0)
    is_active = models.BooleanField(
        default=True,
        help_text="Shown on the preference page. A send naming an inactive topic still respects a person's choice.",
    )
    history = HistoricalRecords()

    class Meta:
        ordering = ["order", "name"]
        verbose_name = "subscription topic"

    def __str__(self) -> str:
        return self.name


class ConsentRecord(models.Model):
    """Append-only. A lead's current consent on a channel is the status of the
    latest record for that channel without a topic (selectors.lead_consent_state);
    records with a topic say whether the lead left or rejoined that topic."""

    class Status(models.TextChoices):
        GRANTED = "granted", "Granted"
        WITHDRAWN = "withdrawn", "Withdrawn"

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="consent_records")
    channel = models.CharField(max_length=10, choices=ConsentChannel.choices)
    # Empty: consent on the whole channel. Set: the lead's choice on one topic of it.
    topic = models.ForeignKey(
        SubscriptionType, null=True, blank=True, on_delete=models.PROTECT, related_name="consent_records"
    )
    status = models.CharField(max_length=10, choices=Status.choices)
    source = models.CharField(max_length=100, help_text="form:<key>, api:<client>, admin, import, crm ...")
    # Proof: {"form": ..., "ip": ..., "text": <the consent text shown>, "user_agent": ...}
    evidence = models.JSONField(default=dict, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-recorded_at", "-id"]
        indexes = [
            # Serves "latest record per (lead, channel)".
            models.Index(fields=["lead", "channel", "-recorded_at", "-id"], name="consent_latest_idx"),
            # Serves "latest record per (lead, topic)"; most records have no topic.
            models.Index(fields=["lead", "topic", "-recorded_at", "-id"], name="consent_topic_latest_idx",
                         condition=models.Q(topic__isnull=False)),
        ]

    def __str__(self) -> str:
        what = f"{self.get_channel_display()} ({self.topic})" if self.topic_id else self.get_channel_display()
        return f"{what} {self.get_status_display().lower()}"


class ConsentConfirmation(models.Model):
    """A consent given on a double opt-in form, waiting for the person to
    click the link in the confirmation email. It is not consent: only the
    click writes the granted ConsentRecord (services.consent_confirm), with
    this submission's evidence and the click's."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the click"
        CONFIRMED = "confirmed", "Confirmed"
        EXPIRED = "expired", "Expired unconfirmed"

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="consent_confirmations")
    channel = models.CharField(max_length=10, choices=ConsentChannel.choices, default=ConsentChannel.EMAIL)
    form = models.ForeignKey("Form", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # The submission's proof (form, ip, text, page_url, user_agent), copied to the granted record.
    evidence = models.JSONField(default=dict, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # When the confirmation email was handed to the mail backend (None: not yet).
    sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    record = models.OneToOneField(
        ConsentRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="confirmation"
    )

    class Meta:
        ordering = ["-requested_at", "-id"]
        # Serves "does this lead wait for a confirmation on this channel" (sends, resubmissions).
        indexes = [models.Index(fields=["lead", "channel", "status"], name="consent_confirm_lead_idx")]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} confirmation for {self.lead} ({self.get_status_display().lower()})"

    def is_pending(self, now=None) -> bool:
        return self.status == self.Status.PENDING and self.expires_at > (now or timezone.now())


# --- Campaigns and UTM --------------------------------------------------------


class Campaign(TimestampedModel):
    name = models.CharField(max_length=255)
    # Normalized keys (services.normalize_utm): an event's UTM triple finds its campaign.
    utm_source = models.CharField(max_length=255, blank=True)
    utm_medium = models.CharField(max_length=255, blank=True)
    utm_campaign = models.CharField(max_length=255, blank=True)
    channel = models.CharField(max_length=20, choices=Channel.choices, default=Channel.OTHER)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    budget = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default="USD")
    salesforce_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    hubspot_id = models.CharField(max_length=32, unique=True, null=True, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["-start_date", "name"]
        constraints = [
            models.UniqueConstraint(fields=["utm_source", "utm_medium", "utm_campaign"], name="campaign_utm_uniq"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValidationError({"end_date": "The end date is before the start date."})


class UtmAlias(models.Model):
    """Editable alias table applied after trimming and lower-casing, e.g.
    source ``adwords`` -> ``google``."""

    class Field(models.TextChoices):
        SOURCE = "source", "utm_source"
        MEDIUM = "medium", "utm_medium"
        CAMPAIGN = "campaign", "utm_campaign"

    field = models.CharField(max_length=10, choices=Field.choices)
    alias = models.CharField(max_length=255)
    canonical = models.CharField(max_length=255)
    history = HistoricalRecords()

    class Meta:
        verbose_name = "UTM alias"
        verbose_name_plural = "UTM aliases"
        constraints = [models.UniqueConstraint(fields=["field", "alias"], name="utmalias_field_alias_uniq")]

    def __str__(self) -> str:
        return f"{self.field}: {self.alias} -> {self.canonical}"

    def save(self, *args, **kwargs):
        self.alias = self.alias.strip().lower()
        self.canonical = self.canonical.strip().lower()
        super().save(*args, **kwargs)


class ChannelRule(models.Model):
    """Editable channel grouping: the first active rule (by ``order``) whose
    patterns match the normalized source and medium gives the channel.
    Patterns are regular expressions matched in full; empty matches anything."""

    order = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    source_pattern = models.CharField(max_length=500, blank=True)
    medium_pattern = models.CharField(max_length=500, blank=True)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    is_active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return f"{self.order}. {self.name} -> {self.get_channel_display()}"

    def clean(self) -> None:
        from martech.safe_regex import PatternError, compile_pattern

        errors = {}
        for field in ("source_pattern", "medium_pattern"):
            try:
                compile_pattern(getattr(self, field))
            except PatternError as exc:
                errors[field] = f"Not a usable regular expression: {exc}"
        if errors:
            raise ValidationError(errors)


# --- Event catalog and events -------------------------------------------------


class EventType(models.Model):
    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9_.:\- ]+$", "Letters, digits, space and _ . : - only.")],
    )
    label = models.CharField(
        max_length=100, blank=True,
        help_text="How pages and charts name this event, e.g. \"Page viewed\". Empty = the name, humanized.",
    )
    description = models.TextField(blank=True)
    # A JSON Schema the event's properties must satisfy, e.g.
    # {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}
    properties_schema = models.JSONField(default=dict, blank=True)
    is_touchpoint = models.BooleanField(default=False, help_text="Counts as a marketing touchpoint for attribution.")
    is_active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        # Ops read labels, not codes; conditions and the API keep using ``name``.
        return self.display_label

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def clean(self) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(self.properties_schema or {})
        except SchemaError as exc:
            raise ValidationError({"properties_schema": f"Not a valid JSON Schema: {exc.message}"}) from exc


class Event(models.Model):
    class Kind(models.TextChoices):
        TRACK = "track", "track"
        PAGE = "page", "page"
        IDENTIFY = "identify", "identify"
        FORM = "form", "form"

    # The sender's id (Segment's messageId). The same id twice is one event.
    client_event_id = models.CharField(max_length=255, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TRACK)
    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="events")
    lead = models.ForeignKey(Lead, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    anonymous_id = models.CharField(max_length=255, blank=True, db_index=True)
    properties = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    utm_source = models.CharField(max_length=255, blank=True)
    utm_medium = models.CharField(max_length=255, blank=True)
    utm_campaign = models.CharField(max_length=255, blank=True)
    utm_term = models.CharField(max_length=255, blank=True)
    utm_content = models.CharField(max_length=255, blank=True)
    channel = models.CharField(max_length=20, choices=Channel.choices, blank=True)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    # Marks the rows one ingest call inserted, so it can tell its own inserts
    # from rows a concurrent call inserted under the same client_event_id.
    ingest_batch = models.UUIDField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["lead", "-occurred_at"], name="event_lead_time_idx"),
            models.Index(fields=["-occurred_at", "-id"], name="event_time_idx"),
            # The form submissions of a period (the speed-to-lead report),
            # without walking every page view of it.
            models.Index(fields=["occurred_at"], name="event_form_time_idx", condition=models.Q(kind="form")),
            models.Index(fields=["ingest_batch"], name="event_batch_idx"),
        ]

    def __str__(self) -> str:
        when = f" at {self.occurred_at:%Y-%m-%d %H:%M} UTC" if self.occurred_at else ""
        return f"{self.event_type}{when}"


class QuarantinedEvent(models.Model):
    """An inbound item that failed validation while the unknown-event policy is
    "quarantine": kept with its error, shown in the admin, replayable."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        REPLAYED = "replayed", "Replayed"
        DISCARDED = "discarded", "Discarded"

    client_event_id = models.CharField(max_length=255, blank=True, db_index=True)
    payload = models.JSONField()
    field = models.CharField(max_length=255, blank=True)
    reason = models.TextField()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    source = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.client_event_id or self.pk}: {self.reason[:60]}"


# --- Forms --------------------------------------------------------------------


class FormFieldType(models.TextChoices):
    EMAIL = "email", "Email"
    TEXT = "text", "Text"
    TEL = "tel", "Phone"
    SELECT = "select", "Select (choices)"
    CHECKBOX = "checkbox", "Checkbox"
    TEXTAREA = "textarea", "Text area"
    HIDDEN = "hidden", "Hidden"


class WritePolicy(models.TextChoices):
    """What a public submission may do to a field an existing lead already has
    (``martech.services.leads.public_changes``)."""

    FILL = "fill", "Fill if empty"
    OVERWRITE = "overwrite", "Overwrite"
    NEVER = "never", "Never change"


# The keys of one field definition in Form.fields, in the order the admin shows them.
FORM_FIELD_KEYS = ("name", "label", "type", "lead_field", "required", "policy", "choices", "initial",
                   "help_text", "error_message")
_FIELD_NAME = RegexValidator(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
# Names the capture endpoint reads itself; a field definition cannot take them.
RESERVED_FORM_FIELDS = frozenset({"submission_id", "anonymous_id", "page_url", "consent_version", "csrfmiddlewaretoken",
                                  "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"})


def form_fields_clean(fields, *, consent_field: str = "", honeypot_field: str = "") -> list[dict]:
    """Validate and normalize a form's field definitions (a list of objects
    with FORM_FIELD_KEYS). Raises ValidationError with one message per
    problem, each naming the field (by its position and name) and the reason."""
    if not isinstance(fields, list) or not fields:
        raise ValidationError("Add at least one field.")
    out: list[dict] = []
    errors: list[str] = []
    seen_names: set[str] = set()
    seen_leads: set[str] = set()
    for position, raw in enumerate(fields, start=1):
        if not isinstance(raw, dict):
            errors.append(f"Field {position}: give an object with name, label, type and lead_field.")
            continue
        name = str(raw.get("name") or "").strip()
        where = f"Field {position} ({name!r})" if name else f"Field {position}"
        unknown = sorted(set(raw) - set(FORM_FIELD_KEYS))
        if unknown:
            errors.append(f"{where}: unknown key(s) {', '.join(unknown)}.")
        field_type = str(raw.get("type") or FormFieldType.TEXT)
        lead_field = str(raw.get("lead_field") or "").strip()
        policy = str(raw.get("policy") or WritePolicy.FILL)
        choices = raw.get("choices") or []
        item = {
            "name": name,
            "label": str(raw.get("label") or "").strip() or name.replace("_", " ").capitalize(),
            "type": field_type,
            "lead_field": lead_field,
            "required": bool(raw.get("required")),
            "policy": policy,
            "choices": choices,
            "initial": str(raw.get("initial") or ""),
            "help_text": str(raw.get("help_text") or "").strip(),
            "error_message": str(raw.get("error_message") or "").strip(),
        }
        try:
            _FIELD_NAME(name)
        except ValidationError:
            errors.append(f"{where}: the name must start with a letter and hold only letters, digits, _ or -.")
        if name in seen_names:
            errors.append(f"{where}: the name is used twice.")
        if name in RESERVED_FORM_FIELDS or name in (consent_field, honeypot_field):
            errors.append(f"{where}: {name!r} is reserved (consent, honeypot or a capture field).")
        seen_names.add(name)
        if field_type not in FormFieldType.values:
            errors.append(f"{where}: unknown type {field_type!r} (one of {', '.join(FormFieldType.values)}).")
        if not (lead_field in LEAD_WRITABLE_FIELDS or (lead_field.startswith("properties.") and len(lead_field) > 11)):
            errors.append(f"{where}: unknown lead field {lead_field!r} (a lead field or properties.<name>).")
        elif lead_field in CRM_KEYS:
            errors.append(f"{where}: a public form cannot set CRM ids ({lead_field}).")
        elif lead_field in VISITOR_REFUSED_FIELDS:
            errors.append(f"{where}: the visitor cannot choose the lifecycle stage; set the stage this form gives "
                          "in its defaults (lifecycle_stage).")
        elif lead_field in seen_leads:
            errors.append(f"{where}: {lead_field!r} is filled by another field already.")
        seen_leads.add(lead_field)
        if field_type == FormFieldType.CHECKBOX and not lead_field.startswith("properties."):
            errors.append(f"{where}: a checkbox fills a custom property (properties.<name>), not {lead_field!r}.")
        if lead_field == "email" and field_type != FormFieldType.EMAIL:
            errors.append(f"{where}: the field that fills the lead's email must have the type email.")
        if policy not in WritePolicy.values:
            errors.append(f"{where}: unknown write policy {policy!r} (one of {', '.join(WritePolicy.values)}).")
        if field_type == FormFieldType.SELECT:
            pairs = []
            for choice in choices if isinstance(choices, list) else [None]:
                if isinstance(choice, str) and choice.strip():
                    pairs.append([choice.strip(), choice.strip()])
                elif isinstance(choice, (list, tuple)) and len(choice) == 2 and str(choice[0]).strip():
                    pairs.append([str(choice[0]).strip(), str(choice[1]).strip() or str(choice[0]).strip()])
                else:
                    errors.append(f"{where}: each choice is a value or a [value, label] pair (got {choice!r}).")
                    break
            if not pairs:
                errors.append(f"{where}: a select needs at least one choice.")
            item["choices"] = pairs
        elif choices:
            errors.append(f"{where}: only a select has choices.")
        else:
            item["choices"] = []
        if field_type == FormFieldType.HIDDEN and item["required"] and not item["initial"]:
            errors.append(f"{where}: a required hidden field needs a value (initial).")
        out.append(item)
    if errors:
        raise ValidationError(errors)
    if "email" not in seen_leads:
        raise ValidationError("One field must fill the lead's email (lead_field email, type email).")
    return out


class Form(TimestampedModel):
    """A public capture form: hosted at /f/<key>, embeddable on the sites in
    ``allowed_origins``, posting to /api/v1/capture/<key>. ``fields`` defines
    what is rendered and where each value goes (see ``form_fields_clean``)."""

    key = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    fields = models.JSONField(
        default=list,
        help_text="The form's fields, in order: name (the input's name), label, type (email, text, tel, select, "
        "checkbox, textarea, hidden), lead_field (a lead field or properties.<name>), required, policy toward "
        "an existing lead (fill: only when empty; overwrite; never), choices (select), initial (hidden value), "
        "help_text, error_message.",
    )
    # {"lead field": value} applied when the submission does not set it.
    defaults = models.JSONField(default=dict, blank=True)
    consent_field = models.CharField(max_length=100, blank=True, help_text="Checkbox field that grants consent.")
    consent_channel = models.CharField(max_length=10, choices=ConsentChannel.choices, default=ConsentChannel.EMAIL)
    consent_text = models.TextField(blank=True, help_text="The consent wording shown on the form (kept as evidence).")
    double_opt_in = models.BooleanField(
        "require double opt-in", default=False,
        help_text="Email consent counts only after the person clicks the link in a confirmation email.",
    )
    honeypot_field = models.CharField(max_length=100, default="website", help_text="Hidden field; bots fill it.")
    event_type = models.ForeignKey(EventType, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    submit_label = models.CharField(max_length=100, default="Submit", help_text="The submit button's text.")
    thank_you_message = models.TextField(
        default="Thank you! We have received your submission.",
        help_text="Shown after a submission, unless a redirect URL is set.",
    )
    redirect_url = models.URLField(
        max_length=2000, blank=True, help_text="Send the visitor here after a submission instead (http or https)."
    )
    allowed_origins = models.JSONField(
        default=list,
        blank=True,
        help_text="Websites that may embed this form, one origin each, e.g. https://www.example.com. "
        "A browser post from any other site is refused.",
    )
    is_active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from martech.cors import origins_clean

        errors: dict[str, list[str]] = {}
        try:
            self.fields = form_fields_clean(
                self.fields, consent_field=self.consent_field, honeypot_field=self.honeypot_field
            )
        except ValidationError as exc:
            errors["fields"] = exc.messages
        if not isinstance(self.defaults, dict):
            errors["defaults"] = ["Give an object of lead field -> value."]
        else:
            taken = sorted(set(self.defaults) & set(CRM_KEYS))
            if taken:
                errors["defaults"] = [f"A public form cannot set CRM ids ({', '.join(taken)})."]
        if self.consent_field and self.consent_field == self.honeypot_field:
            errors["consent_field"] = ["The consent checkbox cannot also be the honeypot field."]
        if self.double_opt_in and (not self.consent_field or self.consent_channel != ConsentChannel.EMAIL):
            errors["double_opt_in"] = ["Double opt-in confirms email consent: set the consent checkbox and the "
                                       "email channel."]
        if self.consent_field and not self.consent_text.strip():
            errors["consent_text"] = ["Give the consent wording shown next to the checkbox (it is kept as evidence)."]
        if self.redirect_url:
            try:
                _HTTP_URL(self.redirect_url)
            except ValidationError:
                errors["redirect_url"] = ["Give an http:// or https:// address."]
        try:
            if not isinstance(self.allowed_origins, list):
                raise ValidationError("Give a list of origins, e.g. [\"https://www.example.com\"].")
            self.allowed_origins = origins_clean(self.allowed_origins)
        except ValidationError as exc:
            errors["allowed_origins"] = exc.messages
        if errors:
            raise ValidationError(errors)

    # --- cheap predicates used by the hosted page and the capture endpoint ---

    def write_policy(self) -> dict[str, str]:
        """{lead field: policy} for ``lead_upsert(public=True, policy=...)``."""
        return {f["lead_field"]: f.get("policy") or WritePolicy.FILL for f in self.fields or []}

    @property
    def consent_version(self) -> str:
        """A short digest of the consent wording, carried by the rendered form
        so the evidence names the exact text the visitor saw."""
        return consent_text_version(self.consent_text)


def consent_text_version(text: str) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


_HTTP_URL = URLValidator(schemes=["http", "https"])


# --- Websites (the first-party tracker) -------------------------------------------


def website_key() -> str:
    """A new publishable key. Publishable: it sits in every page of the
    website, so it only names the website; the origin check and the
    public-input rules are what keep outsiders from doing harm with it."""
    return f"pk_{secrets.token_urlsafe(18)}"


class Website(TimestampedModel):
    """A website whose pages carry the tracker script (POST /api/v1/t)."""

    name = models.CharField(max_length=200, unique=True)
    key = models.CharField(
        "publishable key", max_length=40, unique=True, default=website_key, editable=False,
        help_text="Sent by the tracker with every batch; rotate it with the admin action.",
    )
    allowed_origins = models.JSONField(
        default=list,
        help_text='Origins whose pages may send events, e.g. ["https://www.example.com"]. Scheme and host '
                  "(and a port if not the default); a request from any other origin is refused.",
    )
    track_events = models.JSONField(
        default=list, blank=True,
        help_text="Event types (from the event catalog) pages may send with track(). Page views and "
                  "identify calls are always allowed; any other track() event is refused.",
    )
    respect_privacy_signals = models.BooleanField(
        default=True,
        help_text="Send nothing and set no cookie in browsers that ask not to be tracked "
                  "(Do Not Track or Global Privacy Control).",
    )
    is_active = models.BooleanField(default=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def source(self) -> str:
        """What events and lead changes from this website are recorded as."""
        return f"tracker:{self.pk}"

    def clean(self) -> None:
        from martech.cors import origins_clean

        errors: dict[str, list[str]] = {}
        origins = self.allowed_origins
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            errors["allowed_origins"] = ["Give a list of origins."]
        elif not origins:
            errors["allowed_origins"] = ["List at least one origin, e.g. https://www.example.com."]
        else:
            try:
                self.allowed_origins = origins_clean(origins)
            except ValidationError as exc:
                errors["allowed_origins"] = exc.messages
        names = self.track_events
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            errors["track_events"] = ["Give a list of event type names."]
        else:
            known = set(EventType.objects.filter(name__in=names).values_list("name", flat=True))
            unknown = [n for n in names if n not in known]
            if unknown:
                errors["track_events"] = [f"Not in the event catalog: {', '.join(unknown)}."]
        if errors:
            raise ValidationError(errors)


# --- Sales tasks ----------------------------------------------------------------


class SalesTask(TimestampedModel):
    """A follow-up for a person in sales: made by the SQL handoff, a nurture
    step or by hand, pushed to the CRM when a connection exists. Written only
    through services.tasks (task_create is idempotent by ``key``)."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    # Idempotency key of whatever decided to create it, e.g. "handoff:<lead>:<transition>".
    key = models.CharField(max_length=200, unique=True)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="sales_tasks")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="sales_tasks"
    )
    subject = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=100, blank=True)
    salesforce_id = models.CharField(max_length=18, unique=True, null=True, blank=True)
    hubspot_id = models.CharField(max_length=32, unique=True, null=True, blank=True)

    class Meta:
        ordering = ["status", "due_at", "-id"]
        indexes = [models.Index(fields=["lead", "status"], name="salestask_lead_status_idx")]

    def __str__(self) -> str:
        return self.subject


# --- API clients --------------------------------------------------------------


class ApiClient(TimestampedModel):
    """A system that calls the REST API with a bearer token. Only the token's
    SHA-256 is stored; the token itself is shown once, at creation."""

    class Scope(models.TextChoices):
        CAPTURE = "capture", "Capture events"
        LEADS_READ = "leads:read", "Read leads"
        LEADS_WRITE = "leads:write", "Write leads"
        ACCOUNTS_READ = "accounts:read", "Read accounts"
        ACCOUNTS_WRITE = "accounts:write", "Write accounts"
        EVENTS_READ = "events:read", "Read events"
        CAMPAIGNS_READ = "campaigns:read", "Read campaigns"
        CAMPAIGNS_WRITE = "campaigns:write", "Write campaigns"
        STAGES_READ = "stages:read", "Read lifecycle stages"
        ROUTING_READ = "routing:read", "Read routing (reps, teams, territories, rule sets)"
        ROUTING_WRITE = "routing:write", "Write routing and route leads"
        SCORES_READ = "scores:read", "Read lead scores and score history"
        SEGMENTS_READ = "segments:read", "Read segments and their members"
        ATTRIBUTION_READ = "attribution:read", "Read attribution reports, opportunities and spend"
        ATTRIBUTION_WRITE = "attribution:write", "Write opportunities and spend"
        NURTURE_READ = "nurture:read", "Read nurture workflows and metrics"
        NURTURE_WRITE = "nurture:write", "Enroll leads in nurture workflows and edit email templates"
        PRIVACY_EXPORT = "privacy:export", "Export everything held about a person (subject access)"
        PRIVACY_ERASE = "privacy:erase", "Erase a person from every app"

    name = models.CharField(max_length=100, unique=True)
    token_prefix = models.CharField(max_length=12, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    is_active = models.BooleanField(default=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    history = HistoricalRecords(excluded_fields=["last_used_at"])

    class Meta:
        verbose_name = "API client"

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def clean(self) -> None:
        valid = set(self.Scope.values)
        bad = [s for s in (self.scopes or []) if s not in valid]
        if bad:
            raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(bad)}. Valid: {', '.join(sorted(valid))}."})


# --- Configuration versions -----------------------------------------------------


class ConfigVersion(models.Model):
    """A token per kind of configuration (scoring rules, nurture workflows,
    CRM mappings), changed in the same transaction as the configuration:
    per-process caches compare it to decide whether what they hold is still
    current (martech.configcache)."""

    key = models.CharField(max_length=100, primary_key=True)
    token = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.key}: {self.token}"


# --- Outbound notifications -------------------------------------------------------


class Notification(models.Model):
    """One notification to the team (an email, or a POST to a webhook such
    as Slack's) and how it went: written by ``martech.notify`` for the SQL
    handoff, SLA escalations and nurture's notify and webhook steps."""

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"

    class Status(models.TextChoices):
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        IN_DOUBT = "in_doubt", "In doubt (sent, no answer)"

    channel = models.CharField(max_length=10, choices=Channel.choices)
    source = models.CharField(max_length=100, help_text="What sent it: scoring:handoff, routing:sla, nurture:notify ...")
    key = models.CharField(max_length=200, blank=True, db_index=True,
                           help_text="The sender's idempotency key (sent as the Idempotency-Key header).")
    # The email addresses, or the webhook's scheme and host only (its path may hold a secret).
    target = models.CharField(max_length=500)
    status = models.CharField(max_length=10, choices=Status.choices)
    attempts = models.PositiveSmallIntegerField(default=1)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The webhook's HTTP status.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["-created_at"], name="notification_recent")]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} for {self.source}: {self.summary}"

    @property
    def ok(self) -> bool:
        return self.status == self.Status.SENT

    @property
    def summary(self) -> str:
        """``sent (200)``, ``failed: <error>``, ``in doubt: <error>``: what
        the senders show on their own rows."""
        if self.ok:
            return f"sent ({self.response_status})" if self.response_status else "sent"
        label = "in doubt" if self.status == self.Status.IN_DOUBT else "failed"
        return f"{label}: {self.error}"


# --- Pending captures (the capture task's outbox) -----------------------------------


class CapturePending(models.Model):
    """One stored form submission or event batch whose ``capture_process``
    task has not finished: written in the request's transaction (one
    INSERT), deleted by the task when it is done. The task is enqueued when
    the request commits; a row still here after ``next_attempt_at`` (its
    task lost: the process died before the enqueue, the broker was down or
    dropped the task) is enqueued again by the ``capture.sweep`` schedule,
    up to ``martech.services.capture.SWEEP_ATTEMPTS`` times; then it stays,
    with ``next_attempt_at`` empty and its task's last error, for ops to see
    and enqueue again from the admin (martech.services.capture)."""

    source = models.CharField(max_length=100)
    reason = models.CharField(max_length=20, default="form")
    lead_ids = models.JSONField(default=list)
    event_ids = models.JSONField(default=list)
    created_ids = models.JSONField(default=list)
    transition_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    # Times the sweep enqueued it again.
    attempts = models.PositiveSmallIntegerField(default=0)
    # When the sweep takes it (MARTECH_CAPTURE_SWEEP_AFTER after the enqueue or the task's start); empty: given up.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The last error its task raised ("" when none did: a task lost, not failed).
    last_error = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "pending capture"
        indexes = [models.Index(fields=["next_attempt_at"], name="capture_pending_due")]

    def __str__(self) -> str:
        return f"capture #{self.pk} from {self.source} ({len(self.lead_ids)} lead(s))"

    def args(self) -> tuple:
        return (self.lead_ids, self.event_ids, self.created_ids, self.transition_ids, self.source, self.reason)
