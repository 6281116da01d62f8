"""Materializing attribution results (AttributionCredit) from touchpoints and
opportunities, with the math in attribution.engine.

An opportunity's path is the touchpoints of all its contact roles' leads from
``LOOKBACK_DAYS`` before its creation through its close (through now while it
is open), in time order. Its opportunity-creation touch is the last touch at
or before its creation. Time decay measures age back from the close of a
closed opportunity and from the creation of an open one (open pipeline).

The data-driven models learn their channel values from every journey: each
opportunity's path (converting when won) and, as non-converting journeys, the
touches of every lead that has no opportunity. A full run learns and stores
them (AttributionRun); an incremental run for a few opportunities reuses the
stored values (and learns them first if there are none).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import Iterable, Iterator, Sequence

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, DecimalField, F, Max, Min, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.db.models.functions import TruncDate
from django.utils import timezone
from tqdm import tqdm

from attribution import engine
from attribution.money import Conversion, RateTable, company_currency, opportunity_rate_day
from attribution.models import (
    AttributionCredit,
    AttributionModel,
    AttributionRollup,
    AttributionRun,
    Opportunity,
    OpportunityContactRole,
    PositionWeights,
    Touchpoint,
)

log = logging.getLogger(__name__)

ALL_MODELS = tuple(m.value for m in AttributionModel)
CREDIT_COLUMNS = (
    "model", "opportunity_id", "touchpoint_id", "channel", "campaign_id", "touched_at", "is_opportunity_creation",
    "first_of_opportunity", "first_of_channel", "first_of_campaign", "first_of_channel_campaign", "weight", "credit", "currency", "is_won", "is_closed", "opportunity_created_at", "opportunity_closed_at",
    "rate_date", "company_credit",
)
_CREATED, _CLOSED = CREDIT_COLUMNS.index("opportunity_created_at"), CREDIT_COLUMNS.index("opportunity_closed_at")


# PostgreSQL types of CREDIT_COLUMNS, for binary COPY.
COPY_TYPES = (
    "varchar", "int8", "int8", "varchar", "int8", "timestamptz", "bool",
    "bool", "bool", "bool", "bool", "float8", "numeric", "varchar", "bool", "bool", "timestamptz", "timestamptz",
    "date", "numeric",
)
assert len(COPY_TYPES) == len(CREDIT_COLUMNS)


def first_flags(keys: Sequence[tuple[str, int | None]]) -> list[tuple[bool, bool, bool, bool]]:
    """For one opportunity's credit rows as (channel, campaign id): is each row
    the first of the opportunity, of its channel, of its campaign, of its
    (channel, campaign) pair?"""
    seen_channel: set = set()
    seen_campaign: set = set()
    seen_pair: set = set()
    flags = []
    for i, (channel, campaign) in enumerate(keys):
        flags.append((i == 0, channel not in seen_channel, campaign not in seen_campaign, (channel, campaign) not in seen_pair))
        seen_channel.add(channel)
        seen_campaign.add(campaign)
        seen_pair.add((channel, campaign))
    return flags


def _ts(value: datetime) -> float:
    return value.timestamp()


def _load_touches(lead_ids: Iterable[int] | None) -> dict[int, list[tuple]]:
    """lead id -> [(at, touchpoint id, channel, campaign id, occurred_at, is_lead_creation)] in time order."""
    qs = Touchpoint.objects.all()
    if lead_ids is not None:
        qs = qs.filter(lead_id__in=list(lead_ids))
    per_lead: dict[int, list[tuple]] = defaultdict(list)
    for tp_id, lead_id, at, channel, campaign_id, is_lc in qs.order_by().values_list(
        "id", "lead_id", "occurred_at", "channel", "campaign_id", "is_lead_creation"
    ).iterator(chunk_size=20000):
        per_lead[lead_id].append((_ts(at), tp_id, channel, campaign_id, at, is_lc))
    for touches in per_lead.values():
        touches.sort()
    return per_lead


def _opportunities(opportunity_ids: Sequence[int] | None) -> list[dict]:
    # In creation order: a full run sums the rollup as it goes (RollupAccumulator),
    # and deals of one creation day (and nearby close days) in a row keep hitting
    # the same few groups, which stay in the CPU's caches; in id order, a deal
    # imported or synced with an old date lands in a group last touched long
    # before (at a quarter of the bench's size, summing took 30% less CPU).
    qs = Opportunity.objects.order_by("created_at", "id")
    if opportunity_ids is not None:
        qs = qs.filter(pk__in=list(opportunity_ids))
    return list(qs.values("id", "amount", "currency", "created_at", "closed_at", "stage__is_won", "stage__is_lost"))


def _roles(opportunity_ids: Sequence[int] | None) -> dict[int, list[int]]:
    qs = OpportunityContactRole.objects.order_by()
    if opportunity_ids is not None:
        qs = qs.filter(opportunity_id__in=list(opportunity_ids))
    roles: dict[int, list[int]] = defaultdict(list)
    for opp_id, lead_id in qs.values_list("opportunity_id", "lead_id").iterator(chunk_size=20000):
        roles[opp_id].append(lead_id)
    return roles


def _path(opp: dict, lead_ids: list[int], touches: dict[int, list[tuple]], now: datetime) -> tuple[list[tuple], engine.PathContext, list[engine.Touch]]:
    lookback = timedelta(days=settings.MARTECH_ATTRIBUTION["LOOKBACK_DAYS"])
    start = _ts(opp["created_at"] - lookback)
    closed = opp["closed_at"] is not None and (opp["stage__is_won"] or opp["stage__is_lost"])
    end = _ts(opp["closed_at"] if closed else now)
    rows = sorted(t for lead_id in lead_ids for t in touches.get(lead_id, ()) if start <= t[0] <= end)
    created = _ts(opp["created_at"])
    opp_creation = max((i for i, t in enumerate(rows) if t[0] <= created), default=None)
    path = [
        engine.Touch(channel=t[2], at=t[0], is_lead_creation=t[5], is_opportunity_creation=(i == opp_creation))
        for i, t in enumerate(rows)
    ]
    ctx = engine.PathContext(
        reference_at=_ts(opp["closed_at"]) if closed else created,
        won_at=_ts(opp["closed_at"]) if closed and opp["stage__is_won"] else None,
    )
    return rows, ctx, path


def journeys_collect(*, now: datetime | None = None, progress: bool = False) -> dict[engine.Journey, int]:
    """Every journey in the data, counted by (channel path, converted)."""
    now = now or timezone.now()
    touches = _load_touches(None)
    roles = _roles(None)
    journeys: dict[engine.Journey, int] = defaultdict(int)
    for opp in tqdm(_opportunities(None), desc="journeys", unit="opp", disable=not progress):
        rows, _ctx, _path_ = _path(opp, roles.get(opp["id"], []), touches, now)
        if rows:
            journeys[(tuple(t[2] for t in rows), bool(opp["stage__is_won"]))] += 1
    with_opportunity = {lead_id for leads in roles.values() for lead_id in leads}
    for lead_id, rows in touches.items():
        if lead_id not in with_opportunity:
            journeys[(tuple(t[2] for t in rows), False)] += 1
    return journeys


def channel_values_learn(*, model: str, journeys: dict[engine.Journey, int]) -> dict[str, float]:
    if model == "markov_global":
        values, gap = engine.markov_global_fit(journeys)
        if gap > engine.MARKOV_GLOBAL_TOLERANCE:
            # Not an error: the data allow no closer fit (see engine). Said so ops can tell.
            log.warning("markov_global: no split over each deal's own channels meets the global shares; "
                        "the closest leaves %.4f%% of the conversions off a channel's share", gap * 100)
    else:
        values = engine.channel_values(model, journeys)
    AttributionRun.objects.update_or_create(
        model=model, defaults={"channel_values": values, "journeys": sum(journeys.values()), "computed_at": timezone.now()}
    )
    return values


def _weighers(models: Sequence[str], *, full: bool, progress: bool) -> dict[str, object]:
    half_life = settings.MARTECH_ATTRIBUTION["HALF_LIFE_DAYS"]
    weighers = {}
    journeys = None
    for model in models:
        kwargs: dict = {"half_life_days": half_life}
        if model == "custom":
            kwargs["custom_weights"] = (PositionWeights.objects.first() or PositionWeights()).as_weights()
        if model in engine.DATA_DRIVEN:
            run = None if full else AttributionRun.objects.filter(model=model).first()
            if run is None:
                journeys = journeys if journeys is not None else journeys_collect(progress=progress)
                kwargs["channel_values"] = channel_values_learn(model=model, journeys=journeys)
            else:
                kwargs["channel_values"] = run.channel_values
        weighers[model] = engine.weigher(model, **kwargs)
    return weighers


def _write(rows: Iterable[tuple]) -> int:
    """Insert credit rows (tuples in CREDIT_COLUMNS order), streamed: a full
    run's millions of rows are never all in memory. Returns the count."""
    n = 0
    if connection.vendor == "postgresql":
        # COPY is several times faster than INSERT for the millions of rows of a full run.
        # Binary COPY: the server reads numerics and timestamps without parsing text.
        # The queued writer sends from a thread, so building rows here and the
        # server loading them overlap instead of taking turns.
        from psycopg.copy import QueuedLibpqWriter

        cols = ", ".join(CREDIT_COLUMNS)
        with connection.cursor() as cursor:
            sql = f"COPY attribution_attributioncredit ({cols}) FROM STDIN (FORMAT BINARY)"
            with cursor.cursor.copy(sql, writer=QueuedLibpqWriter(cursor.cursor)) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
                    n += 1
        return n
    batch: list[AttributionCredit] = []
    for row in rows:
        batch.append(AttributionCredit(**dict(zip(CREDIT_COLUMNS, row))))
        if len(batch) == 5000:
            AttributionCredit.objects.bulk_create(batch)
            n += len(batch)
            batch = []
    AttributionCredit.objects.bulk_create(batch)
    return n + len(batch)


@contextmanager
def secondary_indexes_suspended() -> Iterator[None]:
    """Drop the credits table's secondary indexes for the block and build
    them again after it, when the table is empty at the start (a full run
    after its TRUNCATE or DELETE): building an index once over millions of
    new rows costs the server under half of updating it row by row as the
    COPY goes (measured on this machine: 500,000 rows, 4.2 s maintained
    against 1.9 s loaded bare and indexed after). Use inside the transaction
    that writes the rows: DROP INDEX locks the credits table (as the TRUNCATE
    does) until commit, and a failure rolls the drop back with the rest. The
    reports read the rollup, not this table. A no-op on SQLite and when rows
    are left in the table (indexing those again would cost more)."""
    if connection.vendor != "postgresql" or AttributionCredit.objects.exists():
        yield
        return
    table = AttributionCredit._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary AND NOT i.indisunique ORDER BY 1",
            [table],
        )
        indexes = cursor.fetchall()
        for name, _ddl in indexes:
            cursor.execute(f"DROP INDEX {name}")
    yield
    with connection.cursor() as cursor:
        for _name, ddl in indexes:
            cursor.execute(ddl)


# Which credit column dates a rollup row of each basis, which credits it
# sums, and the opportunity's column the credit copies that date from.
_BASIS = {
    AttributionRollup.WON: ("opportunity_closed_at", Q(is_won=True), "closed_at"),
    AttributionRollup.CREATED: ("opportunity_created_at", Q(), "created_at"),
}


def _utc_day(value: datetime | None) -> date | None:
    return value.astimezone(dt_timezone.utc).date() if value is not None else None


def _days_q(field: str, days: set[date]) -> Q:
    q = Q()
    for day in days:
        start = datetime.combine(day, time.min, tzinfo=dt_timezone.utc)
        q |= Q(**{f"{field}__gte": start, f"{field}__lt": start + timedelta(days=1)})
    return q


def rollup_refresh(*, models: Sequence[str], days: dict[str, set[date]] | None = None) -> int:
    """Rebuild the rollup rows of ``models`` from their credits: all of them
    (``days`` None), or only the UTC days given per basis (an incremental
    run passes the days its opportunities' credits left and entered).
    Aggregated in the database; call inside the transaction that wrote the
    credits so readers never see the two disagree. Returns rows written."""
    written = 0
    for basis, (field, which, opportunity_field) in _BASIS.items():
        rollups = AttributionRollup.objects.filter(model__in=models, basis=basis)
        credits = AttributionCredit.objects.filter(which, model__in=models, **{f"{field}__isnull": False})
        if days is not None:
            wanted = {d for d in days.get(basis, ()) if d is not None}
            if not wanted:
                continue
            rollups = rollups.filter(day__in=wanted)
            # The credits table has no date index (a full run would pay for
            # it on millions of rows), so the days alone scan every credit.
            # Its rows copy their deal's dates: the deals of those days
            # (indexed) lead to their credits by the opportunity index. A
            # credit whose deal's date changed since it was written is found
            # by the deal's own recompute, which refreshes the old days too.
            deals = Opportunity.objects.filter(_days_q(opportunity_field, wanted)).values("id")
            credits = credits.filter(_days_q(field, wanted), opportunity_id__in=deals)
        rollups.delete()
        # No company credit: the company currency's credit counts as it is; any other had no rate.
        company = Case(When(company_credit__isnull=False, then=F("company_credit")),
                       When(currency=company_currency(), then=F("credit")))
        groups = (
            credits.annotate(day=TruncDate(field, tzinfo=dt_timezone.utc))
            .values("model", "day", "channel", "campaign_id", "currency")
            .annotate(
                total=Sum("credit"), weights=Sum("weight"),
                company=Coalesce(Sum(company), Value(Decimal("0")), output_field=DecimalField()),
                unconverted=Coalesce(
                    Sum("credit", filter=Q(company_credit__isnull=True) & ~Q(currency=company_currency())),
                    Value(Decimal("0")), output_field=DecimalField(),
                ),
                rate_first=Min("rate_date"), rate_last=Max("rate_date"),
                n_opp=Count("id", filter=Q(first_of_opportunity=True)),
                n_channel=Count("id", filter=Q(first_of_channel=True)),
                n_campaign=Count("id", filter=Q(first_of_campaign=True)),
                n_pair=Count("id", filter=Q(first_of_channel_campaign=True)),
            )
            .order_by()
        )
        # INSERT ... SELECT: the groups never travel to Python (tens of
        # thousands of them in a full run). The ORM writes the SELECT.
        select, params = groups.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {AttributionRollup._meta.db_table} (model, basis, day, channel, campaign_id, credit, weight,"
                " first_of_opportunity, first_of_channel, first_of_campaign, first_of_channel_campaign,"
                " currency, company_credit, unconverted, rate_date_first, rate_date_last)"
                " SELECT g.model, %s, g.day, g.channel, g.campaign_id, g.total, g.weights, g.n_opp, g.n_channel,"
                " g.n_campaign, g.n_pair, g.currency, g.company, g.unconverted, g.rate_first, g.rate_last"
                f" FROM ({select}) g",
                [basis, *params],
            )
            written += cursor.rowcount
    return written


class RollupAccumulator:
    """Sums credit rows into rollup groups as they stream to the database,
    for a full run: the same numbers rollup_refresh would aggregate from the
    table, without reading millions of rows back. ``feed`` passes the rows
    through; ``replace`` then swaps in the model's rollup rows."""

    # Row layout: CREDIT_COLUMNS (model 0, channel 3, campaign 4, first-of
    # flags 7-10, weight 11, credit 12, currency 13, is_won 14, created 16,
    # closed 17, rate date 18, company credit 19). A group's list: credit,
    # weight, the four first-of counts, company credit, unconverted credit,
    # first and last rate date.

    def __init__(self) -> None:
        self.groups: dict[tuple, list] = {}
        self._days: dict[datetime, date] = {}

    def feed(self, rows: Iterable[tuple]) -> Iterator[tuple]:
        # Millions of rows in a full run: written flat with locals, as each
        # attribute lookup or helper call here costs seconds in total. A
        # deal's rows come together and share its dates (the same objects):
        # their days are looked up once per deal, not per row. A row with no
        # company credit is in the company currency (then its credit counts)
        # or had no rate (unconverted): stored_company_amount.
        groups, days = self.groups, self._days
        company_cur = company_currency()
        created_basis, won_basis = AttributionRollup.CREATED, AttributionRollup.WON
        last_created = last_closed = created_day = closed_day = None
        for row in rows:
            (model, _opp, _tp, channel, campaign, _at, _oc, f_opp, f_channel, f_campaign, f_pair, weight, credit,
             currency, won, _closed, created_at, closed_at, rate_day, company) = row
            if created_at is not last_created:
                last_created = created_at
                created_day = days.get(created_at)
                if created_day is None:
                    created_day = days[created_at] = _utc_day(created_at)
            key = (model, created_basis, created_day, channel, campaign, currency)
            g = groups.get(key)
            if g is None:
                g = groups[key] = [Decimal("0"), 0.0, 0, 0, 0, 0, Decimal("0"), Decimal("0"), rate_day, rate_day]
            g[0] += credit
            g[1] += weight
            g[2] += f_opp
            g[3] += f_channel
            g[4] += f_campaign
            g[5] += f_pair
            if company is not None:
                g[6] += company
            elif currency == company_cur:
                g[6] += credit
            else:
                g[7] += credit
            if rate_day is not None:
                if g[8] is None or rate_day < g[8]:
                    g[8] = rate_day
                if g[9] is None or rate_day > g[9]:
                    g[9] = rate_day
            if won and closed_at is not None:  # won: its revenue, by close day
                if closed_at is not last_closed:
                    last_closed = closed_at
                    closed_day = days.get(closed_at)
                    if closed_day is None:
                        closed_day = days[closed_at] = _utc_day(closed_at)
                key = (model, won_basis, closed_day, channel, campaign, currency)
                w = groups.get(key)
                if w is None:
                    w = groups[key] = [Decimal("0"), 0.0, 0, 0, 0, 0, Decimal("0"), Decimal("0"), rate_day, rate_day]
                w[0] += credit
                w[1] += weight
                w[2] += f_opp
                w[3] += f_channel
                w[4] += f_campaign
                w[5] += f_pair
                if company is not None:
                    w[6] += company
                elif currency == company_cur:
                    w[6] += credit
                else:
                    w[7] += credit
                if rate_day is not None:
                    if w[8] is None or rate_day < w[8]:
                        w[8] = rate_day
                    if w[9] is None or rate_day > w[9]:
                        w[9] = rate_day
            yield row

    COLUMNS = (
        "model", "basis", "day", "channel", "campaign_id", "currency", "credit", "weight",
        "first_of_opportunity", "first_of_channel", "first_of_campaign", "first_of_channel_campaign",
        "company_credit", "unconverted", "rate_date_first", "rate_date_last",
    )
    COPY_TYPES = (
        "varchar", "varchar", "date", "varchar", "int8", "varchar", "numeric", "float8", "int4", "int4", "int4", "int4",
        "numeric", "numeric", "date", "date",
    )

    def replace(self, *, models: Sequence[str]) -> int:
        AttributionRollup.objects.filter(model__in=models).delete()
        rows = ((*key, *g) for key, g in self.groups.items())
        if connection.vendor == "postgresql":
            # Tens of thousands of rows in a full run: COPY, as the credits.
            with connection.cursor() as cursor:
                sql = f"COPY {AttributionRollup._meta.db_table} ({', '.join(self.COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                with cursor.cursor.copy(sql) as copy:
                    copy.set_types(self.COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
        else:
            AttributionRollup.objects.bulk_create(
                (AttributionRollup(**dict(zip(self.COLUMNS, row))) for row in rows), batch_size=5000
            )
        return len(self.groups)


def _credit_days(rows: Iterable[tuple[datetime | None, datetime | None]], into: dict[str, set[date]]) -> None:
    """Collect the UTC (close, creation) days of credit rows, per basis."""
    for closed_at, created_at in rows:
        into[AttributionRollup.WON].add(_utc_day(closed_at))
        into[AttributionRollup.CREATED].add(_utc_day(created_at))


# pg_advisory_xact_lock key of the attribution results (credits and rollup): "attr" in ASCII.
RESULTS_LOCK = 0x61747472


def results_lock() -> None:
    """Serialize the writers of the credits and the rollup, held to the end
    of the caller's transaction. Two incremental runs of one deal would
    otherwise both delete its old rows (the second's DELETE skips the rows
    the first inserted, which it cannot see) and both insert: doubled
    credits; and two runs refreshing one rollup day could each aggregate
    without the other's credits. Taken at the start of every results
    transaction (before any row lock: one lock order); incremental runs take
    well under a second. Statements after it see what the previous holder
    committed (READ COMMITTED). SQLite serializes writers anyway."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RESULTS_LOCK])


def credits_forget(*, opportunity_ids: Sequence[int]) -> dict[str, int]:
    """Remove every model's credits of ``opportunity_ids`` and refresh the
    rollup rows of the days they were in, in the caller's transaction
    (opportunity_delete calls it before deleting the deals). Idempotent."""
    results_lock()
    old = AttributionCredit.objects.filter(opportunity_id__in=list(opportunity_ids))
    days: dict[str, set[date]] = defaultdict(set)
    _credit_days(old.values_list("opportunity_closed_at", "opportunity_created_at").distinct(), days)
    models = sorted(set(old.values_list("model", flat=True).distinct()))
    deleted, _ = old.delete()
    if models:
        rollup_refresh(models=models, days=days)
    return {"credits": deleted, "models": len(models)}


def stored_company_amount(converted: Conversion | None, currency: str, company: str) -> Decimal | None:
    """The company amount a deal's credit rows store (``company_credit``):
    the converted amount for a deal in another currency; None when it had no
    rate, and None for a deal in the company currency, whose company credit
    is its credit (half the deals of the bench: a second numeric on their
    rows cost the COPY about a fifth of its encoding). Readers take
    ``company_credit``, else ``credit`` when ``currency`` is the company's,
    else nothing (unconverted): AttributionCredit.company_amount, the rollup."""
    if converted is None or currency == company:
        return None
    return converted.amount


def path_credit_rows(weighers: dict, path: Sequence[engine.Touch], ctx: engine.PathContext, amount: Decimal,
                     touch_cols: Sequence[tuple], common: tuple, company_amount: Decimal | None) -> Iterator[tuple]:
    """Every model's credit rows for one non-empty path. ``touch_cols`` holds
    per touch (opportunity id, touchpoint id, channel, campaign id, touched
    at, is opportunity creation); ``common`` the opportunity's (currency,
    is won, is closed, created at, closed at, rate date). ``company_amount``
    is the amount converted to the company currency as stored
    (stored_company_amount: None for no rate or the company currency), split
    by the same weights, so each model's company credits also sum exactly
    to it.

    A touch a model gives no weight gets no row (first, last and last
    non-direct weigh one touch of the path: a row for each of the others
    was most of a full run's writing, for nothing the reports can show but
    a zero). The first-row flags are then those of the rows written, so an
    opportunity counts under a model in the groups it credits. Zero-weight
    touches carry no credit: allocate gives the remainder to the largest
    weight, so the credits still sum to the amount."""
    keys = [(cols[2], cols[3]) for cols in touch_cols]
    heads = [(*cols, *firsts) for cols, firsts in zip(touch_cols, first_flags(keys))]
    same = company_amount == amount  # the company currency (or a rate of 1): the same split
    for model, weights in engine.path_weights(weighers, path, ctx):
        credits = engine.allocate(amount, weights)
        company = credits if same else engine.allocate(company_amount, weights) if company_amount is not None else [None] * len(weights)
        if 0.0 in weights:
            kept = [i for i, w in enumerate(weights) if w]
            for i, firsts in zip(kept, first_flags([keys[i] for i in kept])):
                yield (model, *touch_cols[i], *firsts, weights[i], credits[i], *common, company[i])
        else:
            for head, w, c, cc in zip(heads, weights, credits, company):
                yield (model, *head, w, c, *common, cc)


def credit_rows(opps: list[dict], roles: dict[int, list[int]], touches: dict[int, list[tuple]], weighers: dict, *,
                now: datetime, rates: RateTable, progress: bool = False) -> Iterator[tuple]:
    """Every model's credit rows for ``opps``, one opportunity at a time (a
    generator), each also in the company currency (attribution.money)."""
    for opp in tqdm(opps, desc="attribution", unit="opp", disable=not progress):
        tp_rows, ctx, path = _path(opp, roles.get(opp["id"], []), touches, now)
        amount: Decimal = opp["amount"]
        closed = opp["closed_at"] is not None and (opp["stage__is_won"] or opp["stage__is_lost"])
        converted = rates.convert(amount, opp["currency"], opportunity_rate_day(
            created_at=opp["created_at"], closed_at=opp["closed_at"], is_closed=closed))
        company_amount = stored_company_amount(converted, opp["currency"], rates.company)
        common = (opp["currency"], bool(opp["stage__is_won"]), bool(closed), opp["created_at"], opp["closed_at"] if closed else None,
                  converted.rate_date if converted else None)
        if not path:
            for model in weighers:
                yield (model, opp["id"], None, AttributionCredit.UNATTRIBUTED, None, None, False, True, True, True, True, 1.0, amount,
                       *common, company_amount)
            continue
        touch_cols = [(opp["id"], t[1], t[2], t[3], t[4], touch.is_opportunity_creation) for t, touch in zip(tp_rows, path)]
        yield from path_credit_rows(weighers, path, ctx, amount, touch_cols, common, company_amount)


def attribution_compute(
    *,
    models: Sequence[str] | None = None,
    opportunity_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Recompute the credits of ``models`` (default all) for
    ``opportunity_ids`` (default every opportunity: a full run, which also
    relearns the data-driven models). Idempotent: the old rows of those
    (model, opportunity) pairs are replaced in one transaction."""
    models = list(models or ALL_MODELS)
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        raise ValueError(f"unknown attribution model(s): {', '.join(unknown)}")
    full = opportunity_ids is None
    now = timezone.now()
    weighers = _weighers(models, full=full, progress=progress)
    opps = _opportunities(opportunity_ids)
    ids = [o["id"] for o in opps]
    roles = _roles(None if full else ids)
    touches = _load_touches(None if full else {lead for leads in roles.values() for lead in leads})
    rows = credit_rows(opps, roles, touches, weighers, now=now, rates=RateTable.load(), progress=progress)
    with transaction.atomic():
        results_lock()
        old = AttributionCredit.objects.filter(model__in=models)
        days: dict[str, set[date]] | None = None
        if not full:
            old = old.filter(opportunity_id__in=ids)
            rows = list(rows)
            # The days these deals' credits leave and the days they enter: only those rollup rows change.
            days = defaultdict(set)
            _credit_days(old.values_list("opportunity_closed_at", "opportunity_created_at").distinct(), days)
            _credit_days(((r[_CLOSED], r[_CREATED]) for r in rows), days)
        if full and set(models) == set(ALL_MODELS) and connection.vendor == "postgresql":
            # Every row goes: TRUNCATE frees the table at once, where DELETE
            # would mark millions of rows dead for vacuum. It locks the credits
            # (not the rollup the reports read) until this transaction commits.
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {AttributionCredit._meta.db_table}")
        else:
            old.delete()
        if full:
            rollup = RollupAccumulator()
            with secondary_indexes_suspended():
                written = _write(rollup.feed(rows))
            rollup.replace(models=models)
        else:
            written = _write(rows)
            rollup_refresh(models=models, days=days)
    return {"opportunities": len(opps), "credits": written, "models": len(models)}


def attribution_refresh_leads(*, lead_ids: Iterable[int]) -> dict[str, int]:
    """Make the attribution of ``lead_ids`` current: their touchpoints
    rebuilt from their events (sessions and the lead-creation touch over
    everything the lead now has, e.g. after a merge brought another lead's
    events), then the credits and rollup days of the opportunities they
    have a role on recomputed (incremental: those deals only, with the
    stored data-driven values). Called by the tasks for new events and for
    merges. Idempotent."""
    lead_ids = sorted(set(lead_ids))
    if not lead_ids:
        return {"leads": 0}
    from attribution.touchpoints import touchpoints_rebuild

    counts = touchpoints_rebuild(lead_ids=lead_ids)
    opp_ids = sorted(set(OpportunityContactRole.objects.filter(lead_id__in=lead_ids).values_list("opportunity_id", flat=True)))
    if opp_ids:
        counts.update(attribution_compute(opportunity_ids=opp_ids))
    return {"leads": len(lead_ids), **counts}
