"""Reads routing decides from: a lead's account, a team's reps with their
absences, and reps' loads and capacity (one computation for the router,
the decision record and the admin)."""
from __future__ import annotations

import json
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import lru_cache

from django.db import connection
from django.db.models import Count, OuterRef, Q, TextField
from django.db.models.functions import Cast

from martech.models import Account, Lead
from martech.services.normalize import free_mail_domains, normalize_domain
from routing import engine
from routing.models import Assignment, OutOfOffice, Rep, open_assignments_q
from routing.services.prepared import compiled_sql, compiled_where, prepared_cache

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
        sql, params = compiled_sql(qs)
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
    cache = prepared_cache()
    found = cache.get("loads")
    if found is None:
        qs = Assignment.objects.filter(open_assignments_q())
        where, params = compiled_where(qs)
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


def rep_absences_from(rep_id: int, at: datetime) -> list[tuple[datetime, datetime]]:
    """The rep's out-of-office periods not over at ``at``."""
    return list(OutOfOffice.objects.filter(rep_id=rep_id, ends_at__gt=at).values_list("starts_at", "ends_at"))
