"""An edit made while its record is being pushed is neither lost here nor in
the CRM: at every point of the drain (after the claim, after the record was
read, while the HTTP call is out, after it answered, before the drain
settles), then across random interleavings of edits, drains and pulls."""
from __future__ import annotations

import itertools

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from martech.crm import objects, services
from martech.crm.connectors import connector_for
from martech.crm.models import Connection, OutboxItem, PushState
from martech.crm.services import outbox_drain, pull_changes, push as push_module
from martech.models import Lead
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db

POINTS = ["claimed", "read", "sending", "sent", "settling"]
_emails = itertools.count()


def _edit(lead_id: int, value: str) -> None:
    lead_upsert(data={"first_name": value}, source="api:test", overwrite=True, lead=Lead(pk=lead_id))


class EditDuringDrain:
    """Edits ``lead_id`` once, at ``point`` of the next drain of ``connector``."""

    def __init__(self, monkeypatch, connector, lead_id: int):
        self.lead_id, self.value, self.point = lead_id, None, None
        hook = self._fire
        claim, payload, settle = services._claim, services.PayloadBuilder.payload, services._settle
        push = connector.push_batch

        def claimed(*args, **kwargs):
            items = claim(*args, **kwargs)
            if items:
                hook("claimed")
            return items

        def read(builder, instance):
            out = payload(builder, instance)
            hook("read")
            return out

        def sending(obj, records):
            hook("sending")
            out = push(obj, records)
            hook("sent")
            return out

        def settling(*args, **kwargs):
            hook("settling")
            return settle(*args, **kwargs)

        monkeypatch.setattr(push_module, "_claim", claimed)
        monkeypatch.setattr(services.PayloadBuilder, "payload", read)
        monkeypatch.setattr(connector, "push_batch", sending)
        monkeypatch.setattr(push_module, "_settle", settling)

    def arm(self, point: str, value: str) -> None:
        self.point, self.value = point, value

    def _fire(self, point: str) -> None:
        if point == self.point:
            self.point = None
            _edit(self.lead_id, self.value)


def _crm_first_name(hubspot, email: str) -> str:
    return hubspot.contacts[hubspot.by_email[email]]["properties"].get("firstname")


@pytest.fixture
def pushed_lead(connection, hubspot):
    email = f"race{next(_emails)}@example.org"
    lead, _ = lead_upsert(data={"email": email, "first_name": "First", "last_name": "Lee"}, source="test")
    assert outbox_drain(connection=connection).pushed == 1
    return lead


@pytest.mark.parametrize("rule", [Connection.ConflictRule.SYSTEM_OF_RECORD, Connection.ConflictRule.MOST_RECENT])
@pytest.mark.parametrize("point", POINTS)
def test_edit_during_push_reaches_the_crm_and_survives_the_pull(connection, hubspot, pushed_lead, monkeypatch,
                                                                point, rule):
    Connection.objects.filter(pk=connection.pk).update(conflict_rule=rule)
    connection.refresh_from_db()
    connector = connector_for(connection)
    hook = EditDuringDrain(monkeypatch, connector, pushed_lead.pk)
    _edit(pushed_lead.pk, "Before")
    hook.arm(point, "During")

    run = outbox_drain(connection=connection, connector=connector)
    assert hook.point is None, "the edit was made"
    assert run.pushed == 1
    # The drain sent what it read; the edit is still queued, not marked sent.
    item = OutboxItem.objects.get(local_id=pushed_lead.pk, status="pending")
    assert item.version > 1

    # A pull now reads the CRM's copy (our push, older than the edit): it must not write it back over the edit.
    pull_changes(connection=connection, connector=connector)
    assert Lead.objects.get(pk=pushed_lead.pk).first_name == "During"

    # Read after the edit, the first push already carried it: the second finds the CRM up to date.
    assert outbox_drain(connection=connection, connector=connector).pushed == (0 if point == "claimed" else 1)
    pull_changes(connection=connection, connector=connector)
    assert Lead.objects.get(pk=pushed_lead.pk).first_name == "During"
    assert _crm_first_name(hubspot, pushed_lead.email) == "During"
    assert not OutboxItem.objects.filter(status="pending").exists()
    state = PushState.objects.get(connection=connection, local_id=pushed_lead.pk)
    assert state.pushed_properties["firstname"] == "During"


def test_push_state_records_what_was_sent_and_when_it_was_read(connection, hubspot, pushed_lead, monkeypatch):
    connector = connector_for(connection)
    hook = EditDuringDrain(monkeypatch, connector, pushed_lead.pk)
    _edit(pushed_lead.pk, "Sent")
    hook.arm("sending", "Later")
    outbox_drain(connection=connection, connector=connector)
    state = PushState.objects.get(connection=connection, local_id=pushed_lead.pk)
    lead = Lead.objects.get(pk=pushed_lead.pk)
    # What went out, stamped before the edit that missed it.
    assert state.pushed_properties["firstname"] == "Sent"
    assert state.pushed_at < lead.updated_at
    assert state.payload_hash == services.record_hash(state.pushed_properties, {})


def test_an_unchanged_record_is_not_sent_again(connection, hubspot, pushed_lead):
    _edit(pushed_lead.pk, "Other")
    _edit(pushed_lead.pk, "First")  # back to what the CRM has
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.skipped, run.api_calls) == (0, 1, 0)


def test_a_change_made_in_the_crm_is_still_pulled(connection, hubspot, pushed_lead):
    contact = hubspot.contacts[hubspot.by_email[pushed_lead.email]]
    hubspot.put_contact({**contact["properties"], "firstname": "FromCrm"})
    pull_changes(connection=connection)
    assert Lead.objects.get(pk=pushed_lead.pk).first_name == "FromCrm"
    # Both sides agree now: nothing to push back.
    assert outbox_drain(connection=connection).pushed == 0


def test_enqueue_bumps_the_pending_rows_version(connection):
    lead, _ = lead_upsert(data={"email": "v@example.org", "first_name": "A"}, source="test")
    item = OutboxItem.objects.get(local_id=lead.pk)
    first = item.version  # the create and its default stage each queued it
    _edit(lead.pk, "B")
    _edit(lead.pk, "C")
    item.refresh_from_db()
    assert (item.version, OutboxItem.objects.count()) == (first + 2, 1)


def test_the_lease_comes_from_the_setting(connection, hubspot, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "OUTBOX_LEASE_SECONDS": 1234}
    lead, _ = lead_upsert(data={"email": "l@example.org", "first_name": "A"}, source="test")
    items = services._claim(connection, 10, ["contact"])
    row = OutboxItem.objects.get(local_id=lead.pk)
    assert (row.next_attempt_at - items[0].claimed_at).total_seconds() == 1234


# --- random interleavings -----------------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("edit"), st.none()),
    st.tuples(st.just("drain"), st.none()),
    st.tuples(st.just("pull"), st.none()),
    st.tuples(st.just("drain_with_edit"), st.sampled_from(POINTS)),
)


@hsettings(max_examples=25, deadline=None, derandomize=True,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=8),
       rule=st.sampled_from([Connection.ConflictRule.SYSTEM_OF_RECORD, Connection.ConflictRule.MOST_RECENT]))
def test_any_interleaving_ends_with_the_last_edit_on_both_sides(connection, hubspot, monkeypatch, steps, rule):
    Connection.objects.filter(pk=connection.pk).update(conflict_rule=rule)
    connection.refresh_from_db()
    email = f"prop{next(_emails)}@example.org"
    lead, _ = lead_upsert(data={"email": email, "first_name": "v0", "last_name": "Lee"}, source="test")
    connector = connector_for(connection)
    with monkeypatch.context() as patch:
        hook = EditDuringDrain(patch, connector, lead.pk)
        last = "v0"
        for n, (kind, point) in enumerate(steps, start=1):
            if kind == "edit":
                last = f"v{n}"
                _edit(lead.pk, last)
            elif kind == "drain":
                outbox_drain(connection=connection, connector=connector)
            elif kind == "pull":
                pull_changes(connection=connection, connector=connector)
            else:
                last = f"v{n}"
                hook.arm(point, last)
                outbox_drain(connection=connection, connector=connector)
                if hook.point is not None:  # nothing was due, so the drain reached no point: edit now
                    hook.arm(None, None)
                    _edit(lead.pk, last)
            assert Lead.objects.get(pk=lead.pk).first_name == last, (n, kind, point)
    for _ in range(2):
        outbox_drain(connection=connection, connector=connector)
        pull_changes(connection=connection, connector=connector)
    assert Lead.objects.get(pk=lead.pk).first_name == last
    assert _crm_first_name(hubspot, email) == last
    assert not OutboxItem.objects.filter(local_id=lead.pk, status="pending").exists()


# --- a drain that outlived its lease --------------------------------------------

def _claimed(connection, lead_id: int) -> OutboxItem:
    OutboxItem.objects.filter(local_id=lead_id).update(next_attempt_at=timezone.now())
    (item,) = services._claim(connection, 10, ["contact"])
    return item


def test_a_row_another_drain_took_after_the_lease_is_not_finished(connection, hubspot, pushed_lead):
    _edit(pushed_lead.pk, "Mine")
    item = _claimed(connection, pushed_lead.pk)
    # Our lease ran out and a second drain claimed the row: it is that drain's now.
    later = item.claimed_at + services.lease()
    OutboxItem.objects.filter(pk=item.pk).update(claimed_at=later)
    services._finish(connection, objects.get("contact"), [item])
    row = OutboxItem.objects.get(pk=item.pk)
    assert row.status == "pending"
    assert row.version == item.version + 1  # so the other drain does not finish it on values we may have overtaken


def test_a_row_another_drain_finished_after_the_lease_is_queued_again(connection, hubspot, pushed_lead):
    _edit(pushed_lead.pk, "Mine")
    item = _claimed(connection, pushed_lead.pk)
    OutboxItem.objects.filter(pk=item.pk).update(status="done")
    services._finish(connection, objects.get("contact"), [item])
    assert OutboxItem.objects.filter(local_id=pushed_lead.pk, status="pending").count() == 1


def test_a_drain_settling_after_its_lease_leaves_the_row_due(connection, hubspot, pushed_lead, settings):
    _edit(pushed_lead.pk, "Mine")
    item = _claimed(connection, pushed_lead.pk)
    OutboxItem.objects.filter(pk=item.pk).update(claimed_at=item.claimed_at - services.lease())
    item.claimed_at -= services.lease()
    services._finish(connection, objects.get("contact"), [item])
    row = OutboxItem.objects.get(pk=item.pk)
    assert row.status == "pending" and row.next_attempt_at <= timezone.now()


def test_an_edit_of_a_field_the_crm_owns_made_during_its_push_is_not_reverted(connection, hubspot, pushed_lead,
                                                                               monkeypatch):
    """job_title's system of record is the CRM: a value changed *there* wins
    over ours, but the CRM's copy of our own push is not such a change."""
    connector = connector_for(connection)
    lead_upsert(data={"job_title": "CTO"}, source="api:test", overwrite=True, lead=Lead(pk=pushed_lead.pk))
    push = connector.push_batch

    def sending(obj, records):
        out = push(obj, records)
        lead_upsert(data={"job_title": "CEO"}, source="api:test", overwrite=True, lead=Lead(pk=pushed_lead.pk))
        return out

    monkeypatch.setattr(connector, "push_batch", sending)
    outbox_drain(connection=connection, connector=connector)
    monkeypatch.setattr(connector, "push_batch", push)
    pull_changes(connection=connection, connector=connector)
    assert Lead.objects.get(pk=pushed_lead.pk).job_title == "CEO"
    outbox_drain(connection=connection, connector=connector)
    contact = hubspot.contacts[hubspot.by_email[pushed_lead.email]]
    assert contact["properties"]["jobtitle"] == "CEO"

    # A change made in the CRM afterwards still wins, as its system of record.
    hubspot.put_contact({**contact["properties"], "jobtitle": "Founder"})
    lead_upsert(data={"job_title": "Chair"}, source="api:test", overwrite=True, lead=Lead(pk=pushed_lead.pk))
    pull_changes(connection=connection, connector=connector)
    assert Lead.objects.get(pk=pushed_lead.pk).job_title == "Founder"


def test_queueing_a_batch_is_one_statement(connection, django_assert_num_queries):
    from martech.crm import outbox

    with django_assert_num_queries(1):
        outbox.enqueue((connection.pk, "contact", i) for i in range(300))
    with django_assert_num_queries(1):
        outbox.enqueue((connection.pk, "contact", i) for i in range(200, 400))
    assert OutboxItem.objects.filter(status="pending").count() == 400
    assert sorted(set(OutboxItem.objects.values_list("version", flat=True))) == [1, 2]
    assert OutboxItem.objects.filter(version=2).count() == 100
