"""Routing writes: route a lead, the waiting queue, reroutes, first touch,
SLA escalation, rule-set versions. Every function is keyword-only; admin,
API, signal receivers, tasks and tests call these.

Locking order (always the same, so two workers never deadlock; README,
"Lock order, leases and retries"): the lead row, then its current
assignment, then team rows (the round-robin pointer; the rule's team before
the fallback team; a batch all of its teams in id order, the fallback
last), then, for capped reps only, rep rows (a route at most one, last; a
batch all of its capped reps in id order). Team and rep locks are FOR NO
KEY UPDATE, so the foreign-key checks of a publish or rollback (KEY SHARE)
never wait for them.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Case, Count, F, Max, Min, OuterRef, Q, Subquery, TextField, Value, When
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from martech import configcache, hooks
from martech.db import retry_on_conflict, run_in_transaction
from martech.models import Account, Lead
from martech.services.leads import lead_set_owner
from martech.services.normalize import free_mail_domains, normalize_domain
from routing import engine
from routing.conditions import condition_compile, condition_q, condition_validate
from routing.models import Assignment, OutOfOffice, Rep, Rule, RuleSet, Team, open_assignments_q

log = logging.getLogger(__name__)
Status = Assignment.Status
Trigger = Assignment.Trigger
Lifecycle = Assignment.Lifecycle
CloseReason = Assignment.CloseReason

# --- Prepared queries for the hot reads ---------------------------------------

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


def _prepared(key: str, build) -> _PreparedQuery:
    # Kept on the connection wrapper (one per thread and alias): the
    # compiler it holds converts values for that connection.
    cache = connections[connection.alias].__dict__.setdefault("_routing_prepared", {})
    found = cache.get(key)
    if found is None:
        found = cache[key] = _PreparedQuery(build())
    return found


# --- Configuration: the live rule set and its rules, current in every process
#
# Routes read the published rules with their territory, team and rep rows,
# which sales ops change while leads flow (a rep deactivated, a cap removed,
# a territory moved). They are kept per process under the ``routing.config``
# token of ``martech.configcache``: every save or delete of a rep, team,
# territory, out-of-office period or SLA policy gives the key a new token in
# the same transaction (``configcache.watch`` in ``routing.apps``; the
# services' ``QuerySet.update()``s call ``config_changed``), and a route
# reads the token in the statement that locks its lead, so the change
# applies to the very next lead in every process at no extra round trip.
# Published rule sets never change; the live one's id is read per route.

CONFIG_KEY = "routing.config"
# The benchmark's "freshness checks off" (today's per-process cache): never
# set outside bench/routing.py.
_FRESHNESS = True
_stale_config: list = []


class _Config:
    """What routes read of the configuration under one token: filled as
    rule sets are used (the entries never change once made)."""

    __slots__ = ("rule_sets", "rules")

    def __init__(self):
        self.rule_sets: dict[int, RuleSet] = {}
        self.rules: dict[int, list[Rule]] = {}


def _config(token: Any = configcache._UNREAD) -> _Config:
    if not _FRESHNESS:
        if not _stale_config:
            _stale_config.append(_Config())
        return _stale_config[0]
    return configcache.cached(CONFIG_KEY, _Config, token=token)


def config_changed() -> None:
    """Routing configuration changed without a model save (a
    ``QuerySet.update()``): new token, in the caller's transaction."""
    configcache.bump(CONFIG_KEY)


def _clear_cache() -> None:
    """Forget this process's routing configuration (tests; the benchmark)."""
    configcache.clear()
    _stale_config.clear()
    _compiled_cache.clear()


def _live_pk_query():
    return RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).order_by("-version").values("pk")[:1]


def _config_token_query():
    from martech.models import ConfigVersion

    return ConfigVersion.objects.filter(key=CONFIG_KEY).values("token")[:1]


def live_rule_set(*, pk: int | None | bool = False, token: Any = configcache._UNREAD) -> RuleSet | None:
    """The latest published version. Its id is read every time (an index
    scan), so a publish in another process is live at once; the row (with
    its fallback team) is kept under the configuration token. ``pk`` and
    ``token`` are those values when the caller read them already
    (``lead_route`` reads both with the lead)."""
    if pk is False:
        pk = _live_pk_query().values_list("pk", flat=True).first()
    if pk is None:
        return None
    sets = _config(token).rule_sets
    found = sets.get(pk)
    if found is None:
        found = sets[pk] = RuleSet.objects.select_related("fallback_team").get(pk=pk)
    return found


def rules_of(rule_set: RuleSet, *, token: Any = configcache._UNREAD) -> list[Rule]:
    """Active rules in order, with their territory, team and rep. A
    published set's are kept under the configuration token (see above); a
    draft's are always read fresh."""
    if rule_set.is_draft:
        return _load_rules(rule_set)
    cache = _config(token).rules
    rules = cache.get(rule_set.pk)
    if rules is None:
        rules = cache[rule_set.pk] = _load_rules(rule_set)
    return rules


def _load_rules(rule_set: RuleSet) -> list[Rule]:
    return list(
        rule_set.rules.filter(is_active=True).select_related("territory", "team", "rep", "rep__team", "rep__backup")
        .order_by("order", "id")
    )


class _CompiledRules:
    """A rule list prepared once for matching many leads: each territory's
    criteria normalized, each condition parsed, and the rules indexed by
    country (a rule without countries is under every country), so a lead is
    checked only against the rules its country can match, still in order.
    The checks are those of ``Territory.matches`` and the condition
    language; with 200 rules, re-normalizing territories and re-reading
    conditions per lead was most of a decision's matching CPU."""

    __slots__ = ("rules", "by_country", "no_country", "invalid")

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        # A stored rule whose condition no longer parses (saved before the
        # language refused it, e.g. ``now - 1000000 days``) is skipped, and
        # each decision records why (``rules_invalid``): one bad rule must
        # not stop every route.
        self.invalid: list[tuple[Rule, str]] = []
        entries = []
        for rule in rules:
            try:
                condition = condition_compile(rule.condition)
            except ValidationError as exc:
                self.invalid.append((rule, "; ".join(exc.messages)))
                continue
            terr = rule.territory if rule.territory_id else None
            if terr is not None:
                countries, regions, prefixes, industries = terr._normalized()
                sized = terr.min_employees is not None or terr.max_employees is not None
                check = (regions, prefixes, industries, sized, terr.min_employees, terr.max_employees)
                if not (regions or prefixes or industries or sized):
                    check = None
            else:
                countries, check = frozenset(), None
            entries.append((rule, countries, check, condition))
        all_countries = {c for _, countries, _, _ in entries for c in countries}
        self.no_country = tuple(e for e in entries if not e[1])
        self.by_country = {c: tuple(e for e in entries if not e[1] or c in e[1]) for c in all_countries}

    def match(self, lead: Lead, now: datetime | None) -> Rule | None:
        entries = self.by_country.get((lead.country or "").upper(), self.no_country)
        facts = None
        for rule, _, check, condition in entries:
            if check is not None:
                if facts is None:
                    account = lead.account if lead.account_id else None
                    facts = ((lead.region or "").strip().lower(), (lead.postal_code or "").upper().replace(" ", ""),
                             (account.industry if account else "").strip().lower(),
                             account.employee_count if account else None)
                regions, prefixes, industries, sized, lo, hi = check
                region, postal, industry, size = facts
                if regions and region not in regions:
                    continue
                if prefixes and (not postal or not postal.startswith(prefixes)):
                    continue
                if industries and industry not in industries:
                    continue
                if sized and (size is None or (lo is not None and size < lo) or (hi is not None and size > hi)):
                    continue
            if condition is None or condition.evaluate(lead, now=now):
                return rule
        return None


# Compiled forms by rule list: a published set's list is kept under the
# configuration token (rules_of), so it is compiled once per process and token; a draft's list is compiled per list
# (a simulation matches thousands of leads against one list). The list is
# kept in the entry so its id is never reused while the entry lives.
_compiled_cache: dict[int, _CompiledRules] = {}


def _compiled(rules: list[Rule]) -> _CompiledRules:
    compiled = _compiled_cache.get(id(rules))
    if compiled is None or compiled.rules is not rules:
        if len(_compiled_cache) > 64:
            _compiled_cache.clear()
        compiled = _compiled_cache[id(rules)] = _CompiledRules(rules)
    return compiled


def rule_match(rules: list[Rule], lead: Lead, *, now: datetime | None = None) -> Rule | None:
    """First match wins."""
    return _compiled(rules).match(lead, now)


def rules_invalid(rules: list[Rule]) -> list[tuple[Rule, str]]:
    """The rules of ``rules`` skipped because their condition does not parse
    (rule, "column N: reason")."""
    return _compiled(rules).invalid


def _skipped_steps(rules: list[Rule]) -> list[dict[str, Any]]:
    return [{"step": "rule skipped", "rule": r.name, "rule_id": r.pk, "reason": f"invalid condition: {why}"}
            for r, why in rules_invalid(rules)]


def rule_lead_q(rule: Rule) -> Q:
    # Raises ValidationError (ConditionError) for a condition that does not parse.
    q = condition_q(rule.condition)
    if rule.territory_id:
        q &= rule.territory.to_q()
    return q


# --- Account matching ----------------------------------------------------------


def _company_key(name: str) -> str:
    import re

    words = re.sub(r"[^a-z0-9 ]+", " ", (name or "").lower()).split()
    suffixes = {"inc", "llc", "ltd", "gmbh", "corp", "corporation", "co", "sa", "ag", "plc", "bv", "limited", "the"}
    return " ".join(w for w in words if w not in suffixes)


def account_match(lead: Lead) -> tuple[Account | None, str]:
    """The lead's account, else an exact email-domain match, else a
    normalized company-name match. Returns (account, how)."""
    if lead.account_id:
        return lead.account, "linked"
    domain = normalize_domain(lead.email.rpartition("@")[2]) if lead.email else None
    if domain and domain not in free_mail_domains():
        account = Account.objects.filter(domain=domain).select_related("owner").first()
        if account:
            return account, "domain"
    key = _company_key(lead.company_name)
    if key:
        first_word = key.split()[0]
        for account in Account.objects.filter(name__icontains=first_word).select_related("owner")[:50]:
            if _company_key(account.name) == key:
                return account, "company_name"
    return None, ""


# --- Choosing a rep ---------------------------------------------------------------


@dataclass
class Decision:
    status: str
    rep: Rep | None = None
    team: Team | None = None
    rule: Rule | None = None
    rule_set: RuleSet | None = None
    method: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    # fair-queue updates to write when committing: (team, clock), (rep, pass)
    updates: list[tuple[Team, float, Rep, float]] = field(default_factory=list)
    # The chosen rep's out-of-office periods not yet over (the SLA deadline skips them).
    absences: list[tuple[datetime, datetime]] | None = None

    def explanation(self) -> dict[str, Any]:
        return {
            "rule_set_version": self.rule_set.version if self.rule_set else None,
            "rule_set_id": self.rule_set.pk if self.rule_set else None,
            "rule": self.rule.name if self.rule else None,
            "rule_id": self.rule.pk if self.rule else None,
            "method": self.method,
            "steps": self.steps,
            "result": {
                "status": self.status,
                "rep_id": self.rep.pk if self.rep else None,
                "rep": self.rep.name if self.rep else None,
                "team_id": self.team.pk if self.team else None,
                "team": self.team.name if self.team else None,
            },
        }


@lru_cache(maxsize=8192)
def _json_text(text: str | None):
    # Reps' hours and holidays repeat across reps and decisions: decode each
    # distinct text once. The result is shared, so it is only ever read.
    return json.loads(text) if text else None


class RepRow:
    """What the engine reads of a rep, loaded with ``values_list``: building
    a full model instance per rep costs more than the whole decision when a
    team has hundreds of reps. Duck-types ``Rep`` for ``routing.engine``.
    Hours and holidays come as JSON text (decoded through a cache; the
    engine compiles hours per distinct text). On PostgreSQL the rep's
    out-of-office periods not yet over come in the same row."""

    FIELDS = ("id", "name", "is_active", "time_zone", "hours_json", "holidays_json", "max_open_leads", "max_per_day",
              "weight", "rr_pass", "user_id", "team_id", "backup_id", "hubspot_owner_id", "salesforce_user_id")
    __slots__ = (*FIELDS, "pk", "working_hours", "holidays", "away")

    def __init__(self, row: tuple):
        (self.id, self.name, self.is_active, self.time_zone, self.hours_json, self.holidays_json, self.max_open_leads,
         self.max_per_day, self.weight, self.rr_pass, self.user_id, self.team_id, self.backup_id, self.hubspot_owner_id,
         self.salesforce_user_id) = row[:15]
        self.pk = self.id
        self.working_hours = _json_text(self.hours_json) or {}
        self.holidays = _json_text(self.holidays_json) or []
        # (not "absences": that name is the Rep model's related manager)
        self.away = list(zip(row[-2], row[-1])) if len(row) > len(self.FIELDS) else None

    def __eq__(self, other) -> bool:
        return getattr(other, "pk", None) == self.pk and isinstance(other, (RepRow, Rep))

    __hash__ = object.__hash__


def _rep_rows_qs(qs, now: datetime | None):
    qs = qs.annotate(hours_json=Cast("working_hours", TextField()), holidays_json=Cast("holidays", TextField()))
    columns = list(RepRow.FIELDS)
    if now is not None and connection.vendor == "postgresql":
        from django.contrib.postgres.expressions import ArraySubquery

        away = OutOfOffice.objects.filter(rep_id=OuterRef("pk"), ends_at__gt=now).order_by("starts_at", "id")
        qs = qs.annotate(away_starts=ArraySubquery(away.values("starts_at")), away_ends=ArraySubquery(away.values("ends_at")))
        columns += ["away_starts", "away_ends"]
    return qs.order_by("id").values_list(*columns)


def _rep_rows(qs, now: datetime | None = None) -> list[RepRow]:
    return [RepRow(r) for r in _rep_rows_qs(qs, now)]


# Compiled once per process: building this query's SQL (two array
# subqueries, casts) cost more CPU than the whole rest of a decision.
_TEAM_TEAM, _TEAM_NOW = -(2**62) + 7, datetime(1901, 2, 3, 4, 5, 6, tzinfo=dt_timezone.utc)
_team_reps_sql: dict[str, tuple[str, list]] = {}


def _team_reps_pg(team_id: int, now: datetime) -> list[RepRow]:
    compiled = _team_reps_sql.get(connection.alias)
    if compiled is None:
        qs = _rep_rows_qs(Rep.objects.filter(team_id=_TEAM_TEAM), _TEAM_NOW)
        sql, params = qs.query.get_compiler(connection.alias).as_sql()
        # Every placeholder value must be one we can swap back in; the
        # columns come in the values_list order (aliased).
        assert list(params).count(_TEAM_TEAM) == 1 and list(params).count(_TEAM_NOW) == 2, params
        compiled = _team_reps_sql[connection.alias] = (sql, list(params))
    sql, template = compiled
    params = [team_id if p == _TEAM_TEAM else now if p == _TEAM_NOW else p for p in template]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [RepRow(row) for row in cursor.fetchall()]


def team_reps(team_id: int, now: datetime | None = None) -> list[RepRow]:
    """The team's reps; with ``now`` (on PostgreSQL) their out-of-office
    periods not yet over too, in the same query."""
    if now is not None and connection.vendor == "postgresql":
        return _team_reps_pg(team_id, now)
    return _rep_rows(Rep.objects.filter(team_id=team_id), now)


def _absences(rep_ids: list[int], now: datetime, *, team_id: int | None = None) -> dict[int, list[tuple[datetime, datetime]]]:
    """Out-of-office periods not over at ``now``: the current ones decide
    availability, the later ones move the SLA deadline (one query for both)."""
    out: dict[int, list] = {}
    where = Q(rep__team_id=team_id) if team_id is not None else Q(rep_id__in=rep_ids)
    for rep_id, s, e in OutOfOffice.objects.filter(where, ends_at__gt=now).values_list(
        "rep_id", "starts_at", "ends_at"
    ):
        out.setdefault(rep_id, []).append((s, e))
    return out


# --- Capacity: one computation for the router, the decision record and the admin
# ("open" is routing.models.open_assignments_q, its one definition)


def has_cap(rep) -> bool:
    return rep.max_open_leads is not None or rep.max_per_day is not None


def _loads_sql_pg() -> tuple[str, list]:
    """``rep_loads``' counts as plain SQL, each rep with their own day
    start, built once per connection with "open" compiled from
    ``open_assignments_q`` (still its one definition). Building the ORM
    query per call cost more CPU than running it, on a path every capped
    pick takes."""
    cache = connections[connection.alias].__dict__.setdefault("_routing_prepared", {})
    found = cache.get("loads")
    if found is None:
        qs = Assignment.objects.filter(open_assignments_q())
        where, params = qs.query.get_compiler(connection.alias).compile(qs.query.where)
        table = connection.ops.quote_name(Assignment._meta.db_table)
        sql = (f'SELECT {table}."rep_id", count(*) FILTER (WHERE {where}), '
               f'count(*) FILTER (WHERE {table}."assigned_at" >= s.start) '
               f'FROM unnest(%s::bigint[], %s::timestamptz[]) AS s(rep, start) '
               f'JOIN {table} ON {table}."rep_id" = s.rep '
               f'WHERE ({where}) OR {table}."assigned_at" >= s.start GROUP BY 1')
        found = cache["loads"] = (sql, list(params))
    return found


def rep_loads(reps: list, now: datetime, *, everyone: bool = False) -> dict[int, tuple[int, int]]:
    """(open, today) per rep with a cap (``everyone``: per rep, for the
    least-loaded method): open assignments, and leads assigned since the
    start of the rep's local day (their time zone). Reps without a cap are
    otherwise not counted (there is nothing to compare to). One query for
    any number of reps."""
    capped = list(reps) if everyone else [r for r in reps if has_cap(r)]
    if not capped:
        return {}
    ids = [r.pk for r in capped]
    out = dict.fromkeys(ids, (0, 0))
    if connection.vendor == "postgresql":
        sql, where_params = _loads_sql_pg()
        with connection.cursor() as cursor:
            cursor.execute(sql, [*where_params, ids, [engine.local_day_start(r, now) for r in capped], *where_params])
            out.update({rep_id: (n_open, n_today) for rep_id, n_open, n_today in cursor.fetchall()})
        return out
    return _rep_loads_orm(capped, now, out)


def _rep_loads_orm(capped: list, now: datetime, out: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    ids = list(out)
    starts: dict[datetime, list[int]] = {}
    for rep in capped:  # reps share a handful of zones, so of day starts
        starts.setdefault(engine.local_day_start(rep, now), []).append(rep.pk)
    today = Q()
    for start, pks in starts.items():
        today |= Q(rep_id__in=pks, assigned_at__gte=start)
    rows = (Assignment.objects.filter(Q(rep_id__in=ids) & (open_assignments_q() | Q(assigned_at__gte=min(starts))))
            .values("rep_id").annotate(open=Count("id", filter=open_assignments_q()), today=Count("id", filter=today))
            .values_list("rep_id", "open", "today"))
    out.update({rep_id: (n_open, n_today) for rep_id, n_open, n_today in rows})
    return out


def rep_capacity(rep, now: datetime, loads: dict[int, tuple[int, int]] | None = None) -> tuple[int, int, str | None]:
    """(open, today, why the rep can take no more or None): what the admin
    shows; ``loads`` from ``rep_loads`` when the caller counted a page."""
    open_count, today = (loads if loads is not None else rep_loads([rep], now)).get(rep.pk, (0, 0))
    return open_count, today, engine.capacity_reason(rep, open_count=open_count, today_count=today)


_LOCK_REPS_PG = f'SELECT "id" FROM "{Rep._meta.db_table}" WHERE "id" = ANY(%s::bigint[]) ORDER BY "id" FOR NO KEY UPDATE'


def _lock_reps(ids) -> None:
    """Lock rep rows (ascending id) before counting their load. FOR NO KEY
    UPDATE, like the team lock: it does not block the foreign-key checks of
    rows that reference the rep (a rule copied by a rollback, an assignment)."""
    if ids and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_REPS_PG, [sorted(ids)])


_batch = threading.local()  # .reps: the rep ids the running batch has locked
_HOLD_PG = (f'SAVEPOINT routing_rep_hold; '
            f'SELECT "id" FROM "{Rep._meta.db_table}" WHERE "id" = %s FOR NO KEY UPDATE')


def _hold(candidate: engine.Candidate, now: datetime) -> bool:
    """A capped rep chosen for a lead: lock their row, count again (another
    route may have committed one since the unlocked count) and keep the lock
    when they still have room. Every path that assigns to a capped rep goes
    through here, so concurrent routes take turns on the rep's count.

    The lock is taken in a savepoint and let go (rolled back to) when the
    rep is full, so a route holds at most ONE rep lock, its last lock: after
    it only the writes follow, never a wait for a team (README, "Lock
    order, leases and retries"). The savepoint is set with the lock (one
    round trip) and, when kept, ends with the transaction."""
    rep = candidate.rep
    if not has_cap(rep):
        return True
    # Batch routing locked its capped reps up front: count again, no savepoint
    # (one per lead would nest hundreds of subtransactions).
    pg = connection.vendor == "postgresql" and rep.pk not in getattr(_batch, "reps", ())
    if pg:
        with connection.cursor() as cursor:
            cursor.execute(_HOLD_PG, [rep.pk])
    candidate.open_count, candidate.today_count = rep_loads([rep], now)[rep.pk]
    reason = engine.capacity_reason(rep, open_count=candidate.open_count, today_count=candidate.today_count)
    if reason is None:
        return True
    if pg:
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK TO SAVEPOINT routing_rep_hold")
    candidate.skipped = reason
    return False


def _candidates(reps: list, now: datetime, *, team_id: int | None = None,
                loads: dict[int, tuple[int, int]] | None = None) -> list[engine.Candidate]:
    """Every rep with why they are skipped (availability, then capacity:
    every method skips reps at capacity, so weights and caps combine)."""
    if reps and all(type(r) is RepRow and r.away is not None for r in reps):
        absences = {r.pk: r.away for r in reps}  # loaded with the reps
    else:
        absences = _absences([r.pk for r in reps], now, team_id=team_id)
    if loads is None:
        loads = rep_loads(reps, now)
    out = []
    local = engine.local_times(now)
    unavailable, Candidate, no_absence, capacity = engine.unavailable_reason, engine.Candidate, [], engine.capacity_reason
    for rep in reps:
        pk = rep.pk
        away = absences.get(pk, no_absence)
        open_count, today = loads.get(pk, (0, 0))
        c = Candidate(rep, unavailable(rep, now, away, local[rep.time_zone]), open_count, today,
                      away if away is not no_absence else [])
        if c.skipped is None and pk in loads:
            c.skipped = capacity(rep, open_count=open_count, today_count=today)
        out.append(c)
    return out


def _team_read(team_id: int, *, lock: bool) -> Team:
    def build():
        # FOR NO KEY UPDATE: the clock is not a key, and a FOR UPDATE lock
        # would block every foreign-key check on the team (a rollback
        # copying rules that name it) while the route waits for others.
        qs = Team.objects.select_for_update(of=("self",), no_key=True) if lock else Team.objects.all()
        return qs.select_related("sla_policy").filter(pk=_SENTINEL_ID)
    [(team, _)] = _prepared("team" + (":lock" if lock else ""), build).objects(team_id)
    return team


# One statement; rows are locked in the ORDER BY's order: ascending id, the fallback team last.
_LOCK_TEAMS_PG = (f'SELECT "id" FROM "{Team._meta.db_table}" WHERE "id" = ANY(%s::bigint[]) '
                  f'ORDER BY ("id" = %s), "id" FOR NO KEY UPDATE')


def _lock_teams(ids, *, fallback_id: int | None) -> None:
    """Several team rows in the one order: ascending id, the fallback team last."""
    if connection.vendor != "postgresql" or not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_TEAMS_PG, [sorted(ids), fallback_id or 0])


def _try_team(decision: Decision, team: Team, now: datetime, *, lock: bool, why: str, exclude: set[int]) -> bool:
    # Re-read (and, committing, lock) the team: its clock is the round-robin pointer.
    team = _team_read(team.pk, lock=lock)
    if not team.is_active:
        decision.steps.append({"step": why, "team": team.name, "outcome": "team inactive"})
        return False
    reps = [r for r in team_reps(team.pk, now) if r.pk not in exclude]
    candidates = _candidates(reps, now, team_id=None if exclude else team.pk,
                             loads=rep_loads(reps, now, everyone=team.method == Team.Method.LEAST_LOADED))
    while True:
        pick = engine.choose(team, candidates)
        chosen = next((c for c in candidates if c.rep is pick.rep), None)
        # Committing: a capped pick is counted again under the rep's lock;
        # full by now, the next rep in the queue is tried.
        if chosen is None or not lock or _hold(chosen, now):
            break
    decision.steps.append({
        "step": why, "team": team.name, "team_id": team.pk, "method": team.method,
        "candidates": [c.as_json() for c in candidates],
        "outcome": f"chose {pick.rep.name}" if pick.rep else "nobody eligible",
    })
    decision.method = decision.method or team.method
    if pick.rep is None:
        return False
    decision.status, decision.rep, decision.team, decision.method = Status.ASSIGNED, pick.rep, team, team.method
    decision.absences = chosen.absences
    decision.updates.append((team, pick.team_clock, pick.rep, pick.rep_pass))
    return True


def _try_rep(decision: Decision, rep: Rep, now: datetime, *, why: str, exclude: set[int], lock: bool = False) -> bool:
    if rep.pk in exclude:
        decision.steps.append({"step": why, "rep": rep.name, "outcome": "excluded"})
        return False
    [candidate] = _candidates([rep], now)
    if candidate.skipped is None and lock:
        _hold(candidate, now)
    decision.steps.append({"step": why, "candidates": [candidate.as_json()],
                           "outcome": f"chose {rep.name}" if candidate.skipped is None else "unavailable"})
    if candidate.skipped is None:
        decision.status, decision.rep, decision.team = Status.ASSIGNED, rep, rep.team
        decision.absences = candidate.absences
        decision.method = decision.method or "direct"
        return True
    return False


def decide(
    *, lead: Lead, rule_set: RuleSet | None, now: datetime, lock: bool, exclude: set[int] | None = None,
    rules: list[Rule] | None = None,
) -> Decision:
    """Which rep (or queue) ``lead`` goes to, and why. ``lock`` takes the
    team row locks a committing route needs; a preview passes False and
    writes nothing. ``exclude`` keeps reps out (a reassignment)."""
    exclude = exclude or set()
    decision = Decision(status=Status.WAITING, rule_set=rule_set)
    if rule_set is None:
        raise ValidationError({"rule_set": ["No routing rule set is published yet."]})
    rules = rules if rules is not None else rules_of(rule_set)
    rule = rule_match(rules, lead, now=now)
    decision.rule = rule
    fallback = rule_set.fallback_team
    decision.steps.extend(_skipped_steps(rules))
    decision.steps.append({"step": "rule", "matched": rule.name if rule else None,
                           "action": rule.action if rule else "fallback"})
    waiting_team = fallback
    if rule is not None and rule.action == Rule.Action.NURTURE:
        decision.status, decision.method = Status.NURTURE, "nurture"
        return decision
    if rule is not None and rule.action == Rule.Action.REP:
        if _try_rep(decision, rule.rep, now, why="rule rep", exclude=exclude, lock=lock):
            return decision
        if rule.rep.backup_id and _try_rep(decision, rule.rep.backup, now, why="backup rep", exclude=exclude, lock=lock):
            return decision
        waiting_team = rule.team or rule.rep.team or fallback
    elif rule is not None and rule.action == Rule.Action.ACCOUNT_OWNER:
        account, how = account_match(lead)
        owner_rep = Rep.objects.filter(user_id=account.owner_id).select_related("team", "backup").first() \
            if account and account.owner_id else None
        decision.steps.append({"step": "account", "account": account.name if account else None, "matched_by": how,
                               "owner_rep": owner_rep.name if owner_rep else None})
        if owner_rep:
            if _try_rep(decision, owner_rep, now, why="account owner", exclude=exclude, lock=lock):
                return decision
            if owner_rep.backup_id and _try_rep(decision, owner_rep.backup, now, why="backup rep", exclude=exclude, lock=lock):
                return decision
        waiting_team = rule.team or (owner_rep.team if owner_rep else None) or fallback
    elif rule is not None:
        waiting_team = rule.team
    # A team (the rule's, the rep's) then the fallback queue.
    tried = set()
    for team, why in ((waiting_team, "team"), (fallback, "fallback queue")):
        if team is None or team.pk in tried:
            continue
        tried.add(team.pk)
        if _try_team(decision, team, now, lock=lock, why=why, exclude=exclude):
            return decision
    decision.status, decision.rep, decision.team = Status.WAITING, None, waiting_team or fallback
    decision.steps.append({"step": "waiting", "team": decision.team.name if decision.team else None,
                           "outcome": "waiting until someone is eligible"})
    return decision


# --- Writing an assignment ------------------------------------------------------


_QUEUE_UPDATE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = %s WHERE "id" = %s) '
    f'UPDATE "{Rep._meta.db_table}" SET "rr_pass" = %s WHERE "id" = %s'
)


def _commit_queue_updates(decision: Decision) -> None:
    for team, clock, rep, rep_pass in decision.updates:
        if connection.vendor == "postgresql":
            # Both fair-queue positions in one statement: one round trip
            # fewer on the path every single route takes.
            with connection.cursor() as cursor:
                cursor.execute(_QUEUE_UPDATE_PG, [clock, team.pk, rep_pass, rep.pk])
        else:
            Team.objects.filter(pk=team.pk).update(rr_clock=clock)
            Rep.objects.filter(pk=rep.pk).update(rr_pass=rep_pass)
        team.rr_clock, rep.rr_pass = clock, rep_pass


def _sla_for(decision: Decision, now: datetime):
    team = decision.team or (decision.rep.team if decision.rep else None)
    policy = team.sla_policy if team and team.sla_policy_id else None
    if policy is None or decision.rep is None:
        return None, None
    absences = decision.absences
    if absences is None:
        absences = rep_absences_from(decision.rep.pk, now)
    return policy, engine.business_deadline(decision.rep, now, policy.first_touch_hours, absences)


def rep_absences_from(rep_id: int, at: datetime) -> list[tuple[datetime, datetime]]:
    """The rep's out-of-office periods not over at ``at``."""
    return list(OutOfOffice.objects.filter(rep_id=rep_id, ends_at__gt=at).values_list("starts_at", "ends_at"))


_INSERT_COLUMNS = ("lead_id", "status", "is_current", "rep_id", "team_id", "rule_set_id", "rule_set_version", "rule_id",
                   "rule_name", "method", "trigger", "reason", "explanation", "actor_id", "created_at", "assigned_at",
                   "ended_at", "end_reason", "sla_policy_id", "sla_due_at", "first_touch_at", "first_touch_source",
                   "escalation_level", "lifecycle", "closed_at", "close_reason")
_INSERT_VALUES = ", ".join("%s::jsonb" if c == "explanation" else "%s" for c in _INSERT_COLUMNS)
_INSERT_PG = (f'INSERT INTO "{Assignment._meta.db_table}" ({", ".join(chr(34) + c + chr(34) for c in _INSERT_COLUMNS)}) '
              f'VALUES ({_INSERT_VALUES}) RETURNING "id"')
# A route's fair-queue positions and its assignment in ONE statement: the
# writes of a route were three round trips (team clock, rep pass, insert).
# Data-modifying CTEs always run to completion, read or not.
_WRITE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = %s WHERE "id" = %s), '
    f'r AS (UPDATE "{Rep._meta.db_table}" SET "rr_pass" = %s WHERE "id" = %s) ' + _INSERT_PG
)


def _write(*, lead: Lead, decision: Decision, trigger: str, reason: str, actor, now: datetime,
           previous: Assignment | None) -> Assignment:
    pg = connection.vendor == "postgresql"
    combine = pg and len(decision.updates) <= 1
    if not combine:
        _commit_queue_updates(decision)
    if previous is not None:
        # The replaced assignment is closed as reassigned (one closed before,
        # e.g. converted, keeps its reason).
        Assignment.objects.filter(pk=previous.pk).update(
            is_current=False, ended_at=now, end_reason=trigger[:100], lifecycle=Lifecycle.CLOSED,
            closed_at=Coalesce("closed_at", Value(now)),
            close_reason=Case(When(lifecycle=Lifecycle.CLOSED, then=F("close_reason")), default=Value(CloseReason.REASSIGNED)))
    policy, due = _sla_for(decision, now) if decision.status == Status.ASSIGNED else (None, None)
    assignment = Assignment(
        lead=lead, status=decision.status, rep_id=decision.rep.pk if decision.rep else None, team=decision.team,
        rule_set=decision.rule_set, rule_set_version=decision.rule_set.version if decision.rule_set else None,
        rule=decision.rule, rule_name=decision.rule.name if decision.rule else "", method=decision.method,
        trigger=trigger, reason=reason[:255], explanation=decision.explanation(),
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        created_at=now, assigned_at=now if decision.status == Status.ASSIGNED else None,
        sla_policy=policy, sla_due_at=due,
    )
    if not combine:
        assignment.save(force_insert=True)
    else:
        values = [json.dumps(assignment.explanation, default=_json_default, separators=(",", ":")) if c == "explanation"
                  else getattr(assignment, c) for c in _INSERT_COLUMNS]
        sql = _INSERT_PG
        if decision.updates:
            [(team, clock, rep, rep_pass)] = decision.updates
            sql, values = _WRITE_PG, [clock, team.pk, rep_pass, rep.pk, *values]
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            assignment.pk = cursor.fetchone()[0]
        assignment._state.adding, assignment._state.db = False, connection.alias
        for team, clock, rep, rep_pass in decision.updates:
            team.rr_clock, rep.rr_pass = clock, rep_pass
    if decision.status == Status.ASSIGNED and decision.rep is not None:
        owner_set(lead=lead, rep=decision.rep, reason=reason, actor=actor)
    return assignment


def owner_set(*, lead: Lead, rep, reason: str, actor=None) -> None:
    """Make ``rep`` the lead's owner here and in the CRM. ``Lead.owner``
    changes only through ``lead_set_owner`` (the one owner-change path; its
    lead hooks queue the CRM outbox, whose payload asks ``crm_owner_id`` for
    the rep's HubSpot/Salesforce id). A rep without a Django user clears a
    stale owner (the lead is no longer theirs). When ``Lead.owner`` stays as
    it is but the rep has a CRM owner id, only the CRM owner changes, so the
    lead hooks are told directly; with no CRM id there is nothing to push
    (an empty owner is never sent). ``lead.owner_id`` is as read under the
    lead's row lock."""
    if lead.owner_id != rep.user_id:
        lead_set_owner(lead=lead, owner=rep.user_id, reason=f"routing: {reason}"[:255], source="routing", actor=actor)
    elif rep.hubspot_owner_id or rep.salesforce_user_id:
        hooks.leads_changed(ids=[lead.pk], fields=["owner"], source="routing")


_CURRENT_SQL = f'SELECT "id" FROM "{Assignment._meta.db_table}" WHERE "lead_id" = %s AND "is_current"'


def _current_assignment(lead_id: int) -> Assignment | None:
    """The lead's current assignment, locked. Plain SQL for the common case
    (none yet): the ORM's query building was a tenth of a route's CPU."""
    sql = _CURRENT_SQL + (" FOR UPDATE" if connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [lead_id])
        row = cursor.fetchone()
    return Assignment.objects.get(pk=row[0]) if row else None


def _lead_with_live_set(lead_id: int, *, lock: bool) -> tuple[Lead, int | None, Any]:
    """The lead (locked for a route) with its account, the live rule set's
    id and the configuration token (see ``CONFIG_KEY``), in one prepared
    statement."""
    fresh = _FRESHNESS

    def build():
        qs = Lead.objects.select_for_update(of=("self",)) if lock else Lead.objects.all()
        qs = qs.select_related("account").annotate(routing_live_set_id=Subquery(_live_pk_query()))
        if fresh:
            qs = qs.annotate(routing_config_token=Subquery(_config_token_query()))
        return qs.filter(pk=_SENTINEL_ID)
    found = _prepared("lead+live" + (":lock" if lock else "") + (":fresh" if fresh else ""), build).objects(lead_id)
    if not found:
        raise ValidationError({"lead_id": [f"No lead with id {lead_id}."]})
    lead, annotations = found[0]
    return lead, annotations["routing_live_set_id"], annotations.get("routing_config_token", configcache._UNREAD)


@retry_on_conflict
@transaction.atomic
def lead_route(
    *, lead_id: int, trigger: str, reason: str = "", actor=None, reroute: bool = False,
    now: datetime | None = None, exclude: set[int] | None = None,
) -> tuple[Assignment, bool]:
    """Route one lead by the live rule set and store the decision with its
    explanation. A lead that already has a current assignment keeps it
    (returns it with False) unless ``reroute``, so the new-lead trigger,
    the stage trigger and the SQL handoff may all fire safely. Called
    outside a transaction it is its own, run again if the database aborts
    it for a concurrent one (``martech.db``)."""
    now = now or timezone.now()
    # The live rule set's id and the configuration token come with the lead
    # (no round trip of their own).
    lead, live_set_id, token = _lead_with_live_set(lead_id, lock=True)
    # Read after the lead lock is held (its own statement, so it sees a route
    # that another worker committed while this one waited for the lock).
    current = _current_assignment(lead_id)
    if current is not None and not reroute:
        return current, False
    rule_set = live_rule_set(pk=live_set_id, token=token)
    decision = decide(lead=lead, rule_set=rule_set, now=now, lock=True, exclude=exclude,
                      rules=rules_of(rule_set, token=token) if rule_set is not None else None)
    # No savepoint around the write: the lead row lock above serializes
    # routes of one lead, and the unique "one current assignment" index is
    # the backstop that turns a bug into an error, never a second owner.
    assignment = _write(lead=lead, decision=decision, trigger=trigger, reason=reason or trigger,
                        actor=actor, now=now, previous=current)
    return assignment, True


def lead_preview(*, lead_id: int, now: datetime | None = None, rule_set: RuleSet | None = None) -> dict[str, Any]:
    """The decision ``lead_route`` would make now, with its explanation.
    Takes no locks and writes nothing."""
    now = now or timezone.now()
    lead, live_set_id, token = _lead_with_live_set(lead_id, lock=False)
    if rule_set is None:
        rule_set = live_rule_set(pk=live_set_id, token=token)
    decision = decide(lead=lead, rule_set=rule_set, now=now, lock=False,
                      rules=rules_of(rule_set, token=token) if rule_set is not None else None)
    return decision.explanation()


def assign_owner_provider(*, lead_id: int, reason: str, actor=None) -> bool:
    """``martech.hooks.call("assign_owner", ...)``: route the lead unless it
    already has a current assignment. True when it is assigned or queued."""
    try:
        assignment, _ = lead_route(lead_id=lead_id, trigger=Trigger.HANDOFF, reason=reason, actor=actor)
    except ValidationError:
        log.warning("assign_owner: lead %s not routed (no published rule set?)", lead_id, exc_info=True)
        return False
    return assignment.status in (Status.ASSIGNED, Status.WAITING)


def crm_owner_id_provider(*, lead_id: int, provider: str) -> str | None:
    """``martech.hooks.call("crm_owner_id", ...)``: the CRM owner id of the
    lead's current rep, for the connector's owner push."""
    rep = Rep.objects.filter(assignments__lead_id=lead_id, assignments__is_current=True).first()
    if rep is None:
        return None
    value = {"hubspot": rep.hubspot_owner_id, "salesforce": rep.salesforce_user_id}.get(provider)
    return value or None


_CRM_ID_FIELD = {"hubspot": "hubspot_owner_id", "salesforce": "salesforce_user_id"}


def crm_owner_ids_provider(*, lead_ids: list[int], provider: str) -> dict[int, str]:
    """``hooks.call("crm_owner_ids", ...)``: ``crm_owner_id`` for many leads
    in one query (a pulled page's push states): lead id -> the CRM owner id
    of its current rep, for the leads that have one."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None or not lead_ids:
        return {}
    # One current assignment per lead (routing_one_current_assignment).
    return dict(Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, rep__isnull=False)
                .exclude(**{f"rep__{column}": ""}).values_list("lead_id", f"rep__{column}"))


def crm_user_owner_id_provider(*, user_id: int, provider: str) -> str | None:
    """``hooks.call("crm_user_owner_id", ...)``: the CRM owner id of the rep
    who is this user (an account's or opportunity's owner, a task's)."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None:
        return None
    return Rep.objects.filter(user_id=user_id).exclude(**{column: ""}).values_list(column, flat=True).first()


def crm_owner_user_id_provider(*, remote_owner_id: str, provider: str) -> int | None:
    """``hooks.call("crm_owner_user_id", ...)``: the user behind a pulled CRM owner id."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None or not remote_owner_id:
        return None
    return Rep.objects.filter(**{column: remote_owner_id}, user__isnull=False).values_list(
        "user_id", flat=True).first()


def crm_owners_pulled_provider(*, provider: str, owners: list[dict]) -> int:
    """``hooks.call("crm_owners_pulled", ...)``: after the CRM sync pulls the
    owners (HubSpot owners, Salesforce users), give each rep whose email
    matches an owner that owner's id. A rep's id set by hand is kept.
    An owner the CRM lists as inactive (an archived HubSpot owner, a
    deactivated Salesforce user) is unlinked from its reps, so nothing is
    assigned to it any more (the CRM refuses an inactive owner).
    Returns how many reps were linked."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None:
        return 0
    inactive = [o["remote_id"] for o in owners if not o.get("is_active", True)]
    if inactive:
        Rep.objects.filter(**{f"{column}__in": inactive}).update(**{column: ""})
    by_email = {o["email"].lower(): o["remote_id"] for o in owners if o.get("email") and o.get("is_active", True)}
    linked = 0
    for rep in Rep.objects.filter(**{column: ""}):
        remote_id = by_email.get(rep.email.lower())
        if remote_id:
            Rep.objects.filter(pk=rep.pk).update(**{column: remote_id})
            linked += 1
    if linked:
        config_changed()  # the rules' reps carry the CRM owner ids
    return linked


# --- Waiting queue, deactivation, unrouted sweep -------------------------------


def waiting_assign(*, limit: int = 500, now: datetime | None = None) -> int:
    """Try the waiting assignments again, team by team (the team whose
    oldest lead waits longest first, each team's leads oldest first);
    returns how many got a rep. A team with nobody eligible is skipped after
    one look (no lock), and a team is left as soon as one of its leads finds
    nobody, so leads waiting for full teams, however many, never keep the
    others from a team with room. ``limit`` bounds the leads tried in one
    run. Each lead is its own transaction (run again on a deadlock); rows
    another worker is on are skipped, and a repeated run finds nothing left
    to do."""
    now = now or timezone.now()
    waiting = Assignment.objects.filter(status=Status.WAITING, is_current=True, team__isnull=False)
    teams = list(waiting.values_list("team_id").annotate(oldest=Min("created_at")).order_by("oldest", "team_id")
                 .values_list("team_id", flat=True))
    done = tried = 0
    for team_id in teams:
        if tried >= limit:
            break
        team = Team.objects.filter(pk=team_id).first()
        if team is None or not team.is_active:
            continue
        reps = team_reps(team_id, now)
        if not any(c.skipped is None for c in _candidates(reps, now, team_id=team_id)):
            continue  # full (or nobody at work): nothing to try until that changes
        last_at, last_id = None, 0
        while tried < limit:
            page = waiting.filter(team_id=team_id)
            if last_at is not None:
                page = page.filter(Q(created_at__gt=last_at) | Q(created_at=last_at, id__gt=last_id))
            rows = list(page.order_by("created_at", "id").values_list("id", "lead_id", "created_at")[:min(200, limit - tried)])
            if not rows:
                break
            full = False
            for assignment_id, lead_id, created_at in rows:
                last_at, last_id = created_at, assignment_id
                tried += 1
                outcome = run_in_transaction(lambda a=assignment_id, l=lead_id: _waiting_one(a, l, now))
                if outcome is True:
                    done += 1
                elif outcome is False:
                    full = True  # the team has nobody left for now
                    break
            if full:
                break
    return done


def _waiting_one(assignment_id: int, lead_id: int, now: datetime) -> bool | None:
    """One waiting lead: True assigned, False nobody eligible in its team,
    None skipped (another worker holds it, or it is no longer waiting)."""
    # The lead first, as lead_route does (same lock order, no deadlock).
    if not list(Lead.objects.select_for_update(skip_locked=True).filter(pk=lead_id).values_list("pk", flat=True)):
        return None
    current = (Assignment.objects.select_for_update(skip_locked=True, of=("self",)).select_related("team")
               .filter(pk=assignment_id, is_current=True, status=Status.WAITING).first())
    if current is None or current.team is None:
        return None
    lead = Lead.objects.select_related("account").get(pk=current.lead_id)
    decision = Decision(status=Status.WAITING, rule_set=current.rule_set, rule=current.rule,
                        steps=[{"step": "waiting queue", "since": current.created_at.isoformat()}])
    if not _try_team(decision, current.team, now, lock=True, why="team", exclude=set()):
        return False
    _write(lead=lead, decision=decision, trigger=Trigger.WAITING, reason="became eligible",
           actor=None, now=now, previous=current)
    return True


def rep_deactivate(*, rep: Rep, actor=None, reason: str = "rep deactivated", now: datetime | None = None) -> int:
    """Mark the rep inactive and reroute their open leads (each one through
    ``lead_route`` with the rep excluded). Returns the number rerouted."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_rep_with_team(rep.pk)
        Rep.objects.filter(pk=rep.pk).update(is_active=False)
        config_changed()
        rep.is_active = False
    lead_ids = list(Assignment.objects.filter(open_assignments_q(), rep=rep).values_list("lead_id", flat=True))
    for lead_id in lead_ids:
        lead_route(lead_id=lead_id, trigger=Trigger.DEACTIVATION, reason=reason, actor=actor, reroute=True,
                   now=now, exclude={rep.pk})
    return len(lead_ids)


def unrouted_sweep(*, hours: int = 24, limit: int = 1000) -> int:
    """Route recent leads that have no assignment at all: a new-lead trigger
    lost to a crash is only delayed (DESIGN.md: the database is the record)."""
    if live_rule_set() is None:
        return 0
    since = timezone.now() - timedelta(hours=hours)
    ids = list(Lead.objects.filter(created_at__gte=since, routing_assignments__isnull=True)
               .values_list("id", flat=True)[:limit])
    for lead_id in ids:
        lead_route(lead_id=lead_id, trigger=Trigger.NEW_LEAD, reason="sweep of unrouted leads")
    return len(ids)


# --- First touch ---------------------------------------------------------------


@transaction.atomic
def first_touch_record(*, lead_id: int, source: str, at: datetime | None = None) -> bool:
    """Stop the SLA clock of the lead's current assignment (once)."""
    at = at or timezone.now()
    # The first touch also moves the lifecycle from open to worked (a closed
    # assignment stays closed).
    updated = Assignment.objects.filter(
        lead_id=lead_id, is_current=True, status=Status.ASSIGNED, first_touch_at__isnull=True, assigned_at__lte=at,
    ).update(first_touch_at=at, first_touch_source=source[:100],
             lifecycle=Case(When(lifecycle=Lifecycle.OPEN, then=Value(Lifecycle.WORKED)), default=F("lifecycle")))
    return bool(updated)


# --- Assignment lifecycle: open -> worked -> closed ----------------------------


@transaction.atomic
def assignment_close(*, lead_id: int, reason: str, at: datetime | None = None) -> Assignment | None:
    """Close the lead's current assignment (converted, disqualified, owner
    changed in the CRM, the API): it no longer counts against the rep's cap,
    and the SLA chain stops. A waiting one also leaves the waiting queue (it
    is no longer current), so a disqualified lead is never handed out later.
    Returns the closed assignment, None when there was nothing open (a
    repeated call changes nothing). Lock order: the lead, then the assignment.
    A freed place may let waiting leads through: the waiting queue runs in
    the background after commit."""
    if reason not in CloseReason.values:
        raise ValidationError({"reason": [f"{reason!r} is not a close reason; use one of {', '.join(CloseReason.values)}."]})
    at = at or timezone.now()
    if not list(Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk", flat=True)):
        raise ValidationError({"lead_id": [f"No lead with id {lead_id}."]})
    current = Assignment.objects.select_for_update().filter(lead_id=lead_id, is_current=True).first()
    if current is None or current.lifecycle == Lifecycle.CLOSED:
        return None
    current.lifecycle, current.closed_at, current.close_reason = Lifecycle.CLOSED, at, reason
    fields = ["lifecycle", "closed_at", "close_reason"]
    if current.status == Status.WAITING:
        current.is_current, current.ended_at, current.end_reason = False, at, f"closed: {reason}"[:100]
        fields += ["is_current", "ended_at", "end_reason"]
    current.save(update_fields=fields)
    if current.rep_id is not None:
        waiting_assign_later()
    return current


def assignment_touch(*, lead_id: int, source: str, at: datetime | None = None) -> Assignment | None:
    """The API's "the rep worked this lead": the first touch (stops the SLA
    clock, open -> worked). Returns the current assignment."""
    first_touch_record(lead_id=lead_id, source=source, at=at)
    return Assignment.objects.filter(lead_id=lead_id, is_current=True).first()


def crm_owner_changed(*, lead_ids: list[int]) -> int:
    """A CRM pull changed these leads' owner: where the new owner is not the
    rep of the current assignment, the CRM reassigned the lead and the
    assignment is closed (crm_owner_changed). Runs inside the pull's write
    (the lead row is locked there already). Returns how many closed."""
    closed = 0
    rows = Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, status=Status.ASSIGNED).exclude(
        lifecycle=Lifecycle.CLOSED).values_list("lead_id", "rep__user_id", "lead__owner_id")
    for lead_id, rep_user, owner in rows:
        if rep_user is None or rep_user != owner:
            closed += assignment_close(lead_id=lead_id, reason=CloseReason.CRM_OWNER) is not None
    return closed


SCORE_FIELDS = frozenset({"total_score", "fit_score", "engagement_score"})


def rules_read_score(rules: list[Rule]) -> bool:
    """Does a rule (that parses) read a score?"""
    compiled = _compiled(rules)
    bad = {r.pk for r, _ in compiled.invalid}
    return any(r.pk not in bad and (c := condition_compile(r.condition)) is not None and c.fields & SCORE_FIELDS
               for r in rules)


def leads_reroute_after_first_score(*, lead_ids: list[int], now: datetime | None = None) -> int:
    """New leads are routed when they are created, and scored after that
    commit (the scoring task), so a rule reading a score never saw a new
    lead's score. When the live rule set reads a score, a lead's FIRST
    scoring routes it once more: if its current assignment came from the
    new-lead trigger, is still open (no touch yet) and the live rules now
    match a different rule, it is rerouted (trigger ``first_score``; the
    old assignment is closed as reassigned). Later score moves never
    reroute (the assignment then comes from ``first_score``, or the lead has
    more than one score history row). Returns how many were rerouted."""
    from martech.scoring.models import ScoreHistory

    rule_set = live_rule_set() if lead_ids else None
    if rule_set is None:
        return 0
    rules = rules_of(rule_set)
    if not rules_read_score(rules):
        return 0
    rows = list(Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, trigger=Trigger.NEW_LEAD,
                                          lifecycle=Lifecycle.OPEN).values_list("pk", "lead_id", "rule_id"))
    if not rows:
        return 0
    scored = Counter(ScoreHistory.objects.filter(lead_id__in=[r[1] for r in rows]).values_list("lead_id", flat=True))
    moved = 0
    for assignment_id, lead_id, rule_id in rows:
        if scored[lead_id] > 1:
            continue
        lead = Lead.objects.select_related("account").get(pk=lead_id)
        rule = rule_match(rules, lead, now=now)
        if (rule.pk if rule else None) == rule_id:
            continue
        with transaction.atomic():
            # Checked again under the lead's lock: a touch or another route
            # in between wins, and a repeated signal finds nothing to do.
            Lead.objects.select_for_update().filter(pk=lead_id).values_list("pk", flat=True).first()
            if not Assignment.objects.filter(pk=assignment_id, is_current=True, lifecycle=Lifecycle.OPEN).exists():
                continue
            lead_route(lead_id=lead_id, trigger=Trigger.FIRST_SCORE, reroute=True, now=now,
                       reason=f"first score: rule {rule.name if rule else '(fallback)'} now matches")
            moved += 1
    return moved


def waiting_assign_later() -> None:
    """Serve the waiting queue in the background after this transaction
    commits (django-q2): an admin or API edit that may free a rep must not
    run the queue inside its request (it took 8-17 s). Nothing is enqueued
    when nothing waits; a lost wake-up only delays to the scheduled run."""
    def enqueue():
        if Assignment.objects.filter(status=Status.WAITING, is_current=True).exists():
            from django_q.tasks import async_task

            async_task("routing.tasks.assign_waiting", task_name="routing: waiting queue after an edit")
    transaction.on_commit(enqueue)


# --- Rule-set versions --------------------------------------------------------------


@transaction.atomic
def rule_set_copy(*, source: RuleSet | None, actor=None, note: str = "") -> RuleSet:
    """A new draft holding a copy of ``source``'s rules (None: empty)."""
    draft = RuleSet.objects.create(
        name=source.name if source else "Routing rules", fallback_team=source.fallback_team if source else None,
        copied_from=source, note=note or (f"copy of {source}" if source else ""),
    )
    if source is not None:
        Rule.objects.bulk_create([
            Rule(rule_set=draft, order=r.order, name=r.name, condition=r.condition, territory_id=r.territory_id,
                 action=r.action, team_id=r.team_id, rep_id=r.rep_id, is_active=r.is_active)
            for r in source.rules.order_by("order", "id")
        ])
    return draft


def _validate_for_publish(rule_set: RuleSet) -> None:
    errors: dict[str, list[str]] = {}
    if rule_set.fallback_team_id is None:
        errors["fallback_team"] = ["A fallback team is required, so no lead is left unassigned."]
    else:
        # A fallback nobody can take leads from would only fill the waiting queue.
        team = rule_set.fallback_team
        if not team.is_active:
            errors["fallback_team"] = [f"The fallback team {team.name!r} is inactive."]
        elif not team.reps.filter(is_active=True).exists():
            errors["fallback_team"] = [f"The fallback team {team.name!r} has no active reps to take leads."]
    for rule in rule_set.rules.all():
        try:
            rule.full_clean(exclude=["rule_set"])
        except ValidationError as exc:
            for f, msgs in exc.message_dict.items():
                errors.setdefault(f"rules.{rule.name}.{f}", []).extend(msgs)
    if errors:
        raise ValidationError(errors)


@retry_on_conflict
@transaction.atomic
def rule_set_publish(*, rule_set: RuleSet, actor=None) -> RuleSet:
    """Publish a draft as the next version (immutable from then on); it is
    live at once: routes read the live set's id with every lead. Versions
    are numbered under a lock on the published rows, FOR NO KEY UPDATE: it
    serializes publishes without blocking routes, whose assignments
    reference the live set (a foreign-key check takes KEY SHARE, which a
    FOR UPDATE lock would block). Publishing locks no team or rep row (the
    rules' foreign keys only take KEY SHARE, which the routes' FOR NO KEY
    UPDATE team and rep locks allow), so it never waits for a route holding
    them, nor a route for it (README, "Lock order, leases and retries")."""
    rule_set = RuleSet.objects.select_for_update(no_key=True).get(pk=rule_set.pk)
    if not rule_set.is_draft:
        raise ValidationError({"rule_set": [f"{rule_set} is already published; copy it to a new draft to change it."]})
    _validate_for_publish(rule_set)
    list(RuleSet.objects.select_for_update(no_key=True).filter(status=RuleSet.Status.PUBLISHED).values_list("id", flat=True))
    top = RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).aggregate(m=Max("version"))["m"] or 0
    rule_set.status, rule_set.version = RuleSet.Status.PUBLISHED, top + 1
    rule_set.published_at = timezone.now()
    rule_set.published_by = actor if getattr(actor, "is_authenticated", False) else None
    rule_set.save(update_fields=["status", "version", "published_at", "published_by"])
    log.info("routing rule set %s published by %s", rule_set, actor)
    return rule_set


@retry_on_conflict
@transaction.atomic
def rule_set_rollback(*, to: RuleSet, actor=None) -> RuleSet:
    """Make an earlier version live again: its rules are published as a new
    version (the history only grows, every assignment keeps its version).
    One short transaction that locks no team or rep (see ``rule_set_publish``)."""
    if to.is_draft:
        raise ValidationError({"rule_set": ["Only a published version can be rolled back to."]})
    copy = rule_set_copy(source=to, actor=actor, note=f"rollback to v{to.version}")
    return rule_set_publish(rule_set=copy, actor=actor)


def rule_edit_check(rule_set: RuleSet) -> None:
    """Published versions are immutable; every editor (admin, API) asks."""
    if not rule_set.is_draft:
        raise ValidationError({"rule_set": [f"{rule_set} is published and cannot be changed; copy it to a new draft."]})


def condition_check(text: str) -> None:
    try:
        condition_validate(text)
    except ValidationError as exc:
        raise ValidationError({"condition": exc.messages}) from None


# --- SLA escalation ---------------------------------------------------------------


def _notify(*, escalation_id: int, subject: str, body: str, to: list[str]) -> None:
    """Email and the Slack-compatible webhook, after commit. The Escalation
    row (unique per assignment and level) is the idempotency key: a second
    run of the task never gets here for the same step."""
    import json
    import urllib.request

    from django.conf import settings
    from django.core.mail import send_mail

    from routing.models import Escalation

    outcome: dict[str, str] = {}
    if to:
        try:
            send_mail(subject, body, None, to)
            outcome["email"] = "sent"
        except Exception as exc:  # noqa: BLE001 - a mail outage must not stop the chain; it is recorded
            outcome["email"] = f"failed: {exc}"[:200]
    url = settings.MARTECH_ROUTING["SLACK_WEBHOOK_URL"]
    if url:
        request = urllib.request.Request(url, data=json.dumps({"text": f"{subject}\n{body}"}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=settings.MARTECH_ROUTING["WEBHOOK_TIMEOUT"]) as response:
                outcome["webhook"] = f"sent ({response.status})"
        except Exception as exc:  # noqa: BLE001 - recorded on the escalation row, shown in the admin
            outcome["webhook"] = f"failed: {exc}"[:200]
    escalation = Escalation.objects.get(pk=escalation_id)
    Escalation.objects.filter(pk=escalation_id).update(detail={**escalation.detail, **outcome})


def routing_admin_emails() -> list[str]:
    """The routing admins (active users in the ``martech.roles.ROUTING_ADMINS``
    group) who have an email: the escalation path of last resort."""
    from django.contrib.auth import get_user_model

    from martech.roles import ROUTING_ADMINS

    return sorted(set(get_user_model().objects.filter(groups__name=ROUTING_ADMINS, is_active=True)
                      .exclude(email="").values_list("email", flat=True)))


def escalation_recipients(*, rep, team: Team | None) -> tuple[str | None, list[str]]:
    """Who hears of an SLA breach: the rep's manager, else the team's
    escalation contact, else the routing admins. Returns (via, emails);
    via is None (and emails empty) only when there is no path at all."""
    if rep.manager_id and rep.manager.email:
        return "manager", [rep.manager.email]
    team = team or rep.team
    contact = team.escalation_contact if team is not None and team.escalation_contact_id else None
    if contact is not None and contact.email:
        return "team escalation contact", [contact.email]
    admins = routing_admin_emails()
    return ("routing admins", admins) if admins else (None, [])


def teams_without_escalation_path() -> list[Team]:
    """Active teams with a rep (active, no manager) whose breaches would
    fall through to the routing admins: no escalation contact is set."""
    return list(Team.objects.filter(is_active=True, escalation_contact__isnull=True,
                                    reps__is_active=True, reps__manager__isnull=True).distinct().order_by("name"))


def _lead_label(lead: Lead) -> str:
    return f"{lead.email or lead.pk}"


def sla_escalate(*, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Walk overdue assignments (current, assigned, no first touch, past the
    SLA due time) one step along the chain each time a step is due:
    1 remind the rep (a sales task and an email), 2 notify the manager
    (email and webhook), 3 reassign (reroute excluding the rep). Each step
    is written once (Escalation is unique per level); rows another worker
    holds are skipped."""
    from martech.services.tasks import task_create
    from routing.models import Escalation

    now = now or timezone.now()
    counts = Counter()
    ids = list(Assignment.objects.filter(is_current=True, status=Status.ASSIGNED, first_touch_at__isnull=True,
                                         sla_due_at__lte=now).exclude(lifecycle=Lifecycle.CLOSED)
               .order_by("sla_due_at").values_list("id", "lead_id")[:limit])
    for assignment_id, lead_id in ids:
        with transaction.atomic():
            # The lead first, as lead_route does (same lock order, no deadlock).
            if not list(Lead.objects.select_for_update(skip_locked=True).filter(pk=lead_id).values_list("pk", flat=True)):
                continue
            a = (Assignment.objects.select_for_update(skip_locked=True, of=("self",))
                 .select_related("rep", "rep__manager", "sla_policy", "lead", "team", "team__escalation_contact")
                 .filter(pk=assignment_id, is_current=True, first_touch_at__isnull=True)
                 .exclude(lifecycle=Lifecycle.CLOSED).first())
            if a is None or a.rep is None or a.sla_policy is None:
                continue
            policy, rep = a.sla_policy, a.rep
            away = rep_absences_from(rep.pk, a.sla_due_at)  # the later steps count business hours too
            due = {
                Escalation.Level.REMIND_REP: a.sla_due_at,
                Escalation.Level.NOTIFY_MANAGER: engine.business_deadline(rep, a.sla_due_at, policy.notify_manager_after_hours, away),
                Escalation.Level.REASSIGN: engine.business_deadline(rep, a.sla_due_at, policy.reassign_after_hours, away),
            }
            level = a.escalation_level + 1
            if level > Escalation.Level.REASSIGN or now < due[level]:
                continue
            escalation, created = Escalation.objects.get_or_create(assignment=a, level=level, defaults={"created_at": now})
            if not created:
                continue
            Assignment.objects.filter(pk=a.pk).update(escalation_level=level)
            label = _lead_label(a.lead)
            if level == Escalation.Level.REMIND_REP:
                task_create(key=f"routing:sla-remind:{a.pk}", lead=a.lead, owner=rep.user, source="routing",
                            subject=f"First touch overdue: {label}", due_at=now)
                body = f"{label} was assigned to you at {a.assigned_at:%Y-%m-%d %H:%M} UTC; first touch was due {a.sla_due_at:%Y-%m-%d %H:%M} UTC."
                transaction.on_commit(lambda e=escalation.pk, b=body, to=[rep.email]: _notify(
                    escalation_id=e, subject="Reminder: lead waiting for first touch", body=b, to=to))
                counts["reminded"] += 1
            elif level == Escalation.Level.NOTIFY_MANAGER:
                via, to = escalation_recipients(rep=rep, team=a.team)
                body = f"{label} assigned to {rep.name} has had no first touch since {a.assigned_at:%Y-%m-%d %H:%M} UTC (due {a.sla_due_at:%Y-%m-%d %H:%M} UTC)."
                escalation.detail = {"manager": rep.manager.name if rep.manager else None, "via": via, "to": to}
                if not to:
                    escalation.detail["error"] = ("no escalation path: the rep has no manager, the team no escalation "
                                                  "contact, and no routing admin has an email")
                    log.warning("routing: SLA escalation %s has nobody to tell (rep %s)", escalation.pk, rep.pk)
                escalation.save(update_fields=["detail"])
                transaction.on_commit(lambda e=escalation.pk, b=body, to=to: _notify(
                    escalation_id=e, subject=f"SLA breach: {rep.name}", body=b, to=to))
                counts["manager_notified"] += 1
            else:
                # In the same transaction as the escalation row, so a crash
                # leaves neither (the next run retries the whole step).
                # Never back to a rep who had this lead before (the one who
                # breached, and any earlier one): no reassignment loop.
                before = set(Assignment.objects.filter(lead_id=a.lead_id, rep__isnull=False).values_list("rep_id", flat=True))
                new, _ = lead_route(lead_id=a.lead_id, trigger=Trigger.ESCALATION, reason="SLA breach: reassigned",
                                    reroute=True, now=now, exclude=before | {rep.pk})
                escalation.detail = {"new_assignment": new.pk, "rep": new.rep.name if new.rep else None,
                                     "status": new.status}
                escalation.save(update_fields=["detail"])
                counts["reassigned"] += 1
    return dict(counts)


# --- Configuration writes (reps, teams, territories, SLA policies, drafts) ------


def _live_fallback_id() -> int | None:
    return RuleSet.objects.filter(pk=Subquery(_live_pk_query())).values_list("fallback_team_id", flat=True).first()


def _lock_rep_with_team(rep_id: int, *team_ids: int | None) -> None:
    """Before a rep row is written outside a route: their team (and the one
    they move to), then the rep, the order routes lock them (README, "Lock
    order, leases and retries"). Without it, a rep saved while a route held
    their team and waited for the rep deadlocked as soon as the save went on
    to reroute the rep's leads through that team."""
    if connection.vendor != "postgresql":
        return
    current = Rep.objects.filter(pk=rep_id).values_list("team_id", flat=True).first()
    _lock_teams({t for t in (current, *team_ids) if t}, fallback_id=_live_fallback_id())
    _lock_reps([rep_id])


@retry_on_conflict
@transaction.atomic
def config_save(*, instance, data: dict[str, Any], actor=None):
    """Create or change a routing configuration row (admin and API). Runs
    the model's validation; a rep switched to inactive has their open leads
    rerouted in the same transaction. The save gives the routing
    configuration a new token (``configcache.watch`` in ``routing.apps``),
    so every process routes the next lead by it."""
    if isinstance(instance, Rep) and instance.pk:
        new_team = data.get("team")
        _lock_rep_with_team(instance.pk, getattr(new_team, "pk", new_team))
    was_active = Rep.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first() \
        if isinstance(instance, Rep) and instance.pk else None
    for key, value in data.items():
        setattr(instance, key, value)
    instance.full_clean()
    instance.save()
    if isinstance(instance, Rep) and was_active and not instance.is_active:
        rep_deactivate(rep=instance, actor=actor)
    if isinstance(instance, (Rep, Team)) and getattr(instance, "is_active", False):
        # A rep or team that may now take leads: serve the waiting queue soon
        # (in the background, not in this request) instead of at the next
        # scheduled run.
        waiting_assign_later()
    return instance


# What a rule payload may carry (API, imports, tests): anything else is an
# error naming the key, never dropped (a dropped "conditon" matched every lead).
RULE_KEYS = frozenset({"order", "name", "condition", "territory", "territory_id", "action", "team", "team_id", "rep",
                       "rep_id", "is_active"})


@transaction.atomic
def rule_set_save_draft(*, rule_set: RuleSet | None, data: dict[str, Any], rules: list[dict[str, Any]] | None,
                        actor=None) -> RuleSet:
    """Create a draft or change one; ``rules`` (when given) replaces the
    draft's rules in the given order. Published versions are refused."""
    if rule_set is None:
        rule_set = RuleSet()
    else:
        rule_set = RuleSet.objects.select_for_update().get(pk=rule_set.pk)
        rule_edit_check(rule_set)
    for key, value in data.items():
        setattr(rule_set, key, value)
    rule_set.full_clean()
    rule_set.save()
    if rules is not None:
        rule_set.rules.all().delete()
        errors: dict[str, list[str]] = {}
        built = []
        for i, row in enumerate(rules):
            unknown = sorted(set(row) - RULE_KEYS)
            if unknown:
                for key in unknown:
                    errors.setdefault(f"rules[{i}].{key}", []).append(
                        f"Unknown key {key!r}; a rule takes {', '.join(sorted(RULE_KEYS))}.")
                continue
            rule = Rule(rule_set=rule_set, **{"order": i, **row})
            try:
                rule.full_clean(exclude=["rule_set"])
            except ValidationError as exc:
                for f, msgs in exc.message_dict.items():
                    errors.setdefault(f"rules[{i}].{f}", []).extend(msgs)
            built.append(rule)
        if errors:
            raise ValidationError(errors)
        Rule.objects.bulk_create(built)
    return rule_set


@transaction.atomic
def rule_set_delete_draft(*, rule_set: RuleSet) -> None:
    rule_edit_check(rule_set)
    rule_set.delete()


# --- Batch routing (bulk jobs, the sweep, the benchmark) -----------------------------


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()  # full precision (DjangoJSONEncoder cuts to milliseconds)
    return DjangoJSONEncoder().default(value)


_QUEUE_CTE_PG = (
    f'WITH t AS (UPDATE "{Team._meta.db_table}" SET "rr_clock" = v.c FROM unnest(%s::bigint[], %s::float8[]) AS v(id, c) '
    f'WHERE "{Team._meta.db_table}"."id" = v.id), '
    f'r AS (UPDATE "{Rep._meta.db_table}" SET "rr_pass" = v.p FROM unnest(%s::bigint[], %s::float8[]) AS v(id, p) '
    f'WHERE "{Rep._meta.db_table}"."id" = v.id) '
)


def assignments_insert(rows: list[dict[str, Any]], *, batch_size: int = 1000,
                       queue: tuple[dict[int, float], dict[int, float]] | None = None) -> None:
    """Insert assignment rows (dicts of every column but the id).

    On PostgreSQL each batch goes as ONE JSON document expanded by
    ``jsonb_populate_recordset``: the explanations are serialized once, by
    the C JSON encoder, and the driver escapes one string. Through
    ``bulk_create`` every explanation became an element of an UNNEST text
    array that the driver escapes quote by quote in Python: 40% of bulk
    routing's CPU. Elsewhere (SQLite) ``bulk_create``.

    ``queue`` (PostgreSQL): fair-queue positions to write in the first
    statement, as ({team id: clock}, {rep id: pass})."""
    if queue is not None and (queue[0] or queue[1]) and (connection.vendor != "postgresql" or not rows):
        raise ValueError("queue positions ride on a PostgreSQL insert")
    if not rows:
        return
    if connection.vendor != "postgresql":
        Assignment.objects.bulk_create([Assignment(**row) for row in rows], batch_size=batch_size)
        return
    table = Assignment._meta.db_table
    columns = ", ".join(f'"{c}"' for c in rows[0])
    sql = f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::"{table}", %s::jsonb)'
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch_size):
            doc = json.dumps(rows[start:start + batch_size], default=_json_default, separators=(",", ":"))
            if start == 0 and queue is not None and (queue[0] or queue[1]):
                teams, reps = queue
                cursor.execute(_QUEUE_CTE_PG + sql, [list(teams), list(teams.values()), list(reps), list(reps.values()), doc])
            else:
                cursor.execute(sql, [doc])


@retry_on_conflict
@transaction.atomic
def leads_route_batch(*, lead_ids: list[int], trigger: str, reason: str = "", actor=None,
                      now: datetime | None = None) -> Counter:
    """Route many leads in one transaction with the same decisions
    ``lead_route`` makes one by one: leads locked (in id order) and those
    already assigned left alone; rules matched in memory; then every team
    the batch may need (ascending id, the fallback team last) and every
    capped rep of those teams or named by a rep rule (ascending id) are
    locked up front, so the batch never waits for a team while it holds a
    rep (README, "Lock order, leases and retries"); each team's fair queue,
    capacities and daily counts are advanced in memory as leads are handed
    out; assignments are inserted in bulk. Rules that target a rep or an
    account owner go through ``decide`` one lead at a time. Returns counts
    by status."""
    now = now or timezone.now()
    with configcache.snapshot():  # the configuration token, read once
        rule_set = live_rule_set()
        if rule_set is None:
            raise ValidationError({"rule_set": ["No routing rule set is published yet."]})
        rules = rules_of(rule_set)
    fallback = rule_set.fallback_team
    leads = list(Lead.objects.select_for_update(of=("self",)).select_related("account").filter(pk__in=lead_ids).order_by("pk"))
    taken = set(Assignment.objects.filter(lead_id__in=[l.pk for l in leads], is_current=True).values_list("lead_id", flat=True))
    counts: Counter = Counter(kept=len(taken))
    decisions: list[tuple[Lead, Decision]] = []
    by_team: dict[int, list[tuple[Lead, Decision]]] = {}
    direct: list[Lead] = []  # leads of rep and account-owner rules
    needed_teams: set[int] = set()
    direct_reps: list = []
    for lead in leads:
        if lead.pk in taken:
            continue
        rule = rule_match(rules, lead, now=now)
        if rule is not None and rule.action in (Rule.Action.REP, Rule.Action.ACCOUNT_OWNER):
            # Decided below, once the locks are held; what it may lock is gathered now.
            if rule.action == Rule.Action.REP:
                who = rule.rep
            else:
                account, _ = account_match(lead)
                who = Rep.objects.filter(user_id=account.owner_id).select_related("team", "backup").first() \
                    if account and account.owner_id else None
            if who is not None:
                direct_reps.append(who)
                if who.backup_id:
                    direct_reps.append(who.backup)
            needed_teams.update(t for t in (rule.team_id, who.team_id if who else None) if t)
            direct.append(lead)
            continue
        d = Decision(status=Status.WAITING, rule_set=rule_set, rule=rule, steps=_skipped_steps(rules))
        d.steps.append({"step": "rule", "matched": rule.name if rule else None, "action": rule.action if rule else "fallback"})
        if rule is not None and rule.action == Rule.Action.NURTURE:
            d.status, d.method = Status.NURTURE, "nurture"
            decisions.append((lead, d))
            continue
        team = rule.team if rule is not None else fallback
        by_team.setdefault(team.pk, []).append((lead, d))
        decisions.append((lead, d))
    if by_team or direct:
        needed_teams.update(by_team)
        needed_teams.add(fallback.pk)  # any of them may overflow to it
    _lock_teams(needed_teams, fallback_id=fallback.pk)
    # Each team read once (locked above): its reps, their loads counted
    # after their locks, and its in-memory queue shared by the team's own
    # leads and the fallback queue's.
    order = sorted(t for t in needed_teams if t != fallback.pk) + ([fallback.pk] if fallback.pk in needed_teams else [])
    team_reads = {t: _team_read(t, lock=True) for t in order}
    reps_of = {t: team_reps(t, now) if team_reads[t].is_active else [] for t in order}
    held = {r.pk for reps in reps_of.values() for r in reps if has_cap(r)} | {r.pk for r in direct_reps if has_cap(r)}
    _lock_reps(held)
    _batch.reps = held
    try:
        for lead in direct:
            # Written at once, as lead_route writes: the next lead's count of a
            # capped rep (and the teams' counts below) must include this one.
            d = decide(lead=lead, rule_set=rule_set, now=now, lock=True, rules=rules)
            _write(lead=lead, decision=d, trigger=trigger, reason=reason or trigger, actor=actor, now=now, previous=None)
            counts[d.status] += 1
    finally:
        _batch.reps = ()
    if direct:  # their picks moved fair queues: read them again
        team_reads = {t: _team_read(t, lock=True) for t in order}
        reps_of = {t: team_reps(t, now) if team_reads[t].is_active else [] for t in order}
    overflow: list[tuple[Lead, Decision]] = []
    rep_updates: dict[int, Rep] = {}
    team_updates: dict[int, float] = {}
    pools: dict[int, tuple[Team, list[engine.Candidate]]] = {}
    for team_id in [t for t in order if t in by_team] + [None]:
        if team_id is None:  # the fallback queue takes what the teams could not
            if not overflow:
                break
            team_id, batch, why = fallback.pk, overflow, "fallback queue"
        else:
            batch, why = by_team[team_id], "team"
        if team_id not in pools:
            team, reps = team_reads[team_id], reps_of[team_id]
            pools[team_id] = (team, _candidates(reps, now, team_id=team.pk, loads=rep_loads(
                reps, now, everyone=team.method == Team.Method.LEAST_LOADED)))
        team, candidates = pools[team_id]
        by_rep = {c.rep.pk: c for c in candidates}
        counted = any(has_cap(c.rep) for c in candidates) or team.method == Team.Method.LEAST_LOADED
        rows = None
        for lead, d in batch:
            if rows is None or counted:
                rows = [c.as_json() for c in candidates]
            pick = engine.choose(team, candidates)
            d.steps.append({"step": why, "team": team.name, "team_id": team.pk, "method": team.method, "candidates": rows,
                            "outcome": f"chose {pick.rep.name}" if pick.rep else "nobody eligible"})
            d.method = d.method or team.method
            if pick.rep is None:
                if why == "team" and team.pk != fallback.pk:
                    d.team = team
                    overflow.append((lead, d))
                else:
                    d.team = d.team or team
                    d.steps.append({"step": "waiting", "team": d.team.name, "outcome": "waiting until someone is eligible"})
                continue
            team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
            rep_updates[pick.rep.pk] = pick.rep
            d.status, d.rep, d.team, d.method = Status.ASSIGNED, pick.rep, team, team.method
            c = by_rep[pick.rep.pk]
            d.absences = c.absences
            if counted:
                c.open_count += 1
                c.today_count += 1
                if has_cap(c.rep):
                    c.skipped = engine.capacity_reason(c.rep, open_count=c.open_count, today_count=c.today_count)
        team_updates[team.pk] = team.rr_clock
        if why == "fallback queue":
            break
    pg = connection.vendor == "postgresql"
    if not pg:
        for team_id, clock in team_updates.items():
            Team.objects.filter(pk=team_id).update(rr_clock=clock)
        if rep_updates:
            Rep.objects.bulk_update([Rep(id=r.pk, rr_pass=r.rr_pass) for r in rep_updates.values()], ["rr_pass"],
                                    batch_size=500)
    deadlines: dict[tuple[int, int], Any] = {}
    rows = []
    for lead, d in decisions:
        policy, due = None, None
        if d.status == Status.ASSIGNED:
            key = (d.rep.pk, d.team.pk if d.team else 0)
            if key not in deadlines:
                deadlines[key] = _sla_for(d, now)
            policy, due = deadlines[key]
        rows.append({
            "lead_id": lead.pk, "status": d.status, "is_current": True, "rep_id": d.rep.pk if d.rep else None,
            "team_id": d.team.pk if d.team else None, "rule_set_id": rule_set.pk, "rule_set_version": rule_set.version,
            "rule_id": d.rule.pk if d.rule else None, "rule_name": d.rule.name if d.rule else "", "method": d.method,
            "trigger": trigger, "reason": (reason or trigger)[:255], "explanation": d.explanation(),
            "actor_id": actor.pk if getattr(actor, "is_authenticated", False) else None, "created_at": now,
            "assigned_at": now if d.status == Status.ASSIGNED else None, "ended_at": None, "end_reason": "",
            "sla_policy_id": policy.pk if policy else None, "sla_due_at": due, "first_touch_at": None,
            "first_touch_source": "", "escalation_level": 0, "lifecycle": Lifecycle.OPEN, "closed_at": None,
            "close_reason": "",
        })
        counts[d.status] += 1
    if pg:
        # The teams' clocks and the reps' positions go with the first insert
        # statement: the team locks are held until commit, so every round
        # trip after the first lock is time the other workers wait.
        assignments_insert(rows, queue=(team_updates, {r.pk: r.rr_pass for r in rep_updates.values()}))
    else:
        assignments_insert(rows)
    # Owners: leads whose owner changes go one by one through lead_set_owner
    # (owner_set); those whose rep has no Django user but a CRM owner id
    # only need the CRM told: one hooks call for the batch.
    crm_only = []
    for lead, d in decisions:
        if d.status != Status.ASSIGNED or d.rep is None:
            continue
        if lead.owner_id != d.rep.user_id:
            owner_set(lead=lead, rep=d.rep, reason=reason or trigger, actor=actor)
        elif d.rep.hubspot_owner_id or d.rep.salesforce_user_id:
            crm_only.append(lead.pk)
    hooks.leads_changed(ids=crm_only, fields=["owner"], source="routing")
    return counts
