"""Pure routing logic: availability, business hours, choosing a rep.

No queries here: ``routing.services`` loads reps, absences and counts and
passes them in, so the same code serves a real route, a preview and a
simulation, and is cheap to test edge cases with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from routing.models import WEEKDAYS, Rep, Team, parse_hhmm

# Why a rep was skipped (stored in the explanation).
INACTIVE = "inactive"
OUT_OF_OFFICE = "out_of_office"
HOLIDAY = "holiday"
OUTSIDE_HOURS = "outside_hours"
AT_CAPACITY = "at_capacity"
DAILY_LIMIT = "daily_limit"


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def _intervals(rep: Rep, day: date) -> list[tuple[datetime, datetime]]:
    """The rep's working intervals that start on local ``day``, as aware
    datetimes in the rep's zone; an end before the start is the next day."""
    tz = _zone(rep.time_zone)
    out = []
    for start_s, end_s in (rep.working_hours or {}).get(WEEKDAYS[day.weekday()], []):
        start = datetime.combine(day, parse_hhmm(start_s), tzinfo=tz)
        end = datetime.combine(day, parse_hhmm(end_s), tzinfo=tz)
        if end <= start:
            end += timedelta(days=1)
        out.append((start, end))
    return out


def _is_holiday(rep: Rep, day: date) -> bool:
    return day.isoformat() in (rep.holidays or [])


@lru_cache(maxsize=8192)
def week_minutes(hours_json: str) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Working hours (their JSON text) compiled once per distinct text: per
    weekday (mon=0) the (start, end) minutes of the local day; a night
    shift's end is past 1440. A decision checks hundreds of reps, and
    parsing "HH:MM" strings per rep per decision was a good part of it."""
    hours = json.loads(hours_json) or {}
    week = []
    for day in WEEKDAYS:
        spans = []
        for start_s, end_s in hours.get(day, []):
            start, end = parse_hhmm(start_s), parse_hhmm(end_s)
            s_min, e_min = start.hour * 60 + start.minute, end.hour * 60 + end.minute
            spans.append((float(s_min), float(e_min + 1440 if e_min <= s_min else e_min)))
        week.append(tuple(spans))
    return tuple(week)


def in_working_hours(rep: Rep, now: datetime, local: datetime | None = None) -> bool:
    """``local`` is ``now`` in the rep's zone when the caller has it."""
    if not rep.working_hours:
        return True  # no hours set: always on
    local = local or now.astimezone(_zone(rep.time_zone))
    hours_json = getattr(rep, "hours_json", None)
    if hours_json is not None:
        # The compiled form: minutes of the local (wall-clock) day, as the
        # datetime comparison below does it.
        minute = local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 60_000_000
        week = week_minutes(hours_json)
        today = local.date()
        if not _is_holiday(rep, today) and any(s <= minute < e for s, e in week[today.weekday()]):
            return True
        yesterday = today - timedelta(days=1)
        return not _is_holiday(rep, yesterday) and any(s <= minute + 1440 < e for s, e in week[yesterday.weekday()])
    # A night shift that began yesterday may still be running.
    for day in (local.date() - timedelta(days=1), local.date()):
        if _is_holiday(rep, day):
            continue
        for start, end in _intervals(rep, day):
            if start <= local < end:
                return True
    return False


def unavailable_reason(rep: Rep, now: datetime, absences: list[tuple[datetime, datetime]],
                       local: datetime | None = None) -> str | None:
    """Why ``rep`` cannot take a lead at ``now`` (None when they can).
    ``absences`` are the rep's out-of-office periods; a partial day counts.
    ``local`` is ``now`` in the rep's zone when the caller has it (a team's
    reps share a handful of zones: ``local_times`` converts once per zone)."""
    if not rep.is_active:
        return INACTIVE
    for starts_at, ends_at in absences:
        if starts_at <= now < ends_at:
            return OUT_OF_OFFICE
    local = local or now.astimezone(_zone(rep.time_zone))
    if rep.holidays and _is_holiday(rep, local.date()):
        return HOLIDAY
    if rep.working_hours and not in_working_hours(rep, now, local):
        return OUTSIDE_HOURS
    return None


class local_times(dict):
    """``now`` in each zone, converted once per zone name: ``times[name]``."""

    def __init__(self, now: datetime):
        super().__init__()
        self.now = now

    def __missing__(self, name: str) -> datetime:
        value = self[name] = self.now.astimezone(_zone(name))
        return value


def local_day_start(rep: Rep, now: datetime) -> datetime:
    local = now.astimezone(_zone(rep.time_zone))
    return datetime.combine(local.date(), datetime.min.time(), tzinfo=local.tzinfo)


def capacity_reason(rep: Rep, *, open_count: int, today_count: int) -> str | None:
    if rep.max_open_leads is not None and open_count >= rep.max_open_leads:
        return AT_CAPACITY
    if rep.max_per_day is not None and today_count >= rep.max_per_day:
        return DAILY_LIMIT
    return None


def _minus(start: datetime, end: datetime, absences) -> list[tuple[datetime, datetime]]:
    """[start, end) without the absences that overlap it."""
    if end <= start:
        return []
    pieces = [(start, end)]
    for a_start, a_end in absences:
        if a_end <= start or a_start >= end:
            continue
        rest = []
        for s, e in pieces:
            if a_end <= s or a_start >= e:
                rest.append((s, e))
                continue
            if a_start > s:
                rest.append((s, a_start))
            if a_end < e:
                rest.append((a_end, e))
        pieces = rest
    return pieces


def business_deadline(rep: Rep, start: datetime, hours: Decimal | float,
                      absences: list[tuple[datetime, datetime]] = ()) -> datetime:
    """``start`` plus ``hours`` of the rep's working time: their working
    hours in their zone, minus holidays and out-of-office periods
    (``absences``, (start, end) pairs; a partial day counts). A rep with no
    hours set works around the clock, still minus holidays and absences.

    Sums run in UTC: aware datetimes sharing one zone subtract as wall
    clocks, which is an hour off across a daylight-saving change."""
    utc = timezone.utc
    remaining = timedelta(hours=float(hours))
    start = origin = start.astimezone(utc)
    tz = _zone(rep.time_zone)
    absences = sorted((s.astimezone(utc), e.astimezone(utc)) for s, e in absences if e.astimezone(utc) > start)
    day = start.astimezone(tz).date() - timedelta(days=1)
    for _ in range(400):  # a year of days at most; hours are validated non-empty per set day
        if not _is_holiday(rep, day):
            if rep.working_hours:
                spans = _intervals(rep, day)
            else:
                spans = [(datetime.combine(day, datetime.min.time(), tzinfo=tz),
                          datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz))]
            for span_start, span_end in sorted((s.astimezone(utc), e.astimezone(utc)) for s, e in spans):
                for s, e in _minus(max(span_start, start), span_end, absences):
                    if e - s >= remaining:
                        return s + remaining
                    remaining -= e - s
                start = max(start, span_end)  # overlapping spans (a night shift into a morning one) count once
        day += timedelta(days=1)
    return origin + timedelta(hours=float(hours))  # no working time in a year: count plain hours


@dataclass
class Candidate:
    rep: Rep
    skipped: str | None = None
    open_count: int = 0
    today_count: int = 0
    # The rep's out-of-office periods not yet over (for the SLA deadline too).
    absences: list = field(default_factory=list)

    def as_json(self) -> dict:
        row = {"rep_id": self.rep.pk, "rep": self.rep.name, "skipped": self.skipped}
        if self.rep.max_open_leads is not None or self.rep.max_per_day is not None:
            row.update(open=self.open_count, today=self.today_count)
        return row


@dataclass
class Pick:
    rep: Rep | None
    candidates: list[Candidate] = field(default_factory=list)
    # New fair-queue positions to store when the pick is committed.
    rep_pass: float | None = None
    team_clock: float | None = None


def choose(team: Team, candidates: list[Candidate]) -> Pick:
    """Pick among ``candidates`` whose ``skipped`` is None, by the team's
    method. Round robin and weighted round robin are one fair queue (stride
    scheduling): each rep holds a pass, the pick is the lowest pass (a rep
    returning from absence starts at the team's clock, so they get no burst),
    and the pass advances by 1/weight (1 for plain round robin). Capacity
    uses the same queue; least loaded picks the fewest open leads and breaks
    ties with the queue. Reps at capacity come in skipped, whatever the
    method (``routing.services``), so weights share what the caps leave."""
    eligible = [c for c in candidates if c.skipped is None]
    if not eligible:
        return Pick(rep=None, candidates=candidates)
    clock = team.rr_clock

    def position(c: Candidate) -> float:
        return max(c.rep.rr_pass, clock)

    if team.method == Team.Method.LEAST_LOADED:
        best = min(eligible, key=lambda c: (c.open_count, position(c), c.rep.pk))
    else:
        best = min(eligible, key=lambda c: (position(c), c.rep.pk))
    weight = best.rep.weight if team.method == Team.Method.WEIGHTED else 1
    start = position(best)
    return Pick(rep=best.rep, candidates=candidates, rep_pass=start + 1.0 / max(weight, 1), team_clock=start)
