"""Score writes are heap-only-tuple (HOT) updates on PostgreSQL: no index of
the lead table covers a column they write (martech migration 0004 dropped the
total_score index) and the table's pages keep free space for the new row
versions (scoring migration 0004, fillfactor 80). A HOT update touches no
index, which is most of what the bulk recompute of 1,000,000 leads cost."""
from __future__ import annotations

import datetime as dt

from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from martech.models import Lead
from martech.scoring import services
from martech.scoring.models import FitRule
from tests.factories import LeadFactory

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
# What the score writes set (services.scores_recompute and bulk.recompute_range).
WRITTEN = {"fit_score", "engagement_score", "total_score", "updated_at"}


def test_no_index_covers_a_column_the_score_writes_set(db):
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Lead._meta.db_table)
    indexed = {col for c in constraints.values() if c["index"] or c["unique"] or c["primary_key"]
               for col in (c["columns"] or [])}
    assert "email" in indexed and "created_at" in indexed  # the introspection sees the indexes
    assert not indexed & WRITTEN


def _xact_updates() -> tuple[int, int]:
    """(updates, HOT updates) of the lead table in this transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_get_xact_tuples_updated(%s::regclass), "
                       "pg_stat_get_xact_tuples_hot_updated(%s::regclass)", [Lead._meta.db_table] * 2)
        return cursor.fetchone()


def test_lead_pages_keep_free_space_and_score_writes_are_hot(model):
    assert MigrationRecorder.Migration.objects.filter(app="scoring", name="0004_lead_fillfactor").exists()
    FitRule.objects.create(model=model, name="US", condition='country = "US"', points=10)
    # A few leads: their new row versions fit in the 20% a page keeps free.
    # (Within one transaction the old versions still take their space, so a
    # first run over a whole page of leads fills the free space and moves the
    # rest; later runs reuse what vacuum frees: docs/scoring.md.)
    leads = [LeadFactory(country="US") for _ in range(4)]
    if connection.vendor != "postgresql":
        # SQLite: the migration had nothing to set; the writes still happen.
        assert services.scores_recompute_all(now=NOW) == 4
        assert set(Lead.objects.values_list("total_score", flat=True)) == {10}
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [Lead._meta.db_table])
        assert cursor.fetchone()[0] == ["fillfactor=80"]
    updated0, hot0 = _xact_updates()
    assert services.scores_recompute_all(now=NOW) == 4  # the set-based path
    updated1, hot1 = _xact_updates()
    assert updated1 - updated0 == 4
    assert hot1 - hot0 == 4
    # The incremental path's UPDATE too.
    FitRule.objects.create(model=model, name="US again", condition='country = "US"', points=5)
    assert services.scores_recompute(lead_ids=[leads[0].pk], reason="event", now=NOW) == 1
    updated2, hot2 = _xact_updates()
    assert (updated2 - updated1, hot2 - hot1) == (1, 1)
    assert Lead.objects.get(pk=leads[0].pk).total_score == 15
