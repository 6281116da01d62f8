"""A changelist paginator that never counts a whole big table.

Django's admin asks ``paginator.count`` for every changelist page. On a table
of millions of rows ``SELECT COUNT(*)`` is a full scan (PostgreSQL has no
cheap exact count under MVCC), which alone takes longer than the page budget.
So (after healthchecks' ``hc/api/admin.py``):

- unfiltered, on PostgreSQL: the planner's row estimate for the table
  (``pg_class.reltuples``, kept fresh by autovacuum's ANALYZE);
- filtered (a search, a filter): first the page itself, one row more than a
  page: when that is not full, its length is the exact count and those rows
  are page 1, so a rare search term (which no index serves) costs one scan
  of the table instead of two;
- otherwise: an exact count capped at ``COUNT_CAP`` rows
  (``SELECT COUNT(*) FROM (SELECT ... LIMIT cap+1)``), which reads at most
  cap+1 index entries; when the cap is hit on PostgreSQL, the planner's
  ``EXPLAIN`` estimate for the filtered query (never less than the cap).

The count is only used for "N results" and the page links, so an estimate
is good enough; the rows on each page are always exact.
"""
from __future__ import annotations

import json
import logging

from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.utils.functional import cached_property

log = logging.getLogger(__name__)

COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    count_cap = COUNT_CAP
    _first_page: list | None = None

    def page(self, number):
        if self._first_page is not None and self.validate_number(number) == 1:
            return self._get_page(self._first_page, 1, self)
        return super().page(number)

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not hasattr(qs, "query"):  # a list: nothing to estimate
            return len(qs)
        connection = connections[qs.db]
        if connection.vendor == "postgresql" and not qs.query.where:
            estimate = self._table_estimate(qs, connection)
            if estimate is not None and estimate >= self.count_cap:
                return estimate
        if qs.query.where and not self.orphans:
            probe = list(qs[: self.per_page + 1])
            if len(probe) <= self.per_page:
                self._first_page = probe
                return len(probe)
        capped = qs.order_by()[: self.count_cap + 1].count()
        if capped <= self.count_cap:
            return capped
        if connection.vendor == "postgresql":
            estimate = self._explain_estimate(qs, connection)
            if estimate is not None:
                return max(estimate, self.count_cap)
        return self.count_cap

    @staticmethod
    def _table_estimate(qs, connection) -> int | None:
        # reltuples is -1 for a table never vacuumed/analyzed (PostgreSQL 14+):
        # then fall through to the capped count, which is cheap on a new table.
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [qs.model._meta.db_table],
                )
                row = cursor.fetchone()
        except DatabaseError:  # pragma: no cover - a permissions problem, not ours to fail on
            log.warning("could not read the row estimate of %s", qs.model._meta.db_table, exc_info=True)
            return None
        if not row or row[0] is None or row[0] < 0:
            return None
        return int(row[0])

    @staticmethod
    def _explain_estimate(qs, connection) -> int | None:
        sql, params = qs.order_by().query.sql_with_params()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                plan = cursor.fetchone()[0]
        except DatabaseError:  # pragma: no cover
            log.warning("could not EXPLAIN a changelist query", exc_info=True)
            return None
        if isinstance(plan, str):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])
