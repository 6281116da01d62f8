"""CRM sync state: connections, field mappings as data, the outbox, dead
letters, runs, webhook receipts, lifecycle mapping and pulled CRM owners.

Sync state is per (connection, object type, local record): ``object`` is a
key of the object registry (martech.crm.objects), e.g. contact, company,
deal, task.

Credentials never live here: a Connection names a provider; its URL and token
come from settings (environment), so nothing secret reaches the admin.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Provider(models.TextChoices):
    HUBSPOT = "hubspot", "HubSpot"
    SALESFORCE = "salesforce", "Salesforce"


class Connection(models.Model):
    provider = models.CharField(max_length=20, choices=Provider.choices, unique=True)
    name = models.CharField(max_length=100)
    is_active = models.BooleanField(default=True)
    daily_api_limit = models.PositiveIntegerField(default=250_000)
    # Counted per UTC day; the drain slows down near the limit (services.budget_left).
    api_calls_day = models.DateField(null=True, blank=True)
    api_calls_used = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    stopped_reason = models.TextField(blank=True, help_text="Set when the connection stopped itself (e.g. auth).")
    # A rate, daily or org limit answered: nothing is pushed or pulled until
    # then, and no record is charged an attempt (services.connection_pause).
    paused_until = models.DateTimeField(null=True, blank=True,
                                        help_text="The CRM's limit was reached: sync resumes at this time.")
    pause_reason = models.TextField(blank=True, help_text="The limit answer that paused the connection.")
    # The CRM's own count of the daily allowance, when an answer carried it
    # (Salesforce Sforce-Limit-Info or /limits, HubSpot X-HubSpot-RateLimit-Daily*).
    crm_calls_used = models.PositiveIntegerField(null=True, blank=True)
    crm_calls_limit = models.PositiveIntegerField(null=True, blank=True)
    crm_calls_at = models.DateTimeField(null=True, blank=True)

    class ConflictRule(models.TextChoices):
        SYSTEM_OF_RECORD = "system_of_record", "System of record wins (per mapping)"
        MOST_RECENT = "most_recent", "Most recent change wins"

    conflict_rule = models.CharField(max_length=20, choices=ConflictRule.choices,
                                     default=ConflictRule.SYSTEM_OF_RECORD,
                                     help_text="When both sides changed a record since the last sync.")

    def __str__(self) -> str:
        return self.name


def object_choices() -> list[tuple[str, str]]:
    """The registered object types (martech.crm.objects); callable, so a
    later stage registering one needs no migration here."""
    from martech.crm.objects import choices

    return choices()


class FieldMapping(models.Model):
    class Direction(models.TextChoices):
        PUSH = "push", "Push (here -> CRM)"
        PULL = "pull", "Pull (CRM -> here)"
        BOTH = "both", "Both"

    class Kind(models.TextChoices):
        TEXT = "text", "Text"
        NUMBER = "number", "Number"
        BOOLEAN = "boolean", "Boolean"
        DATE = "date", "Date"
        DATETIME = "datetime", "Date and time"
        PICKLIST = "picklist", "Picklist (value map)"
        MULTI = "multi", "Multi-select (joined with ;)"

    class Owner(models.TextChoices):
        LOCAL = "local", "Here"
        REMOTE = "remote", "CRM"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="mappings")
    object = models.CharField(max_length=20, choices=object_choices, default="contact")
    local_field = models.CharField(
        max_length=100, help_text="Model field, or properties.<key> for a custom property."
    )
    remote_field = models.CharField(max_length=100)
    direction = models.CharField(max_length=4, choices=Direction.choices, default=Direction.BOTH)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TEXT)
    value_map = models.JSONField(
        default=dict, blank=True, help_text='Picklist only: {"local value": "remote value"}.'
    )
    default = models.CharField(max_length=255, blank=True, help_text="Sent when the local value is empty.")
    required = models.BooleanField(default=False)
    system_of_record = models.CharField(max_length=6, choices=Owner.choices, default=Owner.LOCAL)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "object", "remote_field"], name="crm_mapping_remote_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.local_field} <-> {self.remote_field}"

    @property
    def pushes(self) -> bool:
        return self.direction in (self.Direction.PUSH, self.Direction.BOTH)

    @property
    def pulls(self) -> bool:
        return self.direction in (self.Direction.PULL, self.Direction.BOTH)

    def clean(self) -> None:
        """Refuse a mapping that could never work (transforms.validate_mapping),
        then one the portal or org would refuse (martech.crm.schema: an unknown
        field, a read-only or calculated one pushed, a picklist value or
        default it does not have), each naming the field and the reason.
        Stored definitions only; when none were read yet the save goes through
        and ``schema_warnings`` says so (the admin shows it)."""
        from martech.crm.schema import mapping_problems
        from martech.crm.transforms import validate_mapping

        validate_mapping(self)
        self.schema_warnings: list[str] = []
        if not self.connection_id:
            return
        errors, self.schema_warnings = mapping_problems(self)
        if errors:
            raise ValidationError({k: [" ".join(v)] for k, v in errors.items()})


class SyncCursor(models.Model):
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="cursors")
    object = models.CharField(max_length=20, choices=object_choices)
    value = models.CharField(max_length=64, blank=True, help_text="Last modification time seen (ISO 8601).")
    # Pulls read from ``value`` inclusive (a CRM's clock has whole seconds or
    # milliseconds, and a mass update shares one): the records already
    # applied at exactly ``value``, remote id -> a hash of what was applied,
    # are skipped unless they changed, so ties lose nothing and nothing is
    # applied twice.
    seen = models.JSONField(default=dict, blank=True,
                            help_text="Remote ids applied at exactly the cursor's time, with a hash of each.")
    # Where an interrupted full import (crm_sync --full) resumes, and the
    # times of the slow asks (owners, deletions) a scheduled pull spaces out.
    resume = models.JSONField(default=dict, blank=True,
                              help_text="Progress of an unfinished full import; when slow asks last ran.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "object"], name="crm_cursor_unique")]

    def __str__(self) -> str:
        return f"{self.object} pulled up to {self.value or '(start)'}"


class OutboxItem(models.Model):
    """One record waiting to be pushed. Written in the transaction that
    changed the record (martech.crm.outbox); one pending row per record, so
    a burst of edits pushes once with the latest values.

    ``version`` counts the writes queued on the pending row: every change
    upserts the row and bumps it. A drain remembers the version it claimed
    and marks the row done only if it is still that one; a change that
    landed while the record was being pushed (the drain read the record
    before it) leaves the row pending for the next drain instead of being
    lost."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        DEAD = "dead", "Dead letter"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="outbox")
    object = models.CharField(max_length=20, choices=object_choices)
    local_id = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    version = models.PositiveIntegerField(default=1)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # When a drain last took the row (under its lease): one drain run sends a record at most once.
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["connection", "status", "next_attempt_at"], name="crm_outbox_due")]
        constraints = [
            # At most one pending row per record: the hook's insert relies on it.
            models.UniqueConstraint(
                fields=["connection", "object", "local_id"],
                condition=models.Q(status="pending"),
                name="crm_outbox_one_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.object} #{self.local_id} ({self.status})"


class DeadLetter(OutboxItem):
    """Proxy so the admin shows dead letters as their own list."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"


class PullFailure(models.Model):
    """A pulled record (or link) we could not apply: kept with the CRM's
    error, re-fetched and applied again by the next pulls of its object type
    on the outbox's backoff (services.pull_failures_retry_due), dead after
    MAX_ATTEMPTS like an outbox item. One row per record: failing again (a
    retry, or a new version pulled from the CRM) updates it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending retry"
        DEAD = "dead", "Dead letter"
        RESOLVED = "resolved", "Resolved"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="pull_failures")
    # An object key (contact, task ...) or a link key (campaign_member, contact_role).
    object = models.CharField(max_length=20)
    remote_id = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(help_text="The last failure: the field and the reason.")
    attempts = models.PositiveSmallIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "object", "remote_id"], name="crm_pullfailure_unique"),
        ]
        # Each pull of an object type asks for its due pending failures first.
        indexes = [models.Index(fields=["connection", "object", "status", "next_attempt_at"],
                                name="crm_pullfailure_due")]

    def __str__(self) -> str:
        return f"{self.object} {self.remote_id} ({self.status})"


class PushState(models.Model):
    """What was last pushed for a record: the remote id and the payload's
    hash, so an unchanged payload is not sent again, the properties as sent
    and when the local record was read for them (``pushed_at``), so a pull
    can tell a CRM value that is only our own push coming back from a change
    made there, and a local edit made after that read from one it carried;
    and the associations
    that push linked, so the next push can remove the ones no longer here
    (a deal moved to another company) without reading them back."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="push_states")
    object = models.CharField(max_length=20, choices=object_choices)
    local_id = models.BigIntegerField()
    remote_id = models.CharField(max_length=64, blank=True)
    payload_hash = models.CharField(max_length=64, blank=True)
    # When the local record was read for the last push (or the last pull both
    # sides agreed on): an edit after it is not in the CRM yet.
    pushed_at = models.DateTimeField(null=True, blank=True)
    # {remote field: value} as last sent (or agreed by a pull); null when not known.
    pushed_properties = models.JSONField(null=True, blank=True)
    # {object key: [remote ids]} linked by the last push (or agreed by the last
    # pull); null for a state written before this was kept: not known.
    associations = models.JSONField(null=True, blank=True)
    # Removable link records as both sides had them at the last push or link
    # pull, by link key, then the associated record's remote id:
    # {"contact_role": {"003...": {"role": "", "is_primary": true}}}. A link in
    # here and gone locally was removed here (the push deletes it in the CRM,
    # a pull does not bring it back); a CRM link not in here is one we have not
    # pulled yet and is left alone; a link whose fields here still equal these
    # was not changed here, so the push leaves the CRM's values alone.
    links = models.JSONField(default=dict, blank=True)
    # When the CRM first accepted a push carrying an owner for this record
    # (the call's answer, not the read): the "owner in the CRM" stage of the
    # speed-to-lead report. Kept through later pushes and owner changes: the
    # report measures how fast a new lead first reached a rep's CRM queue.
    owner_pushed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "object", "local_id"], name="crm_pushstate_unique"),
        ]
        # A pulled record is matched to ours by the remote id we pushed or pulled.
        indexes = [models.Index(fields=["connection", "object", "remote_id"], name="crm_pushstate_remote")]


class SyncRun(models.Model):
    class Kind(models.TextChoices):
        PUSH = "push", "Push"
        PULL = "pull", "Pull"
        WEBHOOK = "webhook", "Webhook"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    object = models.CharField(max_length=20, choices=object_choices, blank=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    pushed = models.PositiveIntegerField(default=0)
    pulled = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    api_calls = models.PositiveIntegerField(default=0)
    # Pulls: earlier failures (PullFailure) fetched and applied again, and how many of them went through.
    retried = models.PositiveIntegerField(default=0)
    recovered = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # Set on a run that did nothing because the connection was paused (a
    # limit): health leaves these out of the success rate and shows the pause.
    paused_until = models.DateTimeField(null=True, blank=True)
    # Push runs cover every object type: {object key: {"pushed": n, "failed": n}}.
    by_object = models.JSONField(default=dict, blank=True)

    @property
    def ok(self) -> bool:
        return not self.error and self.failed == 0

    def __str__(self) -> str:
        what = f"{self.get_kind_display()} {self.object}".strip()
        return f"{what} at {self.started_at:%Y-%m-%d %H:%M} ({'ok' if self.ok else 'failed'})"


class WebhookReceipt(models.Model):
    """One accepted webhook notification, deduplicated by the provider's event id."""

    provider = models.CharField(max_length=20, choices=Provider.choices)
    event_id = models.CharField(max_length=64)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="crm_webhook_event_unique")]

    def __str__(self) -> str:
        return f"{self.get_provider_display()} event {self.event_id}"


class LifecycleMapping(models.Model):
    """HubSpot lifecyclestage / Salesforce Lead Status value <-> our stage key."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="lifecycle_mappings")
    remote_value = models.CharField(max_length=100)
    stage = models.ForeignKey("martech.LifecycleStage", on_delete=models.CASCADE, related_name="+")
    push_default = models.BooleanField(default=True, help_text="Use this remote value when pushing the stage.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_value"], name="crm_lifecycle_unique")]

    def __str__(self) -> str:
        return f"{self.remote_value} <-> {self.stage}"

    def clean(self) -> None:
        if self.push_default and self.connection_id and self.stage_id:
            clash = LifecycleMapping.objects.filter(
                connection_id=self.connection_id, stage_id=self.stage_id, push_default=True
            ).exclude(pk=self.pk)
            if clash.exists():
                raise ValidationError({"push_default": "Another value is already pushed for this stage."})
        if self.connection_id:
            from martech.crm.schema import lifecycle_problem

            problem = lifecycle_problem(self)
            if problem:
                raise ValidationError({"remote_value": problem})


class RemoteSchema(models.Model):
    """The property (HubSpot) or field (Salesforce) definitions of one CRM
    object type, as the portal or org last answered: read by the connection
    check (services ``connection_check``) and again before a push when older
    than ``MARTECH_CRM_SCHEMA_MAX_AGE``; one API call per object type.
    Mapping saves and the push validate against it (martech.crm.schema), so a
    property the portal lacks, a read-only one or a picklist value it does not
    have is refused here with its name and reason instead of by the CRM per
    record. ``fields``: {name: {"label", "type", "options", "read_only",
    "calculated", "unique", "createable", "updateable", "restricted",
    "external_id"}} (martech.crm.schema.FIELD_KEYS)."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="schemas")
    # The CRM's own object name: HubSpot "contacts", "deals"; Salesforce "Lead", "Contact".
    remote_object = models.CharField(max_length=80)
    fields = models.JSONField(default=dict)
    fetched_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_object"], name="crm_schema_unique")]

    def __str__(self) -> str:
        return f"{self.connection} {self.remote_object} ({len(self.fields)} fields)"


class CrmOwner(models.Model):
    """HubSpot owner / Salesforce User, pulled; routing links reps by id/email."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="owners")
    remote_id = models.CharField(max_length=64)
    email = models.EmailField(blank=True, db_index=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="crm_owner_unique")]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name} <{self.email}>".strip()


class ListMirror(models.Model):
    """A segment mirrored to a CRM: a MANUAL (static) contact list in HubSpot,
    a Campaign's members in Salesforce (martech.crm.lists).

    The mirror is the outbox's record for object type ``list``: membership
    changes queue it, the drain sends the adds and removes since the last
    sync. ``remote_id`` is the HubSpot listId or the Salesforce Campaign Id:
    blank, the first push finds the list by name or creates it (HubSpot), or
    upserts a Campaign by ``Martech_Id__c`` = ``list:<mirror id>``
    (Salesforce); set by hand, that list or campaign is used (chosen)."""

    segment = models.ForeignKey("scoring.Segment", on_delete=models.PROTECT, related_name="crm_mirrors",
                                help_text="Its members (computed from its condition) are the list's members.")
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="list_mirrors")
    name = models.CharField(max_length=255, blank=True,
                            help_text="The list's (campaign's) name in the CRM; the segment's name when blank. "
                                      "HubSpot list names are unique per portal.")
    remote_id = models.CharField(max_length=64, blank=True,
                                 help_text="HubSpot listId or Salesforce Campaign Id; blank: found by name or "
                                           "created at the first push.")
    is_active = models.BooleanField(default=True, help_text="Off: paused, nothing is sent (changes wait).")
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Members both sides had at the last sync (ListMember rows), counted for the status.
    member_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "segment"], name="crm_listmirror_unique")]
        verbose_name = "segment mirror (CRM list)"

    def __str__(self) -> str:
        return f"{self.segment} -> {self.connection}"

    @property
    def remote_name(self) -> str:
        return self.name or (self.segment.name if self.segment_id else "")


class ListMember(models.Model):
    """One member both sides had at the last sync of a mirror: the lead, its
    CRM id as sent, and (Salesforce) the CampaignMember Id to delete it by.
    The next push sends only the difference between the segment now and
    these rows. ``lead_id`` is a plain id, not a foreign key, so a lead
    deleted here still leaves a row, and its removal is sent."""

    mirror = models.ForeignKey(ListMirror, on_delete=models.CASCADE, related_name="members")
    lead_id = models.BigIntegerField()
    remote_id = models.CharField(max_length=64)
    member_id = models.CharField(max_length=64, blank=True)
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mirror", "lead_id"], name="crm_listmember_unique")]

    def __str__(self) -> str:
        return f"lead #{self.lead_id} in {self.mirror}"
