"""Prepared queries for routing's hot reads: a queryset's SQL built once per
connection and run again with a new id.

This is the one place routing reads Django's private query-compiler API:
``SQLCompiler.select``, ``klass_info`` (``model``, ``select_fields``,
``related_klass_infos`` with ``local_setter`` / ``remote_setter``),
``annotation_col_map``, ``get_converters`` and ``apply_converters``, and
``compile(query.where)`` (``compiled_where``, for ``selectors``' load counts).
``tests/routing/test_prepared.py`` exercises each of them and compares the
rows with the ORM's own, so a Django upgrade that changes them fails there,
not in a route."""
from __future__ import annotations

from typing import Any

from django.db import connection, connections

_SENTINEL_ID = -(2**62) + 11


class _PreparedQuery:
    """A queryset's SQL built once per connection and run with a new id in
    place of a sentinel: Django's query building (filters, select_related,
    subqueries) was about a third of a route's CPU. Rows come back as the
    ORM makes them: converters applied, model instances built from the
    compiler's own column map (one level of select_related)."""

    def __init__(self, qs):
        self.compiler = compiler = qs.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        self.sql, self.params = sql, list(params)
        self.slot = [i for i, p in enumerate(self.params) if isinstance(p, int) and p == _SENTINEL_ID]
        assert len(self.slot) == 1, params  # the id must be swappable, and only it
        self.converters = compiler.get_converters([col for col, _, _ in compiler.select])
        self.annotations = dict(compiler.annotation_col_map or {})

    def objects(self, pk: int) -> list[tuple[Any, dict[str, Any]]]:
        """(instance, annotations) per row for ``pk``."""
        params = list(self.params)
        params[self.slot[0]] = pk
        with connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        if self.converters:
            rows = list(self.compiler.apply_converters(rows, self.converters))
        info, db = self.compiler.klass_info, connection.alias
        out = []
        for row in rows:
            obj = _from_row(info, row, db)
            for rel in info.get("related_klass_infos", ()):
                related = _from_row(rel, row, db)
                if related is not None and related.pk is None:
                    related = None
                rel["local_setter"](obj, related)
                if related is not None:
                    rel["remote_setter"](related, obj)
            out.append((obj, {name: row[i] for name, i in self.annotations.items()}))
        return out


def _from_row(info: dict, row, db: str):
    model = info["model"]
    names = [f.attname for f in model._meta.concrete_fields]
    values = [row[i] for i in info["select_fields"]]
    assert len(names) == len(values), model  # every concrete column, in model order
    return model.from_db(db, names, values)


def prepared_cache() -> dict[str, Any]:
    """What routing prepared for the current connection. Kept on the
    connection wrapper (one per thread and alias): a compiler converts
    values for its own connection, and SQL differs by vendor."""
    return connections[connection.alias].__dict__.setdefault("_routing_prepared", {})


def _prepared(key: str, build) -> _PreparedQuery:
    cache = prepared_cache()
    found = cache.get(key)
    if found is None:
        found = cache[key] = _PreparedQuery(build())
    return found


def compiled_sql(qs) -> tuple[str, list]:
    """``qs``'s SQL and parameters on the current connection, for a
    statement routing runs itself with some parameters swapped."""
    sql, params = qs.query.get_compiler(connection.alias).as_sql()
    return sql, list(params)


def compiled_where(qs) -> tuple[str, list]:
    """``qs``'s WHERE clause as SQL and parameters, to embed in routing's own
    SQL (the filter keeps its one definition in the ORM)."""
    where, params = qs.query.get_compiler(connection.alias).compile(qs.query.where)
    return where, list(params)
