"""A full run's credits go in with the credits table's secondary indexes
dropped and built again after the COPY (PostgreSQL): the indexes must come
back exactly, a failure must leave them in place, and a table that still
holds rows keeps its indexes throughout."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection, transaction

from attribution.computation import ALL_MODELS, attribution_compute, secondary_indexes_suspended
from attribution.models import AttributionCredit, Opportunity
from attribution.services import opportunity_upsert

pytestmark = pytest.mark.django_db

POSTGRES = connection.vendor == "postgresql"


def _indexes() -> set[tuple[str, str]]:
    """(name, definition) of the credits table's indexes, from the catalog."""
    table = AttributionCredit._meta.db_table
    with connection.cursor() as cursor:
        if POSTGRES:
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        else:
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s AND sql IS NOT NULL", [table])
        return set(cursor.fetchall())


def _secondary_count() -> int:
    return sum(1 for name, ddl in _indexes() if "UNIQUE" not in ddl.upper())


def test_full_run_rebuilds_the_same_indexes():
    before = _indexes()
    assert _secondary_count() >= 2  # opportunity and touchpoint
    opportunity_upsert(data={"name": "Deal", "amount": Decimal("10.00")}, source="t")
    attribution_compute()
    assert _indexes() == before
    assert AttributionCredit.objects.count() == len(ALL_MODELS)


def test_indexes_are_gone_inside_and_back_after_a_failure():
    before = _indexes()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            with secondary_indexes_suspended():
                # PostgreSQL loads the rows bare; SQLite keeps its indexes (a no-op there).
                assert _secondary_count() == (0 if POSTGRES else len(before))
                raise RuntimeError("boom")
    assert _indexes() == before


def test_indexes_stay_when_rows_remain():
    opp, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal("10.00")}, source="t")
    attribution_compute(models=["linear"])
    before = _indexes()
    with transaction.atomic():
        with secondary_indexes_suspended():
            assert _indexes() == before
    assert Opportunity.objects.count() == 1


def test_full_run_on_any_database_writes_every_models_rows_once():
    opportunity_upsert(data={"name": "Deal", "amount": Decimal("10.00")}, source="t")
    attribution_compute()
    attribution_compute()  # a second full run replaces, never duplicates
    rows = list(AttributionCredit.objects.values_list("model", "credit"))
    assert sorted(m for m, _ in rows) == sorted(ALL_MODELS)
    assert all(c == Decimal("10.00") for _, c in rows)


def test_a_failure_mid_stream_writes_nothing_and_leaves_the_connection_usable():
    """The rows are generated while the COPY (a writer thread on PostgreSQL)
    sends them: an error half-way must abort the whole write."""
    from attribution.computation import CREDIT_COLUMNS, _write

    opp, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal("10.00")}, source="t")
    row = dict(model="linear", opportunity_id=opp.pk, touchpoint_id=None, channel="email", campaign_id=None, touched_at=None,
               is_opportunity_creation=False, first_of_opportunity=True, first_of_channel=True, first_of_campaign=True,
               first_of_channel_campaign=True, weight=1.0, credit=Decimal("10.00"), currency="USD", is_won=False,
               is_closed=False, opportunity_created_at=opp.created_at, opportunity_closed_at=None, rate_date=None,
               company_credit=Decimal("10.00"))

    def rows():
        for _ in range(20_000):  # past the writer's flush threshold: some data has gone to the server
            yield tuple(row[c] for c in CREDIT_COLUMNS)
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        with transaction.atomic():
            _write(rows())
    assert AttributionCredit.objects.count() == 0
    assert _write(iter([tuple(row[c] for c in CREDIT_COLUMNS)])) == 1
    assert AttributionCredit.objects.get().credit == Decimal("10.00")
