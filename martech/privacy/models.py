"""Subject access exports and erasures (GDPR articles 15, 17 and 20).

Nothing here holds the person's data: a request names its subject by a
salted hash, its receipt holds counts per kind of record, and a tombstone
is the salted hash of an email or id that must not come back. Written only
through ``martech.privacy.services``.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class PrivacyRequest(models.Model):
    """One export or erasure: who asked for it, when, about whom (a salted
    hash, never the address) and, for an erasure, the receipt."""

    class Kind(models.TextChoices):
        EXPORT = "export", "Subject access export"
        ERASURE = "erasure", "Erasure"

    kind = models.CharField(max_length=10, choices=Kind.choices, db_index=True)
    # How the subject was named (email, lead, CRM id) and its salted hash: the
    # same person asked for twice gives the same hash, so requests can be
    # matched without keeping who they were about.
    subject_kind = models.CharField(max_length=20)
    subject_hash = models.CharField(max_length=64, db_index=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    # "admin", "command", "api:<client>" ...
    source = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Records found (export) or erased (erasure), by model label: {"martech.Event": 10000, ...}.
    counts = models.JSONField(default=dict, blank=True)
    # Erasure: CRM deletes asked for through the outbox, by provider: {"hubspot": 1}.
    crm_deletes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "privacy request"
        # Beyond viewing the list: who may act (the Privacy role, superusers).
        permissions = [("export_subject", "Can export everything held about a person"),
                       ("erase_subject", "Can erase a person from every app")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} at {self.created_at:%Y-%m-%d %H:%M} UTC"

    @property
    def total(self) -> int:
        return sum(int(v) for v in (self.counts or {}).values())


class Tombstone(models.Model):
    """The salted hash (``tombstones.digest``) of an email, CRM id or
    analytics id of an erased person: imports, CRM pulls, webhooks, forms
    and the tracker refuse or suppress input that carries it."""

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        HUBSPOT = "hubspot_id", "HubSpot id"
        SALESFORCE_LEAD = "salesforce_lead_id", "Salesforce Lead id"
        SALESFORCE_CONTACT = "salesforce_contact_id", "Salesforce Contact id"
        ANONYMOUS = "anonymous", "Anonymous id"
        USER = "user", "External user id"

    digest = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    request = models.ForeignKey(PrivacyRequest, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="tombstones")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.digest[:12]}…"


class CrmDeletion(models.Model):
    """An erasure's request that a CRM delete its copy of the person (HubSpot
    GDPR delete, Salesforce Lead/Contact delete), pushed by the CRM outbox
    (object type "erasure"). The remote id is blanked once the CRM answered."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Deleted in the CRM"
        GONE = "gone", "Not in the CRM any more"

    request = models.ForeignKey(PrivacyRequest, on_delete=models.CASCADE, related_name="crm_deletions")
    connection = models.ForeignKey("crm.Connection", on_delete=models.CASCADE, related_name="+")
    remote_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "CRM deletion"

    def __str__(self) -> str:
        return f"{self.connection} deletion for request #{self.request_id} ({self.get_status_display().lower()})"
