"""What martech announces. Later stages (routing, nurture, attribution)
subscribe; martech never imports them. Every signal is sent after the
transaction that caused it commits (services use transaction.on_commit), so a
receiver never sees a change that was rolled back.
"""
from dataclasses import dataclass

from django.dispatch import Signal


@dataclass(frozen=True)
class EventsWithLead:
    """The events of one ``events_ingested`` call that were stored with a lead,
    as the sender stored them: what every receiver acts on (an event without a
    lead scores, enrolls, attributes and pushes nothing). A receiver given
    this needs no query to find out that a batch of anonymous page views
    concerns it not at all.

    An event stored without a lead gets one later only when its anonymous id
    is linked (``identity_link``), and that comes with an event of the lead
    (the identify, the form) announced in its own call."""

    event_ids: frozenset[int]
    lead_ids: frozenset[int]
    type_names: frozenset[str]
    campaign_ids: frozenset[int]


# sender=Lead, lead=Lead, source=str
lead_created = Signal()
# The bulk writes' form of lead_created (lead_upsert_many: CSV imports, CRM
# pulls), one call per batch after its commit: sender=Lead, lead_ids=list[int],
# source=str. A receiver does its per-call work once per batch (routing routes
# the batch through leads_route_batch). Bulk writes send this instead of one
# lead_created per lead; a receiver of new leads listens to both.
leads_created = Signal()
# sender=Lead, lead=Lead (kept), merged_id=int (removed), actor=User|None
lead_merged = Signal()
# sender=Lead, lead=Lead, transition=StageTransition
lead_stage_changed = Signal()
# sender=Event, event_ids=list[int] (one call per ingest batch), and from
# events_ingest with_lead=EventsWithLead; a sender may leave it out (None):
# receivers then read the events.
events_ingested = Signal()
# sender=ConsentRecord, record=ConsentRecord
consent_changed = Signal()
# Sent by attribution (a later stage may send an earlier stage's signal; the
# core never imports it): sender=Opportunity class, opportunity_id=int,
# lead_ids=list[int] (its contact roles), kind="created"|"won"|"lost".
# Lifecycle automation subscribes (opportunity created -> opportunity stage,
# closed won -> customer).
opportunity_changed = Signal()
# sender=SalesTask, task=SalesTask, source=str (a follow-up was done: routing's first touch)
task_completed = Signal()
# Sent by martech.scoring after commit: sender=Lead, lead_id, old_total, new_total.
# For the incremental path (an event or a field change: a few leads).
score_changed = Signal()
# Sent by martech.scoring after commit of each chunk of a bulk recompute
# (recompute_scores, the nightly decay): sender=Lead, changes=list of
# (lead_id, old_total, new_total). One call per chunk instead of one per lead,
# so that a receiver can do its per-call work (reading its rules) once per
# chunk. A receiver of score moves listens to both signals.
scores_changed = Signal()
