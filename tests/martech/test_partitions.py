"""PostgreSQL: the events table partitioned by month (migration 0014,
martech/partitions.py): rows in their month, months created ahead, the
client_event_id dedupe through martech_event_key, retention dropping whole
months while attribution keeps what it is built on, privacy still complete."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import IntegrityError, connection, transaction

from attribution.models import Touchpoint
from attribution.touchpoints import touchpoints_rebuild
from martech import partitions
from martech.models import Event, EventType
from martech.privacy.services import subject_erase
from martech.retention import retention_apply
from martech.services.ingest import events_ingest
from tests.factories import EventFactory, LeadFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

UTC = dt_timezone.utc
JAN, FEB, MAR = (datetime(2021, m, 1, tzinfo=UTC) for m in (1, 2, 3))


def _sql(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as c:
        c.execute(sql, params)
        return c.fetchall()


def _partition_of(event: Event) -> str:
    return _sql("SELECT tableoid::regclass::text FROM martech_event WHERE id = %s", [event.pk])[0][0]


def _keys(prefix: str) -> dict[str, int]:
    return dict(_sql("SELECT client_event_id, event_id FROM martech_event_key WHERE client_event_id LIKE %s",
                     [f"{prefix}%"]))


@pytest.fixture
def months_2021():
    """January to March 2021 as partitions (created as the schedule would, in March)."""
    partitions.partitions_ensure(now=JAN, ahead=2)
    return partitions.months()


def test_the_events_table_is_partitioned_by_range_of_occurred_at():
    assert partitions.is_partitioned()
    ((strategy, key),) = _sql(
        "SELECT p.partstrat, a.attname FROM pg_partitioned_table p "
        "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = 'martech_event'::regclass")
    assert (strategy, key) == ("r", "occurred_at")
    # The primary key holds the partition key; a default partition takes any other time.
    assert _sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'martech_event'::regclass AND contype = 'p'") == [("PRIMARY KEY (id, occurred_at)",)]
    assert _sql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'martech_event'::regclass "
                "AND inhrelid = 'martech_event_default'::regclass") == [(1,)]
    # The months from now on exist (the migration made them; the schedule keeps three ahead).
    now = datetime.now(UTC)
    assert partitions.month_start(now.year, now.month + 3) in {m.lo for m in partitions.months()}


def test_rows_land_in_their_month_and_a_new_month_takes_its_rows_from_the_default(months_2021):
    assert [m.name for m in months_2021 if m.lo.year == 2021] == [
        "martech_event_y2021m01", "martech_event_y2021m02", "martech_event_y2021m03"]
    jan = EventFactory(occurred_at=JAN + timedelta(days=3))
    mar_end = EventFactory(occurred_at=MAR + timedelta(days=31) - timedelta(microseconds=1))
    april = EventFactory(client_event_id="part-apr", occurred_at=datetime(2021, 4, 2, tzinfo=UTC))
    assert _partition_of(jan) == "martech_event_y2021m01"
    assert _partition_of(mar_end) == "martech_event_y2021m03"
    assert _partition_of(april) == "martech_event_default"

    assert partitions.partitions_ensure(now=datetime(2021, 4, 9, tzinfo=UTC), ahead=0) == ["martech_event_y2021m04"]
    assert _partition_of(april) == "martech_event_y2021m04"
    assert partitions.partitions_ensure(now=datetime(2021, 4, 9, tzinfo=UTC), ahead=0) == []  # idempotent
    # Its dedupe key moved with it: the same id again is refused.
    assert _keys("part-apr") == {"part-apr": april.pk}
    with pytest.raises(IntegrityError), transaction.atomic():
        EventFactory(client_event_id="part-apr", occurred_at=datetime(2021, 4, 3, tzinfo=UTC))


def test_the_same_client_id_in_another_month_is_still_one_event(months_2021):
    first = EventFactory(client_event_id="part-dup", occurred_at=JAN + timedelta(days=1))
    with pytest.raises(IntegrityError), transaction.atomic():
        EventFactory(client_event_id="part-dup", occurred_at=FEB + timedelta(days=1))
    assert list(Event.objects.filter(client_event_id="part-dup").values_list("pk", flat=True)) == [first.pk]
    # The batch ingest skips it as a duplicate (its ON CONFLICT DO NOTHING, now the trigger).
    result = events_ingest(items=[{"type": "track", "event": "page_view", "messageId": "part-dup",
                                   "anonymousId": "anon-part", "timestamp": (MAR + timedelta(days=1)).isoformat()}],
                           source="test")
    assert [r.status for r in result.results] == ["duplicate"]
    # Moving the event to another month keeps its key.
    Event.objects.filter(pk=first.pk).update(occurred_at=FEB + timedelta(days=2))
    assert _partition_of(first) == "martech_event_y2021m02"
    assert _keys("part-dup") == {"part-dup": first.pk}
    # Deleting it releases the key.
    Event.objects.filter(pk=first.pk).delete()
    assert _keys("part-dup") == {}


def _touch_history(lead_ids) -> list[tuple]:
    return sorted(Touchpoint.objects.filter(lead_id__in=lead_ids).values_list(
        "lead_id", "event_id", "occurred_at", "channel", "is_lead_creation"))


def test_retention_drops_whole_months_keeping_what_attribution_is_built_on(months_2021, settings):
    webinar = EventType.objects.create(name="part_webinar", is_touchpoint=True)
    page_view = EventType.objects.get(name="page_view")
    leads = [LeadFactory(), LeadFactory()]
    events = {}
    for month in (JAN, FEB, MAR):
        for i, lead in enumerate(leads):
            for day in (3, 20):  # two touches a month each, far apart (two sessions)
                events[(month, lead.pk, day, "touch")] = EventFactory(
                    lead=lead, event_type=webinar, occurred_at=month + timedelta(days=day, hours=i),
                    utm_source="news", utm_medium="email", channel="email")
                events[(month, lead.pk, day, "view")] = EventFactory(
                    lead=lead, event_type=page_view, occurred_at=month + timedelta(days=day, hours=i, minutes=5))
    touchpoints_rebuild(lead_ids=[lead.pk for lead in leads])
    before = _touch_history([lead.pk for lead in leads])
    assert len(before) == 12
    lead_ids = [lead.pk for lead in leads]

    # Kept 30 days, run on 2021-03-12: January goes whole, February in batches up to 02-10.
    settings.MARTECH_RETENTION = {**settings.MARTECH_RETENTION, "EVENTS_DAYS": 30, "BATCH_SIZE": 2}
    out = retention_apply(now=datetime(2021, 3, 12, tzinfo=UTC), only="events")

    # January: its four page views gone with the month; its four touches kept aside.
    # February: the page views before the cutoff (the 3rd's) deleted by batch.
    assert out == {"events": 4 + 2}
    names = [m.name for m in partitions.months() if m.lo.year == 2021]
    assert names == ["martech_event_y2021m01_kept", "martech_event_y2021m02", "martech_event_y2021m03"]
    assert not _sql("SELECT 1 FROM pg_class WHERE relname = 'martech_event_y2021m01'")
    gone = {k for k, e in events.items() if k[3] == "view" and (k[0] == JAN or (k[0] == FEB and k[2] == 3))}
    assert set(Event.objects.filter(lead_id__in=lead_ids).values_list("pk", flat=True)) == {
        e.pk for k, e in events.items() if k not in gone}
    assert {_partition_of(events[(JAN, lead.pk, 3, "touch")]) for lead in leads} == {"martech_event_y2021m01_kept"}

    # Touchpoints unchanged, each still on its event, and a rebuild finds the same history.
    assert _touch_history(lead_ids) == before
    assert all(tp.event.occurred_at == tp.occurred_at
               for tp in Touchpoint.objects.filter(lead_id__in=lead_ids).select_related("event"))
    touchpoints_rebuild(lead_ids=lead_ids)
    assert _touch_history(lead_ids) == before
    # A repeated run drops nothing more; the kept month is not dropped again.
    assert retention_apply(now=datetime(2021, 3, 12, tzinfo=UTC), only="events") == {"events": 0}


def test_a_dropped_events_key_passes_to_a_new_event_and_is_pruned(months_2021, settings):
    old = EventFactory(client_event_id="part-old", occurred_at=JAN + timedelta(days=2))
    lives = EventFactory(client_event_id="part-lives", occurred_at=FEB + timedelta(days=2))
    settings.MARTECH_RETENTION = {**settings.MARTECH_RETENTION, "EVENTS_DAYS": 1}
    assert partitions.months_drop(FEB) == 1
    assert not Event.objects.filter(pk=old.pk).exists()
    # The key is left behind by the drop (no row trigger runs for a dropped table) ...
    assert _keys("part-") == {"part-old": old.pk, "part-lives": lives.pk}
    # ... and pruned by the event_keys batches, the live event's key kept.
    assert retention_apply(now=FEB + timedelta(days=1), only="event_keys") == {"event_keys": 1}
    assert _keys("part-") == {"part-lives": lives.pk}
    # The same id sent again is a new event (its old one is gone); a live one's is still refused.
    again = EventFactory(client_event_id="part-old", occurred_at=MAR + timedelta(days=1))
    assert _keys("part-old") == {"part-old": again.pk}
    with pytest.raises(IntegrityError), transaction.atomic():
        EventFactory(client_event_id="part-lives", occurred_at=MAR + timedelta(days=1))


def test_a_key_left_by_a_dropped_month_passes_to_the_new_event_before_pruning(months_2021):
    old = EventFactory(client_event_id="part-left", occurred_at=JAN + timedelta(days=2))
    assert partitions.months_drop(FEB) == 1
    result = events_ingest(items=[{"type": "track", "event": "page_view", "messageId": "part-left",
                                   "anonymousId": "anon-left", "timestamp": (MAR + timedelta(days=1)).isoformat()}],
                           source="test")
    assert [r.status for r in result.results] == ["accepted"]
    new = Event.objects.get(client_event_id="part-left")
    assert new.pk != old.pk and _keys("part-left") == {"part-left": new.pk}


def test_privacy_export_and_erasure_cover_every_month(months_2021, superuser):
    lead = LeadFactory(email="part-person@example.org")
    mine = [EventFactory(lead=lead, client_event_id=f"part-me-{i}", occurred_at=at)
            for i, at in enumerate((JAN + timedelta(days=1), FEB + timedelta(days=1), datetime.now(UTC)))]
    from martech.privacy.services import subject_export

    export = subject_export(email=lead.email, actor=superuser, source="test")
    exported = {row["id"] for row in export.document["records"]["martech.Event"]}
    assert {e.pk for e in mine} <= exported
    subject_erase(email=lead.email, actor=superuser, source="test", crm_delete=False)
    assert not Event.objects.filter(pk__in=[e.pk for e in mine]).exists()
    assert _keys("part-me-") == {}


def test_a_touchpoint_written_while_the_month_is_copied_aside_keeps_its_event(months_2021, monkeypatch):
    lead = LeadFactory()
    early, late, view = (EventFactory(lead=lead, occurred_at=JAN + timedelta(days=d)) for d in (1, 2, 3))
    Touchpoint.objects.create(lead=lead, event=early, occurred_at=early.occurred_at, channel="email")
    original = partitions.run_in_transaction

    def touch_after_copy(fn, **kw):
        out = original(fn, **kw)
        if fn.__name__ == "copy_aside":  # between the copy aside and the locked swap
            Touchpoint.objects.create(lead=lead, event=late, occurred_at=late.occurred_at, channel="email")
        return out

    monkeypatch.setattr(partitions, "run_in_transaction", touch_after_copy)
    assert partitions.months_drop(FEB) == 1
    assert set(Event.objects.filter(lead=lead).values_list("pk", flat=True)) == {early.pk, late.pk}
    assert not Event.objects.filter(pk=view.pk).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("reference_data")  # an earlier transactional test flushed the event catalog
def test_a_month_whose_lock_is_not_had_waits_for_the_next_run(monkeypatch):
    import threading

    from django.db import connections

    partitions.partitions_ensure(now=JAN, ahead=0)
    holding, release = threading.Event(), threading.Event()
    try:
        event = EventFactory(occurred_at=JAN + timedelta(days=1))

        def reader():  # a long transaction reading events (holds its ACCESS SHARE lock)
            try:
                with transaction.atomic():
                    Event.objects.filter(pk=event.pk).exists()
                    holding.set()
                    release.wait(30)
            finally:
                connections.close_all()

        original = partitions.run_in_transaction
        started: list[threading.Thread] = []

        def block_after_copy(fn, **kw):
            out = original(fn, **kw)
            if fn.__name__ == "copy_aside" and not started:
                started.append(threading.Thread(target=reader))
                started[0].start()
                assert holding.wait(10)
            return out

        monkeypatch.setattr(partitions, "LOCK_TIMEOUT", "50ms")
        monkeypatch.setattr(partitions, "run_in_transaction", block_after_copy)
        assert partitions.months_drop(FEB) == 0
        assert "martech_event_y2021m01" in {m.name for m in partitions.months()}
        assert Event.objects.filter(pk=event.pk).exists()
        release.set()
        started[0].join(10)
        assert partitions.months_drop(FEB) == 1  # the next run
        assert not Event.objects.filter(pk=event.pk).exists()
    finally:
        release.set()
        with connection.cursor() as c:
            for month in partitions.months():
                if month.lo.year == 2021:
                    c.execute(f"DROP TABLE {month.name}")
            c.execute("DROP TABLE IF EXISTS martech_event_y2021m01_kept")
            c.execute("DELETE FROM martech_event_key WHERE occurred_at < '2022-01-01'")
