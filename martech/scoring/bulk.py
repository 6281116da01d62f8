"""Set-based recomputation of one range of lead ids on PostgreSQL.

``recompute_range`` runs one statement that does in the database what
``services.scores_recompute`` does in Python, with the same semantics
(services' module docstring):

- fit: each fit rule's condition compiled to a Q (the same ``to_q`` segments
  use) becomes a boolean column of one scan of the leads in the range (which
  also reads their current scores); fit points, breakdown entries and rule
  ids are CASE sums / concatenations over those columns;
- engagement, per rule: the events of its type in the range, filtered by the
  rule's property condition (``to_q`` on the event's properties), then
  * distinct values: ROW_NUMBER() over (lead, value) in (time, id) order,
    keep the first; a missing, null or "" value does not count;
  * cap per period: ROW_NUMBER() k over (lead, UTC day/ISO week/month) in
    (time, id) order; event k gives GREATEST(0, LEAST(p, cap - (k-1)*p)),
    the closed form of "min(points, what is left of the cap)" (p > 0; with
    p <= 0 a capped rule gives nothing, as in Python);
  * decay: points * 0.5 ^ (max(0, age in days) / half-life), in float8 as
    Python's floats;
- per lead: fit = sum of fit points, engagement = round(sum) (round half
  to even in both), the breakdown as jsonb;
- write: leads whose totals or set of scoring rules changed get their
  scores (UPDATE ... FROM) and a ScoreHistory row (INSERT ... SELECT), in
  the same statement.

The UPDATE only writes a lead whose scores are still the ones this statement
read (compare-and-set): an incremental rescoring that committed meanwhile
computed from newer events and wins; its task already ran.
"""
from __future__ import annotations

import datetime as dt
import json

from django.db import connection
from django.db.models import BooleanField, Case, Value, When

from martech.models import Event, Lead
from martech.scoring.models import EngagementRule, ScoreHistory

_TRUNC = {EngagementRule.Period.DAY: "day", EngagementRule.Period.WEEK: "week",
          EngagementRule.Period.MONTH: "month"}


def _sql(qs) -> tuple[str, list]:
    sql, params = qs.query.sql_with_params()
    return sql, list(params)


def _lead_scan(rules, lo: int, hi: int, now: dt.datetime) -> tuple[str, list, list[str], list[str], list]:
    """One scan of the leads in the range: current scores and one boolean
    column per fit rule. Returns the SQL and params, plus SQL expressions
    (over alias ``s``) for fit points, fit breakdown entries and fit rule ids."""
    ann = {f"f{i}": Case(When(cond.to_q(now=now), then=Value(True)), default=Value(False),
                         output_field=BooleanField())
           for i, (_, cond) in enumerate(rules.fit)}
    qs = (Lead.objects.filter(pk__gte=lo, pk__lte=hi).order_by().annotate(**ann)
          .values("pk", "fit_score", "engagement_score", "total_score", *ann))
    scan, params = _sql(qs)
    points, entries, ids, eparams = [], [], [], []
    for i, (rule, _) in enumerate(rules.fit):
        points.append(f"CASE WHEN s.f{i} THEN {int(rule.points)} ELSE 0 END")
        entries.append(f"CASE WHEN s.f{i} THEN %s::jsonb ELSE '[]'::jsonb END")
        eparams.append(json.dumps([{"kind": "fit", "rule_id": rule.pk, "rule": rule.name, "points": int(rule.points),
                                    "events": 0, "last_at": None}]))
        ids.append(f"CASE WHEN s.f{i} THEN ARRAY[{int(rule.pk)}] ELSE '{{}}'::int[] END")
    return scan, params, points, entries, ids, eparams


def _engagement_parts(rule: EngagementRule, cond, half_life, lo: int, hi: int, now: dt.datetime
                      ) -> tuple[str, list]:
    qs = Event.objects.filter(lead_id__gte=lo, lead_id__lte=hi, event_type_id=rule.event_type_id).order_by()
    if cond is not None:
        qs = qs.filter(cond.to_q(now=now))
    src, params = _sql(qs.values("lead_id", "occurred_at", "id", "properties"))
    sql = f"SELECT lead_id, occurred_at, id FROM ({src}) src"
    if rule.distinct_property:
        key = rule.distinct_property
        sql = (
            f"SELECT lead_id, occurred_at, id, ROW_NUMBER() OVER (PARTITION BY lead_id, properties -> %s "
            f"ORDER BY occurred_at, id) AS dn FROM ({src}) src "
            f"WHERE properties -> %s IS NOT NULL AND properties -> %s NOT IN ('null'::jsonb, '\"\"'::jsonb)"
        )
        params = [key, *params, key, key]
        sql = f"SELECT lead_id, occurred_at, id FROM ({sql}) d WHERE dn = 1"
    p = rule.points
    if rule.cap_points is not None:
        if p <= 0:
            return "", []
        trunc = _TRUNC.get(rule.cap_period)
        bucket = f"date_trunc('{trunc}', occurred_at AT TIME ZONE 'UTC')" if trunc else "0"
        sql = (f"SELECT lead_id, occurred_at, GREATEST(0, LEAST(%s, %s - (k - 1) * %s))::float8 AS pts FROM ("
               f"SELECT lead_id, occurred_at, ROW_NUMBER() OVER (PARTITION BY lead_id, {bucket} "
               f"ORDER BY occurred_at, id) AS k FROM ({sql}) c) k")
        params = [p, rule.cap_points, p, *params]
        sql = f"SELECT lead_id, occurred_at, pts FROM ({sql}) capped WHERE pts > 0"
    else:
        sql = f"SELECT lead_id, occurred_at, %s::float8 AS pts FROM ({sql}) plain"
        params = [p, *params]
    if half_life:
        value = ("pts * power(0.5::float8, GREATEST(0::float8, EXTRACT(EPOCH FROM (%s::timestamptz - occurred_at))"
                 "::float8 / 86400) / %s::float8)")
        vparams = [now, float(half_life)]
    else:
        value, vparams = "pts", []
    sql = (f"SELECT lead_id, 'engagement'::text AS kind, %s::int AS rule_id, %s::text AS rule, SUM({value}) AS points, "
           f"COUNT(*) AS events, MAX(occurred_at) AS last_at FROM ({sql}) e GROUP BY lead_id")
    return sql, [rule.pk, rule.name, *vparams, *params]


def recompute_range(*, lo: int, hi: int, rules, now: dt.datetime, reason: str) -> list[tuple[int, int, int]]:
    """Recompute leads with ``lo <= id <= hi``; returns (lead id, old total,
    new total) of each lead that got a history row."""
    scan, params, fit_points, fit_entries, fit_ids, fit_params = _lead_scan(rules, lo, hi, now)
    parts, eparams = [], []
    for rule, cond in rules.engagement:
        sql, p = _engagement_parts(rule, cond, rules.model.half_life_days, lo, hi, now)
        if sql:
            parts.append(sql)
            eparams += p
    if not parts:
        parts.append("SELECT NULL::int AS lead_id, NULL::text AS kind, NULL::int AS rule_id, NULL::text AS rule, "
                     "NULL::float8 AS points, NULL::bigint AS events, NULL::timestamptz AS last_at WHERE false")
    lead_t = connection.ops.quote_name(Lead._meta.db_table)
    hist_t = connection.ops.quote_name(ScoreHistory._meta.db_table)
    union = " UNION ALL ".join(f"({p})" for p in parts)
    fit = " + ".join(fit_points) or "0"
    breakdown = " || ".join([*fit_entries, "COALESCE(e.breakdown, '[]'::jsonb)"])
    rule_ids = " || ".join([*fit_ids, "COALESCE(e.rule_ids, '{}'::int[])"])
    sql = f"""
WITH s AS ({scan}),
eparts AS ({union}),
eagg AS (
    SELECT lead_id, round(SUM(points))::int AS eng,
           jsonb_agg(jsonb_build_object(
               'kind', kind, 'rule_id', rule_id, 'rule', rule, 'points', to_jsonb(round(points::numeric, 2)),
               'events', events, 'last_at', last_at) ORDER BY rule_id) AS breakdown,
           array_agg(rule_id) AS rule_ids
    FROM eparts GROUP BY lead_id
),
prev AS (
    SELECT DISTINCT ON (lead_id) lead_id,
           ARRAY(SELECT (x ->> 'rule_id')::int FROM jsonb_array_elements(
               CASE WHEN jsonb_typeof(breakdown) = 'array' THEN breakdown ELSE '[]'::jsonb END) x) AS rule_ids
    FROM {hist_t}
    WHERE lead_id BETWEEN %s AND %s ORDER BY lead_id, changed_at DESC, id DESC
),
calc AS (
    SELECT s.pk AS id, s.fit_score AS old_fit, s.engagement_score AS old_eng, s.total_score AS old_total,
           ({fit})::int AS fit, COALESCE(e.eng, 0) AS eng, {breakdown} AS breakdown, {rule_ids} AS rule_ids,
           COALESCE(p.rule_ids, '{{}}'::int[]) AS prev_ids
    FROM s LEFT JOIN eagg e ON e.lead_id = s.pk LEFT JOIN prev p ON p.lead_id = s.pk
),
changed AS (
    -- Totals moved, or other rules give them (a set comparison: no rule twice).
    SELECT * FROM calc
    WHERE (fit, eng, fit + eng) IS DISTINCT FROM (old_fit, old_eng, old_total)
       OR NOT (rule_ids <@ prev_ids AND rule_ids @> prev_ids)
),
upd AS (
    UPDATE {lead_t} l SET fit_score = c.fit, engagement_score = c.eng, total_score = c.fit + c.eng,
                          updated_at = %s
    FROM changed c
    WHERE l.id BETWEEN %s AND %s AND l.id = c.id AND l.fit_score = c.old_fit
      AND l.engagement_score = c.old_eng AND l.total_score = c.old_total
    RETURNING l.id
),
hist AS (
    INSERT INTO {hist_t} (lead_id, changed_at, fit_score, engagement_score, total_score, old_total, reason,
                          breakdown)
    SELECT c.id, %s, c.fit, c.eng, c.fit + c.eng, c.old_total, %s, c.breakdown
    FROM changed c JOIN upd u ON u.id = c.id
)
SELECT c.id, c.old_total, c.fit + c.eng FROM changed c JOIN upd u ON u.id = c.id ORDER BY c.id
"""
    # Parameters in the order their placeholders appear in the text.
    all_params = [*params, *eparams, lo, hi, *fit_params, now, lo, hi, now, reason[:100]]
    with connection.cursor() as cursor:
        # The range bound on the UPDATE keeps it on the primary key (without
        # it the planner hashes the whole lead table for every chunk). JIT
        # compiling this statement costs more than it saves at this size.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, all_params)
        return [tuple(r) for r in cursor.fetchall()]
