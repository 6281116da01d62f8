"""A person's own choices: consent per channel and per topic, as the
preference page (reached from the link in every email) changes them, and
double opt-in (a form's email consent that counts only after the person
clicks the link in a confirmation email).

Every change is an appended ConsentRecord with its evidence (where, when, the
request's IP and user agent); a choice that is already the lead's current
one writes nothing, so submitting the page twice records nothing twice.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from martech.models import ConsentChannel, ConsentConfirmation, ConsentRecord, Form, Lead, SubscriptionType
from martech.selectors import lead_consent_state, lead_topic_state
from martech.services.leads import consent_record


@transaction.atomic
def preferences_update(
    *,
    lead: Lead,
    channels: Mapping[str, bool],
    topics: Mapping[str, bool],
    source: str,
    evidence: Mapping[str, Any],
) -> list[ConsentRecord]:
    """Apply the person's choices: ``channels`` {channel: wants it},
    ``topics`` {topic key: wants it} (active topics only). Only changes are
    recorded: a channel ticked that is not granted is granted, one unticked
    that is granted is withdrawn (unticked and never given stays never
    given); a topic unticked is left, a topic ticked that was left is
    rejoined. Raises ValidationError naming the unknown channel or topic.
    Returns the records written."""
    unknown = sorted(set(channels) - set(ConsentChannel.values))
    if unknown:
        raise ValidationError({"channels": [f"Unknown channel(s): {', '.join(unknown)}."]})
    by_key = {t.key: t for t in SubscriptionType.objects.filter(key__in=list(topics), is_active=True)}
    unknown = sorted(set(topics) - set(by_key))
    if unknown:
        raise ValidationError({"topics": [f"Unknown topic(s): {', '.join(unknown)}."]})
    # The lead's row lock first (the one lock order), then the state read
    # under it: two submissions of the page serialize, the second sees the
    # first's records and writes nothing.
    Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
    written: list[ConsentRecord] = []
    current = lead_consent_state(lead=lead)
    for channel, wanted in channels.items():
        granted = current.get(channel) == ConsentRecord.Status.GRANTED
        if wanted != granted and (wanted or current.get(channel) is not None):
            written.append(consent_record(lead=lead, channel=channel, granted=wanted, source=source,
                                          evidence={**evidence, "choice": f"{channel} {'on' if wanted else 'off'}"}))
    left = lead_topic_state(lead=lead)
    for key, wanted in topics.items():
        topic = by_key[key]
        subscribed = left.get(topic.pk) != ConsentRecord.Status.WITHDRAWN
        if wanted != subscribed:
            written.append(consent_record(lead=lead, channel=topic.channel, topic=topic, granted=wanted, source=source,
                                          evidence={**evidence, "choice": f"topic {topic.name} {'on' if wanted else 'off'}"}))
    return written



# --- double opt-in ----------------------------------------------------------------
CONFIRM_SALT = "martech.consent.confirm"


def confirm_token(confirmation: ConsentConfirmation) -> str:
    """The signed link's token: names the request and nothing else, and
    expires (consent_confirm checks the age)."""
    return signing.dumps({"c": confirmation.pk}, salt=CONFIRM_SALT)


def confirm_url(confirmation: ConsentConfirmation) -> str:
    base = settings.MARTECH_CONSENT["PUBLIC_BASE_URL"].rstrip("/")
    return base + reverse("consent-confirm", args=[confirm_token(confirmation)])


def consent_confirmation_request(
    *, lead: Lead, channel: str, form: Form | None, evidence: Mapping[str, Any], now: datetime | None = None
) -> ConsentConfirmation | None:
    """A double opt-in form's consent: a pending request and, after the
    commit, a confirmation email (``consent_confirmations_send``). It grants
    nothing. Runs in the submission's transaction, under the lead's row lock.

    Anyone can post a form naming any address, so: a lead whose consent on
    the channel is already granted gets nothing (a post never turns consent
    back into "pending"), and while a request is pending a new one is made
    at most every CONFIRM_RESEND_MINUTES (the address is mailed once, not
    once per post). The caller answers the same in every case."""
    now = now or timezone.now()
    cfg = settings.MARTECH_CONSENT
    Lead.objects.select_for_update().filter(pk=lead.pk).values_list("pk").first()
    if lead_consent_state(lead=lead).get(channel) == ConsentRecord.Status.GRANTED:
        return None
    recent = ConsentConfirmation.objects.filter(
        lead=lead, channel=channel, status=ConsentConfirmation.Status.PENDING,
        requested_at__gt=now - timedelta(minutes=cfg["CONFIRM_RESEND_MINUTES"]),
    )
    if recent.exists():
        return None
    confirmation = ConsentConfirmation.objects.create(
        lead=lead, channel=channel, form=form, evidence=dict(evidence), requested_at=now,
        expires_at=now + timedelta(days=cfg["CONFIRM_DAYS"]),
    )
    transaction.on_commit(lambda: _enqueue_send([confirmation.pk]))
    return confirmation


def _enqueue_send(ids: list[int]) -> None:
    from django_q.tasks import async_task

    async_task("martech.tasks.consent_confirmations_send", ids, task_name="consent: confirmation emails")


def consent_confirmations_send(*, ids: list[int] | None = None, limit: int = 200) -> int:
    """Mail the confirmation of each pending request not mailed yet (those
    of ``ids``, or the oldest ``limit``: the schedule's sweep after a lost
    wake-up). Each is sent under its row lock and marked in the same
    transaction, so two workers never both mail one; a crash after the
    send and before the commit mails it again (a repeat confirmation email
    is harmless, a lost one is not). Returns the number sent."""
    now = timezone.now()
    qs = ConsentConfirmation.objects.filter(status=ConsentConfirmation.Status.PENDING, sent_at__isnull=True,
                                            expires_at__gt=now)
    if ids is not None:
        qs = qs.filter(pk__in=list(ids))
    sent = 0
    for pk in list(qs.order_by("pk").values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            # Only this row (not the lead or form joined to it); another worker's row is skipped, not waited on.
            skip = connection.features.has_select_for_update_skip_locked
            locked = ConsentConfirmation.objects.select_for_update(skip_locked=skip, of=("self",))
            confirmation = (locked.filter(pk=pk, sent_at__isnull=True, status=ConsentConfirmation.Status.PENDING)
                            .select_related("lead", "form").first())
            if confirmation is None:
                continue  # another worker has it, or it was mailed meanwhile
            if not confirmation.lead.email:
                # Nowhere to send it (the email was removed since): it can never be
                # confirmed, and must not hold a place in every later sweep.
                ConsentConfirmation.objects.filter(pk=pk).update(status=ConsentConfirmation.Status.EXPIRED)
                continue
            _confirmation_mail(confirmation).send()
            ConsentConfirmation.objects.filter(pk=pk).update(sent_at=timezone.now())
            sent += 1
    return sent


def _confirmation_mail(confirmation: ConsentConfirmation) -> EmailMultiAlternatives:
    url = confirm_url(confirmation)
    days = settings.MARTECH_CONSENT["CONFIRM_DAYS"]
    what = confirmation.form.name if confirmation.form_id else "our emails"
    text = (f"Please confirm that you want to receive email from us ({what}).\n\n"
            f"Confirm: {url}\n\nThe link works for {days} days. If you did not ask for this, ignore this email: "
            f"you will not be subscribed.\n")
    html = (f"<p>Please confirm that you want to receive email from us ({escape(what)}).</p>"
            f'<p><a href="{escape(url)}">Confirm my subscription</a></p>'
            f"<p>The link works for {days} days. If you did not ask for this, ignore this email: "
            f"you will not be subscribed.</p>")
    mail = EmailMultiAlternatives(subject=settings.MARTECH_CONSENT["CONFIRM_SUBJECT"], body=text,
                                  to=[confirmation.lead.email],
                                  headers={"X-Consent-Confirmation": str(confirmation.pk)})
    mail.attach_alternative(html, "text/html")
    return mail


class ConfirmationLinkError(Exception):
    """The link is forged, edited (``expired`` False) or too old (``expired`` True)."""

    def __init__(self, expired: bool):
        super().__init__("expired" if expired else "bad signature")
        self.expired = expired


def confirmation_from_token(token: str) -> ConsentConfirmation:
    """The request a confirmation link names; raises ConfirmationLinkError."""
    try:
        data = signing.loads(token, salt=CONFIRM_SALT,
                             max_age=timedelta(days=settings.MARTECH_CONSENT["CONFIRM_DAYS"]))
    except signing.SignatureExpired:
        raise ConfirmationLinkError(expired=True) from None
    except signing.BadSignature:
        raise ConfirmationLinkError(expired=False) from None
    confirmation = ConsentConfirmation.objects.select_related("lead").filter(pk=data.get("c")).first()
    if confirmation is None:
        raise ConfirmationLinkError(expired=False)
    return confirmation


@transaction.atomic
def consent_confirm(*, confirmation: ConsentConfirmation, ip: str | None, user_agent: str,
                    now: datetime | None = None) -> ConsentRecord | None:
    """The person clicked the link: the granted ConsentRecord, with the
    submission's evidence and the click's (ip, user agent, time). Once only:
    a second click returns the first's record and writes nothing; an expired
    request grants nothing (None)."""
    now = now or timezone.now()
    Lead.objects.select_for_update().filter(pk=confirmation.lead_id).values_list("pk").first()
    current = ConsentConfirmation.objects.select_for_update(of=("self",)).select_related("record", "form").get(
        pk=confirmation.pk)
    if current.status == ConsentConfirmation.Status.CONFIRMED:
        return current.record
    if current.status != ConsentConfirmation.Status.PENDING or current.expires_at <= now:
        ConsentConfirmation.objects.filter(pk=current.pk, status=ConsentConfirmation.Status.PENDING).update(
            status=ConsentConfirmation.Status.EXPIRED)
        return None
    source = f"form:{current.form.key}" if current.form_id else "double-opt-in"
    record = consent_record(
        lead=current.lead, channel=current.channel, granted=True, source=source, at=now,
        evidence={**current.evidence, "double_opt_in": {
            "confirmation": current.pk, "requested_at": current.requested_at.isoformat(),
            "confirmed_at": now.isoformat(), "ip": ip, "user_agent": user_agent[:500]}},
    )
    ConsentConfirmation.objects.filter(pk=current.pk).update(
        status=ConsentConfirmation.Status.CONFIRMED, confirmed_at=now, record=record)
    return record


def consent_confirmations_expire(*, now: datetime | None = None) -> int:
    """Mark pending requests past their expiry ``expired`` (one UPDATE).
    Journeys waiting for a confirmation then stop waiting."""
    now = now or timezone.now()
    return ConsentConfirmation.objects.filter(status=ConsentConfirmation.Status.PENDING, expires_at__lte=now).update(
        status=ConsentConfirmation.Status.EXPIRED)
