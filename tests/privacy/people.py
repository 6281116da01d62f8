"""A person with data in every app, for the privacy tests and the bench."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from attribution.models import AttributionCredit, Opportunity, OpportunityContactRole, Touchpoint
from attribution.services import default_pipeline
from martech.crm.models import Connection, ListMember, ListMirror, OutboxItem, PullFailure, PushState, WebhookReceipt
from martech.models import (
    ConsentConfirmation,
    ConsentRecord,
    Event,
    EventType,
    Identity,
    Lead,
    LifecycleStage,
    QuarantinedEvent,
    SalesTask,
    StageTransition,
)
from martech.scoring.models import Handoff, ScoreHistory, Segment, StaleFlag
from nurture.models import (
    AudienceMember,
    Enrollment,
    Message,
    SegmentMember,
    StepExecution,
    Suppression,
    Workflow,
    WorkflowVersion,
)
from routing.models import Assignment, Escalation, Rep, Team


@dataclass
class Person:
    lead: Lead
    email: str
    first: str
    last: str
    anonymous_id: str
    user_id: str
    hubspot_id: str

    @property
    def needles(self) -> list[str]:
        """What must be nowhere after the erasure."""
        return [self.email, self.first, self.last, self.anonymous_id, self.user_id]


def make_person(*, tag: str = "zq", events: int = 3, messages: int = 1, connection: Connection | None = None,
                user=None) -> Person:
    """``tag`` makes every identifying string unique to this person."""
    email, first, last = f"{tag}.quixotic@example.org", f"Zebulon{tag}", f"Quixotic{tag}"
    anon, user_id = f"anon-{tag}-7731", f"user-{tag}-42"
    hubspot_id = f"9{sum(ord(c) * 31 ** i for i, c in enumerate(tag)) % 10**8}"
    now = timezone.now()
    stage = LifecycleStage.objects.order_by("order").first()
    lead = Lead.objects.create(email=email, first_name=first, last_name=last, hubspot_id=hubspot_id,
                               lifecycle_stage=stage, properties={"nickname": f"Zeb {last}"})
    Identity.objects.create(kind=Identity.Kind.ANONYMOUS, value=anon, lead=lead)
    Identity.objects.create(kind=Identity.Kind.USER, value=user_id, lead=lead)
    page_view = EventType.objects.get(name="page_view")
    form_type = EventType.objects.get(name="form_submitted")
    rows = [Event(client_event_id=f"{tag}-e{i}", event_type=page_view, lead=lead, anonymous_id=anon,
                  properties={"url": f"https://example.org/p{i}", "title": f"Hello {first}"},
                  context={"ip": "203.0.113.9"}, occurred_at=now - dt.timedelta(minutes=i), channel="paid_search",
                  utm_source="google", utm_medium="cpc")
            for i in range(events)]
    Event.objects.bulk_create(rows, batch_size=2000)
    first_event = Event.objects.filter(lead=lead).order_by("id").first()
    # A form submission and an anonymous page view before the person was known (same anonymous id).
    Event.objects.create(client_event_id=f"{tag}-form", kind=Event.Kind.FORM, event_type=form_type, lead=lead,
                         anonymous_id=anon, properties={"form": "demo", "not_applied": {"first_name": first}},
                         occurred_at=now)
    Event.objects.create(client_event_id=f"{tag}-anon", event_type=page_view, lead=None, anonymous_id=anon,
                         properties={"url": "https://example.org/"}, occurred_at=now)
    granted = ConsentRecord.objects.create(lead=lead, channel="email", status="granted", source="form:demo",
                                           evidence={"ip": "203.0.113.9", "text": "Yes", "email": email})
    # A double opt-in request, confirmed: its evidence holds the person's IP and address.
    ConsentConfirmation.objects.create(lead=lead, status="confirmed", evidence={"ip": "203.0.113.9", "email": email},
                                       expires_at=now, confirmed_at=now, record=granted)
    transition = StageTransition.objects.create(lead=lead, to_stage=stage, reason="created", source="form:demo")
    task = SalesTask.objects.create(key=f"task:{tag}", lead=lead, subject=f"Call {first} {last}",
                                    description=f"Ask {first} about pricing")
    QuarantinedEvent.objects.create(client_event_id=f"{tag}-q", reason="unknown event type",
                                    payload={"type": "track", "anonymousId": anon, "traits": {"email": email}})
    ScoreHistory.objects.create(lead=lead, fit_score=10, engagement_score=5, total_score=15, old_total=0,
                                reason="event", breakdown=[{"kind": "fit", "rule": "VP", "points": 10}])
    Handoff.objects.create(transition=transition, lead=lead, started_at=now, last_error=f"mail to {email} failed")
    StaleFlag.objects.create(lead=lead)
    team, _ = Team.objects.get_or_create(name="Privacy test team")
    rep, _ = Rep.objects.get_or_create(email="rep.privacy@example.com", defaults={"name": "Rep", "team": team})
    assignment = Assignment.objects.create(lead=lead, status="assigned", trigger="new_lead", rep=rep, team=team,
                                           explanation={"matched": f"email ends with example.org ({email})"})
    Escalation.objects.create(assignment=assignment, level=1, detail={"lead": first})
    workflow, _ = Workflow.objects.get_or_create(name="Privacy test journey")
    version, _ = WorkflowVersion.objects.get_or_create(workflow=workflow, number=1, defaults={"definition": {}})
    enrollment = Enrollment.objects.create(workflow=workflow, version=version, lead=lead,
                                           state={"first_name": first})
    execution = StepExecution.objects.create(enrollment=enrollment, workflow=workflow, step="welcome",
                                             step_type="email", key=f"exec:{tag}", outcome="sent",
                                             detail={"to": email})
    Message.objects.bulk_create([
        Message(key=f"msg:{tag}:{i}", execution=execution, enrollment=enrollment, lead=lead, workflow=workflow,
                step="welcome", channel="email", to=email, subject=f"Welcome {first}",
                body=f"Dear {first} {last}, ...") for i in range(messages)], batch_size=2000)
    Suppression.objects.create(address=email, reason="unsubscribe", detail="one-click")
    AudienceMember.objects.create(audience="retargeting", lead=lead)
    segment, _ = Segment.objects.get_or_create(name="Privacy test segment", defaults={"condition": "score >= 0"})
    SegmentMember.objects.create(workflow=workflow, segment=segment, lead=lead)
    pipeline = default_pipeline()
    opportunity = Opportunity.objects.create(name=f"Deal {tag}", pipeline=pipeline, stage=pipeline.stages.first(),
                                             amount=Decimal("1000.00"))
    OpportunityContactRole.objects.create(opportunity=opportunity, lead=lead, role="Decision maker")
    touch = Touchpoint.objects.create(lead=lead, event=first_event, occurred_at=first_event.occurred_at,
                                      channel="paid_search")
    AttributionCredit.objects.create(model="linear", opportunity=opportunity, touchpoint=touch, channel="paid_search",
                                     weight=1.0, credit=Decimal("1000.00"), currency="USD", is_won=True,
                                     is_closed=True, opportunity_created_at=now, opportunity_closed_at=now)
    connection = connection or Connection.objects.get_or_create(provider="hubspot", defaults={"name": "HubSpot"})[0]
    OutboxItem.objects.create(connection=connection, object="contact", local_id=lead.pk)
    OutboxItem.objects.create(connection=connection, object="task", local_id=task.pk)
    PushState.objects.create(connection=connection, object="contact", local_id=lead.pk, remote_id=hubspot_id,
                             pushed_properties={"email": email, "firstname": first})
    PullFailure.objects.create(connection=connection, object="contact", remote_id=hubspot_id,
                               error="lifecyclestage: unknown value")
    mirror, _ = ListMirror.objects.get_or_create(segment=segment, connection=connection)
    ListMember.objects.create(mirror=mirror, lead_id=lead.pk, remote_id=hubspot_id)
    WebhookReceipt.objects.create(provider="hubspot", event_id=f"wh-{tag}",
                                  payload=[{"objectId": hubspot_id, "propertyName": "email", "propertyValue": email}])
    if user is not None:
        LogEntry.objects.create(user=user, content_type=ContentType.objects.get_for_model(Lead),
                                object_id=str(lead.pk), object_repr=str(lead), action_flag=CHANGE,
                                change_message=f"Changed first name to {first}")
    return Person(lead=lead, email=email, first=first, last=last, anonymous_id=anon, user_id=user_id,
                  hubspot_id=hubspot_id)
