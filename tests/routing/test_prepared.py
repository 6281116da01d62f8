"""routing.services.prepared reads Django's private query-compiler API to run
a route's hot reads without building their SQL each time. Each private
attribute it reads is exercised here, by name, with the shape it relies on,
and the prepared rows are compared with the ORM's own: a Django upgrade that
changes any of them fails here rather than in a route."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Subquery, Value

from martech.models import Account, Lead
from routing.models import Assignment, RuleSet, SlaPolicy, Team, open_assignments_q
from routing.services import prepared
from routing.services.config import _live_pk_query
from routing.services.decision import _team_read
from routing.services.prepared import _SENTINEL_ID, _PreparedQuery, compiled_sql, compiled_where, prepared_cache
from routing.services.route import _lead_with_live_set
from tests.factories import AccountFactory, LeadFactory
from tests.routing.factories import RepFactory, RuleSetFactory, SlaPolicyFactory, TeamFactory

pytestmark = pytest.mark.django_db


def _lead_qs():
    return (Lead.objects.select_related("account").annotate(live=Subquery(_live_pk_query()), marker=Value("m"))
            .filter(pk=_SENTINEL_ID))


def test_the_compiler_internals_it_reads_have_the_shape_it_expects():
    compiler = _lead_qs().query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    assert isinstance(sql, str) and list(params).count(_SENTINEL_ID) == 1

    # compiler.select: (expression, (sql, params), alias) per column, the
    # expressions being what get_converters takes.
    assert compiler.select and all(len(entry) == 3 for entry in compiler.select)
    expressions = [col for col, _, _ in compiler.select]
    assert all(hasattr(e, "output_field") for e in expressions)

    # klass_info: the model, its concrete columns' positions in the row, and
    # one entry per select_related relation with the setters that link them.
    info = compiler.klass_info
    assert info["model"] is Lead
    assert len(info["select_fields"]) == len(Lead._meta.concrete_fields)
    assert all(isinstance(i, int) and 0 <= i < len(compiler.select) for i in info["select_fields"])
    [related] = info["related_klass_infos"]
    assert related["model"] is Account
    assert len(related["select_fields"]) == len(Account._meta.concrete_fields)
    assert callable(related["local_setter"]) and callable(related["remote_setter"])

    # annotation_col_map: annotation name -> column index in the row.
    assert set(compiler.annotation_col_map) == {"live", "marker"}
    assert all(0 <= i < len(compiler.select) for i in compiler.annotation_col_map.values())

    # get_converters: {column index: (converters, expression)}; apply_converters
    # runs them over fetched rows.
    converters = compiler.get_converters(expressions)
    assert isinstance(converters, dict)
    for index, (functions, expression) in converters.items():
        assert 0 <= index < len(compiler.select) and all(callable(f) for f in functions)
        assert expression is expressions[index]
    row = tuple(range(len(compiler.select)))
    assert len(next(iter(compiler.apply_converters([row], {})))) == len(row)


def test_where_compiles_to_sql_and_params_for_the_load_counts():
    # selectors._loads_sql_pg embeds the compiled "open" filter in its own SQL.
    team = TeamFactory()
    rep = RepFactory(team=team)
    for lifecycle in (Assignment.Lifecycle.OPEN, Assignment.Lifecycle.CLOSED):
        Assignment.objects.create(lead=LeadFactory(), status="assigned", rep=rep, team=team, trigger="api",
                                  is_current=True, lifecycle=lifecycle)
    where, params = compiled_where(Assignment.objects.filter(open_assignments_q()))
    assert isinstance(where, str) and '"lifecycle"' in where and isinstance(params, list)
    with connection.cursor() as cursor:  # it runs as a WHERE clause of its own
        cursor.execute(f'SELECT count(*) FROM "{Assignment._meta.db_table}" WHERE {where}', params)
        assert cursor.fetchone()[0] == Assignment.objects.filter(open_assignments_q()).count() == 1


def test_a_querysets_sql_with_its_parameters_in_order():
    sql, params = compiled_sql(Lead.objects.filter(pk=_SENTINEL_ID, email="x@example.com").values_list("pk"))
    assert sorted(params, key=str) == sorted([_SENTINEL_ID, "x@example.com"], key=str)
    lead = LeadFactory(email="x@example.com")
    with connection.cursor() as cursor:
        cursor.execute(sql, [lead.pk if p == _SENTINEL_ID else p for p in params])
        assert cursor.fetchall() == [(lead.pk,)]


def test_prepared_rows_are_the_orms_rows_with_the_relation_set(django_assert_num_queries):
    account = AccountFactory(name="Acme")
    with_account = LeadFactory(account=account, country="US")
    without = LeadFactory(account=None)
    live = RuleSetFactory(fallback_team=TeamFactory(), status=RuleSet.Status.PUBLISHED, version=1)
    query = _PreparedQuery(_lead_qs())
    for lead in (with_account, without):
        [(got, annotations)] = query.objects(lead.pk)
        want = Lead.objects.select_related("account").get(pk=lead.pk)
        assert [getattr(got, f.attname) for f in Lead._meta.concrete_fields] == \
            [getattr(want, f.attname) for f in Lead._meta.concrete_fields]
        assert got.created_at.tzinfo is not None  # converters applied (SQLite stores text)
        assert annotations == {"live": live.pk, "marker": "m"}
        assert not got._state.adding and got._state.db == connection.alias
    [(got, _)] = query.objects(with_account.pk)
    with django_assert_num_queries(0):  # the relation came with the row
        assert got.account.name == "Acme" and got.account.pk == account.pk
    [(got, _)] = query.objects(without.pk)
    assert got.account is None
    assert query.objects(-1) == []


def test_a_nullable_relation_and_decimal_converters():
    policy = SlaPolicyFactory(first_touch_hours=Decimal("1.50"))
    with_policy, without = TeamFactory(sla_policy=policy), TeamFactory(sla_policy=None)
    team = _team_read(with_policy.pk, lock=False)
    assert team.sla_policy == policy and team.sla_policy.first_touch_hours == Decimal("1.50")
    assert isinstance(team.sla_policy.first_touch_hours, Decimal)
    assert _team_read(without.pk, lock=False).sla_policy is None
    assert isinstance(team.sla_policy, SlaPolicy) and isinstance(team, Team)


def test_the_route_read_returns_the_lead_the_live_set_and_the_token():
    lead = LeadFactory()
    live = RuleSetFactory(fallback_team=TeamFactory(), status=RuleSet.Status.PUBLISHED, version=3)
    got, live_id, _token = _lead_with_live_set(lead.pk, lock=connection.features.has_select_for_update)
    assert got == lead and live_id == live.pk


def test_the_sentinel_must_be_the_only_swappable_parameter():
    with pytest.raises(AssertionError):
        _PreparedQuery(Lead.objects.filter(pk=1))
    with pytest.raises(AssertionError):
        _PreparedQuery(Lead.objects.filter(pk=_SENTINEL_ID, account_id=_SENTINEL_ID))


def test_prepared_once_per_connection_and_key():
    prepared_cache().clear()
    built = []

    def build():
        built.append(1)
        return _lead_qs()

    first = prepared._prepared("test:lead", build)
    assert prepared._prepared("test:lead", build) is first and len(built) == 1
    prepared_cache().pop("test:lead")
