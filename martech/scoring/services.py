"""Scoring, lifecycle automation and the SQL handoff (every write here).

Score semantics (hand-computable, see tests/scoring/test_scores.py):

- fit = sum of ``points`` of the active model's fit rules whose condition
  matches the lead (evaluated in the database with ``Condition.to_q``);
- engagement = sum over engagement rules of the points of the lead's events of
  the rule's type that match the rule's property condition, where
  * with ``distinct_property`` only the first event (by time) per distinct
    value of that property counts (an event without the property does not);
  * with ``cap_points`` the events of one period (UTC day / ISO week / month,
    or ever) give at most ``cap_points`` together: each event gives
    ``min(points, what is left of the cap)`` in time order;
  * with a half-life, each event's points are multiplied by
    ``0.5 ** (age_in_days / half_life_days)`` at computation time;
  and the sum is rounded to the nearest integer;
- total = fit + engagement.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, JSONField, Max, Min, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from martech import configcache, hooks, signals
from martech.conditions import Condition, load_fields, parse
from martech.db import run_in_transaction
from martech.models import Event, Lead, LifecycleStage, StageTransition
from martech.scoring.models import (
    EngagementRule,
    FitRule,
    Handoff,
    LifecycleRule,
    ScoreHistory,
    ScoringModel,
    Segment,
    StaleFlag,
)
from martech.services import capture
from martech.services.leads import lead_change_stage, lead_set_owner
from martech.services.tasks import task_create

log = logging.getLogger(__name__)

# Lead fields whose change can move a score: everything a condition can read.
# A fit rule's Condition.fields says which; we rescore on any of them.


def conf(key: str):
    return settings.MARTECH_SCORING[key]


# --- Rules --------------------------------------------------------------------


@dataclass
class _Rules:
    model: ScoringModel | None
    fit: list[tuple[FitRule, Condition]] = field(default_factory=list)
    engagement: list[tuple[EngagementRule, Condition | None]] = field(default_factory=list)
    # Relations the fit conditions read, for select_related on the one-lead
    # path, and the columns: the read is narrowed to those (.only), so that a
    # rescoring does not build the whole lead row and its account.
    related: tuple[str, ...] = ()
    load: tuple[str, ...] = ("engagement_score", "fit_score", "total_score")

    @property
    def fields(self) -> frozenset[str]:
        out: set[str] = set()
        for _, cond in self.fit:
            out |= {f.split(".", 1)[0] if not f.startswith("account.") else "account" for f in cond.fields}
        return frozenset(out)

    @property
    def event_type_ids(self) -> list[int]:
        return sorted({r.event_type_id for r, _ in self.engagement})


def _related_for(conds: Iterable[Condition]) -> tuple[str, ...]:
    out: set[str] = set()
    for cond in conds:
        for f in cond.fields:
            if f.startswith("account."):
                out.add("account__owner" if f == "account.owner" else "account")
            elif f in ("owner", "lifecycle_stage"):
                out.add(f)
    if "account__owner" in out:
        out.discard("account")
    return tuple(sorted(out))


def _load_rules(model: ScoringModel) -> _Rules:
    fit = [(r, parse(r.condition)) for r in FitRule.objects.filter(model=model, is_active=True).order_by("pk")]
    eng = [(r, parse(r.condition) if r.condition else None)
           for r in EngagementRule.objects.filter(model=model, is_active=True).order_by("pk")]
    paths = {path for _, cond in fit for path in cond.fields}
    return _Rules(model, fit, eng, _related_for(c for _, c in fit),
                  tuple(sorted(load_fields(paths) | set(_Rules.load))))


# Parsed rules of the active model, per worker process (martech.configcache):
# re-parsing and re-reading the rules on every event was most of the
# incremental rescoring's work. Saving or deleting the model or a rule gives
# "scoring.rules" a new token in the same transaction (apps.py watches them),
# so a cached entry is never used after an edit made through save() (the
# admin, the demo, services). A queryset .update() of rules bypasses that:
# call configcache.bump("scoring.rules") afterwards.
RULES_KEY = "scoring.rules"


def _load_active() -> _Rules:
    model = ScoringModel.objects.filter(is_active=True).order_by("pk").first()
    return _load_rules(model) if model is not None else _Rules(None)


def active_rules() -> _Rules:
    return configcache.cached(RULES_KEY, _load_active)


def lead_fields_read() -> frozenset[str]:
    """The lead's own fields that the active model's fit rules or an active
    lifecycle rule read (model field names, a relation's with and without
    ``_id``), and its stage: a change of any other field (a CRM id written
    back, a note) can move no score and no stage, and queues no rescoring.
    Read through the rules' caches, current across processes."""
    with configcache.snapshot():  # both tokens in one query
        rules, lifecycle = active_rules(), configcache.cached(LIFECYCLE_KEY, _load_lifecycle)
    conds = [c for _, c in rules.fit] + [c for _, c in lifecycle.rules if c is not None]
    names = {name.split("__", 1)[0] for name in load_fields({p for c in conds for p in c.fields})}
    names.add("lifecycle_stage")
    return frozenset(names | {f"{name}_id" for name in names})


def score_fields_read() -> frozenset[str]:
    """The lead's own fields the active model's fit rules read (as
    ``lead_fields_read``): a change of no other field can move a score
    (engagement reads events only)."""
    rules = active_rules()
    names = {name.split("__", 1)[0] for name in load_fields({p for _, c in rules.fit for p in c.fields})}
    return frozenset(names | {f"{name}_id" for name in names})


class _EventView:
    """Lets a property-only condition read an event's properties."""

    account_id = None

    def __init__(self, properties):
        self.properties = properties


def _bucket(at: dt.datetime, period: str):
    at = at.astimezone(dt.UTC)
    if period == EngagementRule.Period.DAY:
        return at.date()
    if period == EngagementRule.Period.WEEK:
        return at.isocalendar()[:2]
    if period == EngagementRule.Period.MONTH:
        return (at.year, at.month)
    return None


def _distinct_key(value):
    """Equal keys for values PostgreSQL's jsonb calls equal (1 and 1.0 are
    one number, "1" is text, true is neither), so the in-memory and the SQL
    path count the same distinct values."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", Decimal(str(value)))
    if isinstance(value, str):
        return ("s", value)
    return ("j", json.dumps(value, sort_keys=True))


@dataclass
class Contribution:
    kind: str  # fit / engagement
    rule_id: int
    rule: str
    points: float
    events: int = 0
    last_at: dt.datetime | None = None

    def stored(self) -> dict:
        """The ScoreHistory.breakdown entry (engagement points to 2 places)."""
        return {"kind": self.kind, "rule_id": self.rule_id, "rule": self.rule,
                "points": int(self.points) if self.kind == "fit" else round(self.points, 2),
                "events": self.events, "last_at": self.last_at.isoformat() if self.last_at else None}


def _engagement(rule: EngagementRule, cond: Condition | None, events: list[tuple[dt.datetime, int, dict]],
                half_life: Decimal | None, now: dt.datetime) -> Contribution:
    """One rule over one lead's events of its type. Events are taken in
    (time, id) order, the order the SQL path's window functions use."""
    seen: set = set()
    used: dict = defaultdict(int)
    total = 0.0
    counted = 0
    last = None
    for occurred_at, _id, props in sorted(events, key=lambda e: (e[0], e[1])):
        if cond is not None and not cond.evaluate(_EventView(props), now=now):
            continue
        if rule.distinct_property:
            value = props.get(rule.distinct_property) if isinstance(props, dict) else None
            if value is None or value == "":
                continue
            key = _distinct_key(value)
            if key in seen:
                continue
            seen.add(key)
        points = rule.points
        if rule.cap_points is not None:
            bucket = _bucket(occurred_at, rule.cap_period)
            points = max(0, min(points, rule.cap_points - used[bucket]))
            used[bucket] += points
            if points == 0:
                continue
        if half_life:
            age_days = max(0.0, (now - occurred_at).total_seconds() / 86400)
            points = points * 0.5 ** (age_days / float(half_life))
        total += points
        counted += 1
        last = occurred_at
    return Contribution("engagement", rule.pk, rule.name, total, counted, last)


IN_MEMORY_MAX = 50
IDS_PER_STATEMENT = 1000
ANALYZE_AFTER_CHANGED = 10_000


_EVENT_FIELDS = ("lead_id", "event_type_id", "occurred_at", "id", "properties")
_one_lead_sql: dict[tuple, tuple[str, list]] = {}


def _one_lead_events(lead_id: int, type_ids: list[int]) -> list[tuple]:
    """The scored events of one lead (an event's rescoring, the hot path), as
    plain SQL: building the same query through the ORM cost more CPU than
    running it (index on lead, occurred_at). The statement and the columns'
    converters (the ORM's own: dates on SQLite, JSON) are made once per
    process and set of event types."""
    key = (connection.alias, tuple(type_ids))
    stmt = _one_lead_sql.get(key)
    if stmt is None:
        fields = [Event._meta.get_field(name) for name in _EVENT_FIELDS]
        q = connection.ops.quote_name
        sql = (f"SELECT {', '.join(q(f.column) for f in fields)} FROM {q(Event._meta.db_table)} "
               f"WHERE {q(fields[0].column)} = %s AND {q(fields[1].column)} IN ({', '.join(['%s'] * len(type_ids))})")
        converters = []
        for f in fields:
            col = f.get_col(Event._meta.db_table)
            converters.append((col, connection.ops.get_db_converters(col) + f.get_db_converters(connection)))
        stmt = _one_lead_sql[key] = (sql, converters)
    sql, converters = stmt
    with connection.cursor() as cursor:
        cursor.execute(sql, [lead_id, *type_ids])
        rows = cursor.fetchall()
    out = []
    for row in rows:
        values = []
        for value, (col, funcs) in zip(row, converters):
            for func in funcs:
                value = func(value, col, connection)
            values.append(value)
        out.append(tuple(values))
    return out


def _compute(leads: list, rules: _Rules, now: dt.datetime) -> dict[int, list[Contribution]]:
    """Per lead (Lead objects, or bare ids for a big batch), what each rule
    gives now: fit rules first, then engagement rules, each by rule id."""
    ids = [getattr(x, "pk", x) for x in leads]
    out: dict[int, list[Contribution]] = {i: [] for i in ids}
    if rules.model is None or not ids:
        return out
    if leads and not isinstance(leads[0], int):
        # A few leads (the incremental path): conditions evaluated in memory
        # on the rows already read (evaluate and to_q agree; see the
        # condition property tests).
        for lead in leads:
            for rule, cond in rules.fit:
                if cond.evaluate(lead, now=now):
                    out[lead.pk].append(Contribution("fit", rule.pk, rule.name, rule.points))
    else:
        # A contiguous id range (the bulk path) is cheaper to scan than IN (...).
        lo, hi = min(ids), max(ids)
        if hi - lo + 1 == len(ids):
            scope = Lead.objects.filter(pk__gte=lo, pk__lte=hi)
        else:
            scope = Lead.objects.filter(pk__in=ids)
        for rule, cond in rules.fit:
            for lead_id in scope.filter(cond.to_q(now=now)).values_list("pk", flat=True):
                out[lead_id].append(Contribution("fit", rule.pk, rule.name, rule.points))
    if rules.engagement:
        events: dict[tuple[int, int], list] = defaultdict(list)
        if len(ids) == 1:
            rows = _one_lead_events(ids[0], rules.event_type_ids)
        else:
            rows = (Event.objects.filter(event_type_id__in=rules.event_type_ids, lead_id__in=ids).order_by()
                    .values_list(*_EVENT_FIELDS))
            # A server-side cursor (iterator) only pays off for a big batch.
            rows = rows.iterator(chunk_size=5000) if len(ids) > IN_MEMORY_MAX else rows
        for lead_id, type_id, occurred_at, pk, props in rows:
            events[(lead_id, type_id)].append((occurred_at, pk, props if isinstance(props, dict) else {}))
        for lead_id in ids:
            for rule, cond in rules.engagement:
                evs = events.get((lead_id, rule.event_type_id))
                if not evs:
                    continue
                c = _engagement(rule, cond, evs, rules.model.half_life_days, now)
                if c.events:
                    out[lead_id].append(c)
    return out


def score_breakdown(lead_ids: list[int], *, rules: _Rules | None = None, now: dt.datetime | None = None
                    ) -> dict[int, list[Contribution]]:
    """Per lead, what each rule of the active model would give now (a
    preview; what the lead page shows is the stored breakdown of its last
    computation, selectors.score_explanation)."""
    rules = rules or active_rules()
    now = now or timezone.now()
    ids = sorted(set(lead_ids))
    if len(ids) <= IN_MEMORY_MAX:
        qs = Lead.objects.filter(pk__in=ids)
        if rules.related:
            qs = qs.select_related(*rules.related)
        out: dict[int, list[Contribution]] = {i: [] for i in ids}
        out.update(_compute(list(qs), rules, now))
        return out
    return _compute(ids, rules, now)


def _totals(parts: list[Contribution]) -> tuple[int, int]:
    fit = sum(int(c.points) for c in parts if c.kind == "fit")
    eng = round(sum(c.points for c in parts if c.kind == "engagement"))
    return fit, eng


def _rule_ids(breakdown) -> list[int]:
    return sorted(int(e["rule_id"]) for e in breakdown or [] if isinstance(e, dict) and "rule_id" in e)


def _last_breakdown():
    # The latest history row's breakdown, as plain SQL: the same subquery
    # built with Subquery(OuterRef) cost 0.7 ms of ORM compilation on every
    # incremental rescoring (half of reading the lead). Served by the
    # (lead, changed_at) index of ScoreHistory.
    q = connection.ops.quote_name
    history, lead = q(ScoreHistory._meta.db_table), q(Lead._meta.db_table)
    return RawSQL(f"SELECT h.{q('breakdown')} FROM {history} h WHERE h.{q('lead_id')} = {lead}.{q('id')} "
                  f"ORDER BY h.{q('changed_at')} DESC, h.{q('id')} DESC LIMIT 1", (), output_field=JSONField())


def scores_recompute(*, lead_ids: Iterable[int], reason: str, now: dt.datetime | None = None,
                     rules: _Rules | None = None, batch_signal: bool = False) -> int:
    """Recompute and store the scores of these leads (the in-memory path:
    events, tasks, a batch on SQLite). A lead whose totals or whose set of
    scoring rules changed gets a ScoreHistory row carrying the per-rule
    breakdown; ``score_changed`` is announced after commit when the total
    moved (``scores_changed`` once instead, with ``batch_signal``: the bulk
    path). Idempotent: a second run with nothing new changes nothing.
    Returns the number of leads with a new history row.

    The configuration this unit of work reads (the rules, the CRM push
    mappings its hooks read, the score-trigger workflows its after-commit
    receivers read) is checked with one query (configcache.snapshot)."""
    ids = sorted(set(lead_ids))
    if not ids:
        return 0
    with configcache.snapshot():
        return _scores_recompute(ids, reason=reason, now=now, rules=rules or active_rules(),
                                 batch_signal=batch_signal)


@transaction.atomic
def _scores_recompute(ids: list[int], *, reason: str, now: dt.datetime | None, rules: _Rules,
                      batch_signal: bool) -> int:
    now = now or timezone.now()
    # One query locks the leads and reads what the fit rules need and the
    # breakdown stored last time.
    qs = (Lead.objects.select_for_update(of=("self",)).filter(pk__in=ids).order_by("pk")
          .annotate(last_breakdown=_last_breakdown()))
    small = len(ids) <= IN_MEMORY_MAX
    if small:
        if rules.related:
            qs = qs.select_related(*rules.related)
        leads = list(qs.only(*rules.load))
        current = {lead.pk: (lead.fit_score, lead.engagement_score, lead.total_score, lead.last_breakdown)
                   for lead in leads}
        breakdown = _compute(leads, rules, now)
    else:
        current = {pk: (f, e, t, b) for pk, f, e, t, b in qs.values_list(
            "pk", "fit_score", "engagement_score", "total_score", "last_breakdown")}
        breakdown = _compute(sorted(current), rules, now)
    changed: list[tuple[int, int, int, int]] = []
    history: list[ScoreHistory] = []
    announce: list[tuple[int, int, int]] = []
    for pk, (old_fit, old_eng, old_total, old_breakdown) in current.items():
        parts = breakdown.get(pk, [])
        fit, eng = _totals(parts)
        total = fit + eng
        if (fit, eng, total) == (old_fit, old_eng, old_total) and \
                _rule_ids(old_breakdown) == sorted(c.rule_id for c in parts):
            continue
        changed.append((pk, fit, eng, total))
        history.append(ScoreHistory(lead_id=pk, changed_at=now, fit_score=fit, engagement_score=eng,
                                    total_score=total, old_total=old_total, reason=reason[:100],
                                    breakdown=[c.stored() for c in parts]))
        if total != old_total:
            announce.append((pk, old_total, total))
    if changed:
        # One UPDATE per distinct (fit, engagement) pair: scores take few
        # values, so a batch of thousands of leads is a handful of statements
        # (bulk_update's per-row CASE is far slower at this size).
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for pk, fit, eng, total in changed:
            groups[(fit, eng, total)].append(pk)
        table = connection.ops.quote_name(Lead._meta.db_table)
        at = connection.ops.adapt_datetimefield_value(now)
        with connection.cursor() as cursor:
            for (fit, eng, total), pks in groups.items():
                # Plain SQL: cheaper in CPU than the ORM on this hot path; at most 1,000
                # ids a statement (SQLite's limit on parameters).
                for i in range(0, len(pks), IDS_PER_STATEMENT):
                    part = pks[i:i + IDS_PER_STATEMENT]
                    cursor.execute(
                        f"UPDATE {table} SET fit_score = %s, engagement_score = %s, total_score = %s, "
                        f"updated_at = %s WHERE id IN ({', '.join(['%s'] * len(part))})", [fit, eng, total, at, *part])
        ScoreHistory.objects.bulk_create(history, batch_size=1000)
        hooks.leads_changed(ids=[row[0] for row in changed],
                            fields=["fit_score", "engagement_score", "total_score"], source="scoring")
    _announce(announce, batch=batch_signal)
    return len(changed)


def _announce(announce: list[tuple[int, int, int]], *, batch: bool) -> None:
    def _send():
        if batch:
            signals.scores_changed.send(sender=Lead, changes=announce)
            return
        for pk, old, new in announce:
            signals.score_changed.send(sender=Lead, lead_id=pk, old_total=old, new_total=new)

    if announce:
        transaction.on_commit(_send)


def scores_recompute_all(*, batch_size: int = 50000, reason: str = "bulk recompute", progress=None,
                         now: dt.datetime | None = None, set_based: bool | None = None) -> int:
    """Every lead, in chunks of lead ids (each its own transaction).
    ``progress(n)`` is called after each chunk with the leads it covered.
    Score moves are announced with ``scores_changed``, once per chunk.

    On PostgreSQL the work is set-based (martech.scoring.bulk: one statement
    per chunk computes fit, engagement, the breakdown and writes scores and
    history); elsewhere, or with ``set_based=False``, each batch goes through
    the in-memory ``scores_recompute``. Both give the same scores
    (tests/scoring/test_bulk_sql.py)."""
    rules = active_rules()
    now = now or timezone.now()
    if set_based is None:
        set_based = connection.vendor == "postgresql"
    elif set_based and connection.vendor != "postgresql":
        raise ValueError(f"set_based: the set-based recompute needs PostgreSQL, not {connection.vendor}")
    changed = 0
    if set_based and rules.model is not None:
        from martech.scoring import bulk

        bounds = Lead.objects.aggregate(lo=Min("pk"), hi=Max("pk"))
        if bounds["lo"] is None:
            return 0
        for lo in range(bounds["lo"], bounds["hi"] + 1, batch_size):
            hi = min(lo + batch_size - 1, bounds["hi"])
            with transaction.atomic():
                rows = bulk.recompute_range(lo=lo, hi=hi, rules=rules, now=now, reason=reason)
                if rows:
                    hooks.leads_changed(ids=[r[0] for r in rows],
                                        fields=["fit_score", "engagement_score", "total_score"], source="scoring")
                    _announce([r for r in rows if r[1] != r[2]], batch=True)
            changed += len(rows)
            if progress:
                progress(Lead.objects.filter(pk__gte=lo, pk__lte=hi).count())
        if changed >= ANALYZE_AFTER_CHANGED:
            # The score columns' distribution just changed wholesale; without
            # fresh statistics the planner took "total_score >= 10" for one
            # row and nested-looped a segment count into 17 s (bench/README.md).
            # Autovacuum would get there, but only after 10% of the table
            # changed and its next round; small runs are left to it.
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(Lead._meta.db_table)}")
        return changed
    last = 0
    batch_size = min(batch_size, 10000)  # the in-memory path lists ids as parameters
    while True:
        ids = list(Lead.objects.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return changed
        changed += scores_recompute(lead_ids=ids, reason=reason, now=now, rules=rules, batch_signal=True)
        last = ids[-1]
        if progress:
            progress(len(ids))


# --- Segments ---------------------------------------------------------------------


@transaction.atomic
def segment_save(*, segment: Segment | None = None, name: str, condition: str, description: str = "") -> Segment:
    """Create or change a segment; stores the parsed form beside the text."""
    segment = segment or Segment()
    segment.name, segment.condition, segment.description = name, condition, description
    segment.full_clean(exclude=["condition_json"])
    segment.condition_json = parse(condition).to_json()
    segment.save()
    return segment


# --- Lifecycle --------------------------------------------------------------------


def _order(stage_id: int | None, orders: dict[int, int]) -> int:
    return -1 if stage_id is None else orders.get(stage_id, -1)


# The lifecycle rules (parsed) and the stages' order, per worker process
# (martech.configcache), like the scoring rules: every event's task runs them.
LIFECYCLE_KEY = "scoring.lifecycle"


@dataclass(frozen=True)
class _Lifecycle:
    orders: dict[int, int]
    rules: tuple[tuple[LifecycleRule, Condition | None], ...]
    # What the conditions read, for a narrow read of a few leads (as _Rules).
    related: tuple[str, ...]
    load: tuple[str, ...]


def _load_lifecycle() -> _Lifecycle:
    rules = tuple((r, parse(r.condition) if r.condition else None)
                  for r in LifecycleRule.objects.filter(is_active=True).select_related("to_stage"))
    conds = [c for _, c in rules if c is not None]
    return _Lifecycle(dict(LifecycleStage.objects.values_list("pk", "order")), rules, _related_for(conds),
                      tuple(sorted(load_fields({p for c in conds for p in c.fields}) | {"lifecycle_stage"})))


def lifecycle_rows_current(changed_fields: Iterable[str]) -> bool:
    """Whether whole lead rows read (with their stage) before a change of
    ``changed_fields`` still hold everything the lifecycle conditions read:
    then ``lifecycle_apply`` may take them (``leads=``) instead of its read."""
    lifecycle = configcache.cached(LIFECYCLE_KEY, _load_lifecycle)
    if not set(lifecycle.related) <= {"lifecycle_stage"}:
        return False
    names = {name.split("__", 1)[0] for name in lifecycle.load}
    return not set(changed_fields) & (names | {f"{name}_id" for name in names})


def lifecycle_apply(*, lead_ids: Iterable[int], event_type_ids: Iterable[int] = (), actor=None,
                    now: dt.datetime | None = None, leads: dict[int, Lead] | None = None) -> list[StageTransition]:
    """Run the active lifecycle rules (in order) over these leads; the first
    rule that moves a lead wins. Condition rules apply when the condition
    matches; event rules when one of ``event_type_ids`` just arrived (and the
    condition, if any, matches). Forward only unless the rule allows going
    back. Every move goes through lead_change_stage.

    A few leads (an event's task) are read once and the conditions evaluated
    in memory; a bigger set is filtered in SQL rule by rule (``evaluate``
    and ``to_q`` agree: the condition property tests). ``leads``: these
    leads' whole rows, as the caller read them in its unit of work, current
    in what the conditions read (``lifecycle_rows_current``): no read of
    them here (the capture task).

    In the capture task a move to SQL starts its handoff in the move's
    transaction (``_handoff_in_move``)."""
    now = now or timezone.now()
    event_type_ids = set(event_type_ids)
    lifecycle = configcache.cached(LIFECYCLE_KEY, _load_lifecycle)
    orders = lifecycle.orders
    moved: list[StageTransition] = []
    pending = set(lead_ids)
    rules = [(rule, cond) for rule, cond in lifecycle.rules
             if not rule.event_type_id or rule.event_type_id in event_type_ids]
    if not rules or not pending:
        return moved
    in_memory: dict[int, Lead] | None = None
    if leads is not None and len(pending) <= IN_MEMORY_MAX:
        in_memory = {pk: leads[pk] for pk in pending if pk in leads}
    elif len(pending) <= IN_MEMORY_MAX:
        qs = Lead.objects.filter(pk__in=pending).select_related(*lifecycle.related).only(*lifecycle.load)
        in_memory = {lead.pk: lead for lead in qs}
    for rule, cond in rules:
        if not pending:
            break
        if in_memory is not None:
            candidates = [in_memory[pk] for pk in sorted(pending) if pk in in_memory
                          and (cond is None or cond.evaluate(in_memory[pk], now=now))]
        else:
            qs = Lead.objects.filter(pk__in=pending)
            if cond is not None:
                qs = qs.filter(cond.to_q(now=now))
            candidates = qs.only("pk", "lifecycle_stage_id")
        for lead in candidates:
            target = orders[rule.to_stage_id]
            current = _order(lead.lifecycle_stage_id, orders)
            if target == current or (target < current and not rule.allow_backward):
                continue
            with transaction.atomic():
                # Decided again under the lead's lock: ``lead`` was read
                # before it, and a concurrent task may have moved it on.
                tr = lead_change_stage(lead=lead, to_stage=rule.to_stage, reason=f"rule: {rule.name}"[:255],
                                       actor=actor, source="lifecycle_rule", forward_only=not rule.allow_backward,
                                       savepoint=False)
                if tr is not None and capture.in_task():
                    _handoff_in_move(tr)
            if tr is not None:
                moved.append(tr)
                pending.discard(lead.pk)
    return moved


def lead_recycle(*, lead: Lead, to_stage: LifecycleStage | str = "lead", reason: str, actor=None
                 ) -> StageTransition | None:
    """The explicit way back (e.g. an SQL sales rejected goes back to lead),
    recorded with its reason and actor like any other move."""
    if not reason or not reason.strip():
        raise ValidationError({"reason": ["Give a reason for recycling the lead."]})
    return lead_change_stage(lead=lead, to_stage=to_stage, reason=f"recycled: {reason.strip()}"[:255],
                             actor=actor, source="recycle")


def opportunity_stage_apply(*, kind: str, lead_ids: Iterable[int]) -> list[StageTransition]:
    """Opportunity created -> "opportunity", closed won -> "customer"
    (forward only: a customer does not become an opportunity again)."""
    target_key = {"created": "opportunity", "won": "customer"}.get(kind)
    if target_key is None:
        return []
    target = LifecycleStage.objects.get(key=target_key)
    orders = dict(LifecycleStage.objects.values_list("pk", "order"))
    moved = []
    for lead in Lead.objects.filter(pk__in=list(lead_ids)).only("pk", "lifecycle_stage_id"):
        if _order(lead.lifecycle_stage_id, orders) >= target.order:
            continue
        tr = lead_change_stage(lead=lead, to_stage=target, reason=f"opportunity {kind}", source="opportunity",
                               forward_only=True)
        if tr is not None:
            moved.append(tr)
    return moved


@transaction.atomic
def stale_mqls_flag(*, now: dt.datetime | None = None) -> tuple[int, int]:
    """Flag MQLs with no activity (latest touch, else the MQL move) for
    STALE_MQL_DAYS; clear flags of leads active again or no longer MQL.
    Returns (flagged, cleared)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=conf("STALE_MQL_DAYS"))
    mql = LifecycleStage.objects.filter(key="mql").first()
    if mql is None:
        return 0, 0
    cleared, _ = StaleFlag.objects.exclude(lead__lifecycle_stage=mql).delete()
    c2, _ = StaleFlag.objects.filter(lead__latest_touch_at__gte=cutoff).delete()
    flagged = 0
    for lead_id, touch in Lead.objects.filter(lifecycle_stage=mql, stale_flag__isnull=True).values_list(
            "pk", "latest_touch_at"):
        moved_at = (StageTransition.objects.filter(lead_id=lead_id, to_stage=mql)
                    .order_by("-changed_at").values_list("changed_at", flat=True).first())
        last = max(t for t in (touch, moved_at) if t is not None) if (touch or moved_at) else None
        if last is None or last < cutoff:
            StaleFlag.objects.get_or_create(lead_id=lead_id, defaults={"flagged_at": now, "last_activity_at": last})
            flagged += 1
    return flagged, cleared + c2


# --- SQL handoff ---------------------------------------------------------------------


@transaction.atomic
def handoff_start(*, transition_id: int) -> Handoff | None:
    """Owner, follow-up task and SLA clock for a move to SQL. Idempotent per
    transition (a retried task finds the Handoff and does nothing)."""
    if not conf("HANDOFF_ENABLED"):
        return None
    transition = StageTransition.objects.select_related("to_stage", "lead").get(pk=transition_id)
    if transition.to_stage.key != "sql":
        return None
    return _handoff(transition, transition.lead)


def _handoff_in_move(transition: StageTransition) -> None:
    """In the capture task, a lifecycle rule's move to SQL starts its
    handoff in the move's transaction (a savepoint: a failed handoff leaves
    the move standing, and its announcement then starts the handoff as
    before: ``receivers._stage_changed``). The lead is the task's own read
    of it (no read of the transition and its lead)."""
    if not conf("HANDOFF_ENABLED") or transition.to_stage.key != "sql":
        return
    lead = capture.task_lead(transition.lead_id) or Lead.objects.get(pk=transition.lead_id)
    try:
        with transaction.atomic():
            _handoff(transition, lead, new=True)
    except Exception:  # noqa: BLE001 - the announcement starts it instead
        log.exception("SQL handoff of transition %s failed in the lifecycle step; left to its announcement",
                      transition.pk)
        return
    capture.note_handoff(transition.pk)


def _handoff(transition: StageTransition, lead: Lead, *, new: bool = False) -> Handoff:
    # ``new``: the move was made in this transaction, uncommitted: no other
    # transaction can have a handoff referencing it yet.
    if not new:
        existing = Handoff.objects.select_for_update().filter(transition=transition).first()
        if existing is not None:
            return existing
    assigned_by = "unchanged"
    reason = f"SQL handoff ({transition.reason})"[:255]
    if hooks.call("assign_owner", lead_id=lead.pk, reason=reason, actor=None):
        assigned_by = "routing"
    else:
        username = conf("HANDOFF_DEFAULT_OWNER")
        owner = get_user_model().objects.filter(username=username).first() if username else None
        if owner is not None:
            lead_set_owner(lead=lead, owner=owner, reason=reason, source="handoff")
            assigned_by = "default_queue"
        else:
            log.warning("SQL handoff of lead %s: no routing and no default owner %r", lead.pk, username)
    lead.refresh_from_db(fields=["owner"])
    task, _ = task_create(
        key=f"handoff:{transition.pk}", lead=lead, owner=lead.owner,
        subject=f"Follow up with SQL {lead}"[:255],
        description=f"Reached SQL at {transition.changed_at:%Y-%m-%d %H:%M} UTC: {transition.reason}",
        due_at=transition.changed_at + dt.timedelta(hours=conf("HANDOFF_TASK_DUE_HOURS")), source="handoff",
    )
    handoff = Handoff.objects.create(transition=transition, lead=lead, started_at=transition.changed_at,
                                     owner=lead.owner, assigned_by=assigned_by, task=task)
    from martech.scoring import tasks

    tasks.handoffs_notify_wake_on_commit()  # the batch of waiting notifications (notified_at is null)
    return handoff


def handoffs_notify(*, retry: bool = False, limit: int = 200) -> dict[str, int]:
    """Send the notifications of the handoffs waiting for them (``notified_at``
    null): many handoffs in one task run instead of a task each. First tries
    only (``retry`` False: the woken run, at once) or the failed ones too,
    below HANDOFF_NOTIFY_ATTEMPTS tries (the minute's sweep, so a failing
    webhook is tried once a minute, not at every capture). Each handoff is
    locked (SKIP LOCKED: a concurrent run leaves it) and re-read while
    locked, so a notification goes once. Returns the counts."""
    from django.db.models import F

    filters = {"notified_at__isnull": True}
    if retry:
        filters["notify_attempts__lt"] = conf("HANDOFF_NOTIFY_ATTEMPTS")
    else:
        filters["notify_attempts"] = 0
    counts = {"notified": 0, "failed": 0}
    if not conf("HANDOFF_NOTIFY_EMAILS") and not conf("HANDOFF_WEBHOOK_URL"):
        # Nothing to send for a handoff whose owner has no address: all of
        # them done in one UPDATE (a lock or a send per handoff is for sends).
        counts["notified"] = Handoff.objects.filter(
            Q(owner__isnull=True) | Q(owner__email=""), **filters).update(notified_at=timezone.now())
    ids = list(Handoff.objects.filter(**filters).order_by("pk").values_list("pk", flat=True)[:limit])
    for handoff_id in ids:
        with transaction.atomic():
            handoff = (Handoff.objects.select_for_update(skip_locked=True, of=("self",))
                       .select_related("lead", "owner").filter(pk=handoff_id, **filters).first())
            if handoff is None:
                continue
            sent, errors = handoff_notify_send(handoff)
            if errors:
                counts["failed"] += 1
                Handoff.objects.filter(pk=handoff.pk).update(
                    **sent, last_error="; ".join(errors)[:2000], notify_attempts=F("notify_attempts") + 1)
            else:
                counts["notified"] += 1
                Handoff.objects.filter(pk=handoff.pk).update(**sent, notified_at=timezone.now())
    if counts["failed"]:
        log.warning("SQL handoff notifications: %s failed (kept for the sweep's retry)", counts["failed"])
    return counts


def handoff_notify_send(handoff: Handoff) -> tuple[dict, list[str]]:
    """Email and webhook of one handoff (``martech.notify``), each only when
    not sent yet. Returns ({field: sent time} of what was sent now, errors);
    the caller records them in one UPDATE."""
    from martech import notify

    lead = handoff.lead
    text = (f"SQL handoff: {lead} (score {lead.total_score}) assigned to "
            f"{handoff.owner.username if handoff.owner else 'nobody'} at {handoff.started_at:%Y-%m-%d %H:%M} UTC")
    key = f"scoring:handoff:{handoff.pk}"
    sent_at: dict = {}
    errors: list[str] = []
    if handoff.email_sent_at is None:
        recipients = list(conf("HANDOFF_NOTIFY_EMAILS"))
        if handoff.owner and handoff.owner.email:
            recipients.append(handoff.owner.email)
        if recipients:
            sent = notify.email_send(subject=f"New SQL: {lead}", body=text, to=sorted(set(recipients)),
                                     source="scoring:handoff", key=f"{key}:email")
            if sent.ok:
                sent_at["email_sent_at"] = sent.finished_at
            else:
                errors.append(f"email: {sent.error}")
    if handoff.webhook_sent_at is None and conf("HANDOFF_WEBHOOK_URL"):
        sent = notify.webhook_post(url=conf("HANDOFF_WEBHOOK_URL"), payload={
            "text": text, "lead_id": lead.pk, "handoff_id": handoff.pk}, source="scoring:handoff",
            key=f"{key}:webhook", timeout=conf("WEBHOOK_TIMEOUT"))
        if sent.ok:
            sent_at["webhook_sent_at"] = sent.finished_at
        else:
            errors.append(f"webhook: {sent.error}")
    return sent_at, errors


def handoffs_sweep(*, now: dt.datetime | None = None, grace: dt.timedelta = dt.timedelta(minutes=1),
                   days: int = 7, limit: int = 500) -> int:
    """Start the handoff a lost wake-up left: a move to SQL (within ``days``,
    older than ``grace`` so the task it woke has had its turn) that is still
    the lead's latest stage move and has no handoff. ``handoff_start`` is
    idempotent per transition, so a sweep racing that task does no harm.
    Returns the handoffs started."""
    if not conf("HANDOFF_ENABLED"):
        return 0
    now = now or timezone.now()
    later = StageTransition.objects.filter(lead_id=OuterRef("lead_id"), changed_at__gt=OuterRef("changed_at"))
    ids = list(StageTransition.objects.filter(
        to_stage__key="sql", changed_at__gte=now - dt.timedelta(days=days), changed_at__lte=now - grace,
        handoff__isnull=True,
    ).exclude(Exists(later)).order_by("changed_at").values_list("pk", flat=True)[:limit])
    started = 0
    for transition_id in ids:
        if run_in_transaction(lambda t=transition_id: handoff_start(transition_id=t)) is not None:
            started += 1
    if started:
        log.warning("SQL handoff sweep: started %s handoff(s) a lost wake-up left", started)
    return started
