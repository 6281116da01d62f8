"""martech.paginator: the changelist count never scans a whole big table."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from martech.models import Lead, LifecycleStage
from martech.paginator import EstimatedCountPaginator

pytestmark = pytest.mark.django_db


class SmallCap(EstimatedCountPaginator):
    count_cap = 20


def _leads(n: int, stage_key: str = "lead") -> None:
    stage = LifecycleStage.objects.get(key=stage_key)
    start = Lead.objects.count()
    Lead.objects.bulk_create([Lead(email=f"p{start + i}@x.example", lifecycle_stage=stage) for i in range(n)])


def _counts(sqls):
    return [s for s in sqls if "COUNT(" in s.upper()]


def test_small_results_are_counted_exactly():
    _leads(7)
    assert SmallCap(Lead.objects.all(), 5).count == 7
    assert SmallCap(Lead.objects.filter(email__startswith="p1"), 5).count == 1


def test_a_lists_length_is_its_count():
    assert SmallCap(list(range(30)), 5).count == 30


def test_count_is_capped_and_never_unbounded():
    _leads(50)
    paginator = SmallCap(Lead.objects.filter(lifecycle_stage__key="lead"), 5)
    with CaptureQueriesContext(connection) as ctx:
        count = paginator.count
    # On SQLite the cap; on PostgreSQL the planner's estimate, at least the cap.
    assert count >= 20
    if connection.vendor == "sqlite":
        assert count == 20
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert all("LIMIT" in s.upper() for s in _counts(sqls)), sqls
    assert paginator.page(2).object_list  # the pages themselves are exact rows


@pytest.mark.postgres_only
def test_unfiltered_count_on_postgres_is_the_planner_estimate():
    _leads(60)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE martech_lead")
    paginator = SmallCap(Lead.objects.all(), 10)
    with CaptureQueriesContext(connection) as ctx:
        count = paginator.count
    assert count == 60  # reltuples after ANALYZE
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert any("reltuples" in s for s in sqls)
    assert not _counts(sqls), sqls


@pytest.mark.postgres_only
def test_filtered_count_past_the_cap_on_postgres_uses_explain():
    _leads(60, stage_key="mql")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE martech_lead")
    paginator = SmallCap(Lead.objects.filter(lifecycle_stage__key="mql"), 10)
    with CaptureQueriesContext(connection) as ctx:
        count = paginator.count
    assert count >= 20
    assert any(q["sql"].startswith("EXPLAIN") for q in ctx.captured_queries)


@pytest.mark.postgres_only
def test_an_estimate_below_the_cap_is_replaced_by_a_real_count():
    # A fresh table has reltuples -1 until ANALYZE, and a small one a stale
    # estimate (ANALYZE's pg_class update outlives a test's rollback): below
    # the cap the exact count is cheap, so it is used.
    class BigCap(EstimatedCountPaginator):
        count_cap = 1_000_000

    _leads(5)
    assert BigCap(Lead.objects.all(), 10).count == 5


def test_a_search_that_fits_one_page_reads_the_table_once(client, superuser):
    _leads(30)
    Lead.objects.filter(email="p7@x.example").update(first_name="Rarename")
    client.force_login(superuser)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/admin/martech/lead/", {"q": "rarename"})
    assert response.status_code == 200
    assert [lead.email for lead in response.context["cl"].result_list] == ["p7@x.example"]
    assert response.context["cl"].result_count == 1
    lead_reads = [q["sql"] for q in ctx.captured_queries if 'FROM "martech_lead"' in q["sql"]]
    assert len(lead_reads) == 1, lead_reads  # no COUNT, no second SELECT
