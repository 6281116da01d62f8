"""Where a person's data is: every app's rows about one subject.

A subject is named by an email, a lead or a CRM id; ``subject_find``
gathers what identifies them (the lead, its emails, CRM ids, anonymous and
user ids, tasks) and ``sections`` gives one queryset per model that holds
something about them. Export reads these querysets, erasure deletes or
anonymizes them, and tests/privacy checks that every model with a path to a
lead, or a text column, is here. Later stages' models are looked up by
name (``apps.get_model``), as the CRM registry does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from operator import or_

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from martech.models import Identity, Lead
from martech.services.leads import CRM_KEYS
from martech.services.normalize import normalize_email


@dataclass
class Subject:
    # How the request named the person ("email", "lead", "crm_id") and the value, for the request's hash.
    named_by: str
    named: str
    lead_ids: list[int] = field(default_factory=list)
    emails: set[str] = field(default_factory=set)
    # Lead column -> value (hubspot_id, salesforce_lead_id, salesforce_contact_id).
    crm_ids: dict[str, set[str]] = field(default_factory=dict)
    anonymous_ids: set[str] = field(default_factory=set)
    user_ids: set[str] = field(default_factory=set)
    task_ids: list[int] = field(default_factory=list)

    @property
    def all_crm_ids(self) -> set[str]:
        return {v for values in self.crm_ids.values() for v in values}

    def needles(self) -> list[str]:
        """Strings whose presence in free text (a raw payload) marks a row as the person's."""
        return sorted({*self.emails, *self.anonymous_ids, *self.user_ids, *self.all_crm_ids} - {""})

    def tombstone_keys(self) -> list[tuple[str, str]]:
        keys = [("email", e) for e in self.emails]
        keys += [(column, v) for column, values in self.crm_ids.items() for v in values]
        keys += [("anonymous", a) for a in self.anonymous_ids] + [("user", u) for u in self.user_ids]
        return keys


def subject_find(*, email: str = "", lead_id: int | None = None, crm_id: str = "", lock: bool = False) -> Subject:
    """The subject named by one of ``email``, ``lead_id`` or ``crm_id``.
    An email that no lead holds is still a subject (a suppression, a
    quarantined event may hold it); a lead id or CRM id must find a lead.
    ``lock`` takes the lead's row lock (lead first: the one lock order)."""
    given = [name for name, value in (("email", email), ("lead", lead_id), ("crm_id", crm_id)) if value]
    if len(given) != 1:
        raise ValidationError({"subject": ["Give exactly one of email, lead or crm_id."]})
    qs = Lead.objects.select_for_update() if lock else Lead.objects.all()
    if email:
        try:
            email = normalize_email(email) or ""
        except ValidationError:
            raise ValidationError({"email": ["Enter a valid email address."]}) from None
        subject = Subject("email", email, emails={email})
        lead = qs.filter(email=email).first()
    elif lead_id:
        subject = Subject("lead", str(lead_id))
        lead = qs.filter(pk=lead_id).first()
        if lead is None:
            raise ValidationError({"lead": [f"No lead #{lead_id}."]})
    else:
        crm_id = str(crm_id).strip()
        subject = Subject("crm_id", crm_id)
        lead = qs.filter(reduce(or_, (Q(**{k: crm_id}) for k in CRM_KEYS))).first()
        if lead is None:
            raise ValidationError({"crm_id": ["No lead has this CRM id."]})
    if lead is not None:
        subject.lead_ids = [lead.pk]
        if lead.email:
            subject.emails.add(lead.email)
        for key in CRM_KEYS:
            if getattr(lead, key):
                subject.crm_ids.setdefault(key, set()).add(getattr(lead, key))
        for kind, value in Identity.objects.filter(lead=lead).values_list("kind", "value"):
            (subject.anonymous_ids if kind == Identity.Kind.ANONYMOUS else subject.user_ids).add(value)
        # What the CRM sync knows the person by (a pushed contact's id may not be on the lead yet).
        for provider, remote_id in (apps.get_model("crm", "PushState").objects
                                    .filter(object="contact", local_id=lead.pk).exclude(remote_id="")
                                    .values_list("connection__provider", "remote_id")):
            column = "hubspot_id" if provider == "hubspot" else \
                "salesforce_contact_id" if remote_id.startswith("003") else "salesforce_lead_id"
            subject.crm_ids.setdefault(column, set()).add(remote_id)
        subject.task_ids = list(apps.get_model("martech", "SalesTask").objects.filter(lead=lead)
                                .values_list("pk", flat=True))
    return subject


def _text_match(model, column: str, needles: list[str]) -> QuerySet:
    """Rows whose ``column`` (text or JSON, read as text) contains any needle."""
    if not needles:
        return model.objects.none()
    cast = f"_{column}_text"
    return (model.objects.annotate(**{cast: Cast(column, TextField())})
            .filter(reduce(or_, (Q(**{f"{cast}__icontains": n}) for n in needles))))


def _lead_q(column: str, ids: list[int]) -> Q:
    return Q(**{f"{column}__in": ids}) if ids else Q(pk__in=[])


def sections(subject: Subject) -> list[tuple[str, QuerySet]]:
    """(model label, queryset of the subject's rows) for every model that
    holds something about them, in the order an export lists them and an
    erasure removes them (rows that point at others first)."""
    M = apps.get_model
    leads, tasks = subject.lead_ids, subject.task_ids
    crm_rows = Q(object="contact", local_id__in=leads) | Q(object="task", local_id__in=tasks) \
        if leads else Q(pk__in=[])
    log_entry = M("admin", "LogEntry")
    person_types = [ContentType.objects.get_for_model(M(*label.split("."))) for label in
                    ("martech.Lead", "martech.SalesTask")]
    log_q = Q(pk__in=[])
    if leads:
        log_q |= Q(content_type=person_types[0], object_id__in=[str(i) for i in leads])
    if tasks:
        log_q |= Q(content_type=person_types[1], object_id__in=[str(i) for i in tasks])
    needles = subject.needles()
    if needles:
        log_q |= reduce(or_, (Q(object_repr__icontains=n) | Q(change_message__icontains=n) for n in needles))
    events = _lead_q("lead_id", leads)
    touches = _lead_q("lead_id", leads)
    if subject.anonymous_ids:
        events |= Q(anonymous_id__in=sorted(subject.anonymous_ids))
        touches |= Q(event__anonymous_id__in=sorted(subject.anonymous_ids))
    return [
        # martech
        ("martech.Lead", Lead.objects.filter(pk__in=leads)),
        ("martech.Identity", Identity.objects.filter(_lead_q("lead_id", leads))),
        ("martech.Event", M("martech", "Event").objects.filter(events)),
        # Double opt-in requests (evidence: IP, user agent) point at the consent they made: first.
        ("martech.ConsentConfirmation",
         M("martech", "ConsentConfirmation").objects.filter(_lead_q("lead_id", leads))),
        ("martech.ConsentRecord", M("martech", "ConsentRecord").objects.filter(_lead_q("lead_id", leads))),
        ("martech.StageTransition", M("martech", "StageTransition").objects.filter(_lead_q("lead_id", leads))),
        ("martech.SalesTask", M("martech", "SalesTask").objects.filter(pk__in=tasks)),
        ("martech.QuarantinedEvent", _text_match(M("martech", "QuarantinedEvent"), "payload", needles)),
        # scoring
        ("scoring.ScoreHistory", M("scoring", "ScoreHistory").objects.filter(_lead_q("lead_id", leads))),
        ("scoring.Handoff", M("scoring", "Handoff").objects.filter(_lead_q("lead_id", leads))),
        ("scoring.StaleFlag", M("scoring", "StaleFlag").objects.filter(_lead_q("lead_id", leads))),
        # routing: assignments with the decision each records (explanation), and their escalations
        ("routing.Assignment", M("routing", "Assignment").objects.filter(_lead_q("lead_id", leads))),
        ("routing.Escalation", M("routing", "Escalation").objects.filter(_lead_q("assignment__lead_id", leads))),
        # nurture
        ("nurture.Enrollment", M("nurture", "Enrollment").objects.filter(_lead_q("lead_id", leads))),
        ("nurture.StepExecution", M("nurture", "StepExecution").objects.filter(_lead_q("enrollment__lead_id", leads))),
        ("nurture.Message", M("nurture", "Message").objects.filter(_lead_q("lead_id", leads))),
        ("nurture.Suppression", M("nurture", "Suppression").objects.filter(address__in=sorted(subject.emails))),
        ("nurture.AudienceMember", M("nurture", "AudienceMember").objects.filter(_lead_q("lead_id", leads))),
        ("nurture.SegmentMember", M("nurture", "SegmentMember").objects.filter(_lead_q("lead_id", leads))),
        # attribution
        ("attribution.OpportunityContactRole",
         M("attribution", "OpportunityContactRole").objects.filter(_lead_q("lead_id", leads))),
        # Touches of the person's lead, and of any event under their anonymous ids.
        ("attribution.Touchpoint", M("attribution", "Touchpoint").objects.filter(touches)),
        ("attribution.AttributionCredit", M("attribution", "AttributionCredit").objects.filter(
            touchpoint__in=M("attribution", "Touchpoint").objects.filter(touches).values("pk"))),
        # CRM sync
        ("crm.OutboxItem", M("crm", "OutboxItem").objects.filter(crm_rows)),
        ("crm.PushState", M("crm", "PushState").objects.filter(crm_rows)),
        ("crm.PullFailure", M("crm", "PullFailure").objects.filter(remote_id__in=sorted(subject.all_crm_ids))),
        ("crm.ListMember", M("crm", "ListMember").objects.filter(_lead_q("lead_id", leads))),
        ("crm.WebhookReceipt", _text_match(M("crm", "WebhookReceipt"), "payload", needles)),
        # the admin's change log
        ("admin.LogEntry", log_entry.objects.filter(log_q)),
    ]
