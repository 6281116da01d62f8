"""Availability and business hours: pure functions, no database."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_tz

from routing import engine
from routing.models import Rep, Team

UTC = dt_tz.utc


def rep(**kw) -> Rep:
    defaults = dict(name="r", email="r@x.example", time_zone="UTC", working_hours={}, holidays=[], is_active=True, weight=1)
    defaults.update(kw)
    r = Rep(**defaults)
    r.pk = kw.get("pk", 1)
    return r


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_partial_day_out_of_office():
    r = rep()
    away = [(at(2026, 3, 2, 12), at(2026, 3, 2, 14))]  # a Monday, lunch to 2pm
    assert engine.unavailable_reason(r, at(2026, 3, 2, 11, 59), away) is None
    assert engine.unavailable_reason(r, at(2026, 3, 2, 12, 0), away) == engine.OUT_OF_OFFICE
    assert engine.unavailable_reason(r, at(2026, 3, 2, 13, 59), away) == engine.OUT_OF_OFFICE
    assert engine.unavailable_reason(r, at(2026, 3, 2, 14, 0), away) is None


def test_working_hours_in_the_reps_time_zone():
    r = rep(time_zone="America/New_York", working_hours={"mon": [["09:00", "17:00"]]})
    # 13:00 UTC on Monday 2 March 2026 is 08:00 in New York (EST, UTC-5).
    assert engine.unavailable_reason(r, at(2026, 3, 2, 13, 59), []) == engine.OUTSIDE_HOURS
    assert engine.unavailable_reason(r, at(2026, 3, 2, 14, 0), []) is None
    assert engine.unavailable_reason(r, at(2026, 3, 2, 21, 59), []) is None
    assert engine.unavailable_reason(r, at(2026, 3, 2, 22, 0), []) == engine.OUTSIDE_HOURS


def test_night_shift_across_midnight_and_time_zone():
    # Sydney rep working 22:00-06:00 starting Monday local.
    r = rep(time_zone="Australia/Sydney", working_hours={"mon": [["22:00", "06:00"]]})
    # Monday 2 March 2026 22:30 Sydney (AEDT, UTC+11) = Monday 11:30 UTC.
    assert engine.unavailable_reason(r, at(2026, 3, 2, 11, 30), []) is None
    # Tuesday 05:59 Sydney = Monday 18:59 UTC: still the Monday shift.
    assert engine.unavailable_reason(r, at(2026, 3, 2, 18, 59), []) is None
    # Tuesday 06:00 Sydney: over; Tuesday has no shift of its own.
    assert engine.unavailable_reason(r, at(2026, 3, 2, 19, 0), []) == engine.OUTSIDE_HOURS
    # Tuesday 22:30 Sydney: no Tuesday shift.
    assert engine.unavailable_reason(r, at(2026, 3, 3, 11, 30), []) == engine.OUTSIDE_HOURS


def test_holiday_is_the_reps_local_date():
    r = rep(time_zone="Asia/Tokyo", holidays=["2026-03-03"])
    # 2026-03-02 16:00 UTC is 2026-03-03 01:00 in Tokyo: a holiday there.
    assert engine.unavailable_reason(r, at(2026, 3, 2, 16), []) == engine.HOLIDAY
    assert engine.unavailable_reason(r, at(2026, 3, 2, 14), []) is None


def test_inactive_wins():
    assert engine.unavailable_reason(rep(is_active=False), at(2026, 3, 2, 12), []) == engine.INACTIVE


def test_business_deadline_skips_nights_weekends_and_holidays():
    r = rep(working_hours={d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}, holidays=["2026-03-09"])
    # Friday 6 March 16:00 + 4 business hours: 1h Friday, Monday 9th is a holiday, 3h Tuesday -> 12:00.
    assert engine.business_deadline(r, at(2026, 3, 6, 16), 4) == at(2026, 3, 10, 12)
    # Assigned at night: the clock starts at 09:00.
    assert engine.business_deadline(r, at(2026, 3, 3, 2), 1) == at(2026, 3, 3, 10)
    # No hours set: plain hours.
    assert engine.business_deadline(rep(), at(2026, 3, 3, 2), 1.5) == at(2026, 3, 3, 3, 30)


def test_weighted_queue_gives_shares_by_weight():
    team = Team(name="t", method=Team.Method.WEIGHTED)
    reps = [rep(pk=1, weight=3), rep(pk=2, weight=1), rep(pk=3, weight=6)]
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(1000):
        pick = engine.choose(team, [engine.Candidate(rep=r) for r in reps])
        team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
        counts[pick.rep.pk] += 1
    assert counts == {1: 300, 2: 100, 3: 600}


def test_returning_rep_gets_no_burst():
    team = Team(name="t", method=Team.Method.ROUND_ROBIN)
    a, b = rep(pk=1), rep(pk=2)
    for _ in range(10):  # b away: a takes ten
        pick = engine.choose(team, [engine.Candidate(rep=a), engine.Candidate(rep=b, skipped=engine.OUT_OF_OFFICE)])
        team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
    seq = []
    for _ in range(4):
        pick = engine.choose(team, [engine.Candidate(rep=a), engine.Candidate(rep=b)])
        team.rr_clock, pick.rep.rr_pass = pick.team_clock, pick.rep_pass
        seq.append(pick.rep.pk)
    assert sorted(seq) == [1, 1, 2, 2]
