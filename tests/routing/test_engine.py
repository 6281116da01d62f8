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


# --- SLA deadlines: business hours minus out-of-office periods and holidays ---

WEEKDAYS_9_17 = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


def local(zone: str, *args) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(*args, tzinfo=ZoneInfo(zone))


def test_deadline_skips_a_partial_day_out_of_office():
    r = rep(time_zone="Europe/Berlin", working_hours=WEEKDAYS_9_17)
    away = [(local("Europe/Berlin", 2026, 3, 2, 13), local("Europe/Berlin", 2026, 3, 2, 15))]  # Monday 13-15 local
    start = local("Europe/Berlin", 2026, 3, 2, 12)
    # 12-13 (1 h), away 13-15, 15-16 (1 h).
    assert engine.business_deadline(r, start, 2, away) == local("Europe/Berlin", 2026, 3, 2, 16)
    assert engine.business_deadline(r, start, 2) == local("Europe/Berlin", 2026, 3, 2, 14)  # without the absence
    # An absence already over, or one covering the start, is handled alike.
    over = [(local("Europe/Berlin", 2026, 3, 2, 8), local("Europe/Berlin", 2026, 3, 2, 12, 30))]
    assert engine.business_deadline(r, start, 2, over) == local("Europe/Berlin", 2026, 3, 2, 14, 30)


def test_deadline_across_midnight_weekend_holiday_and_absence_in_another_zone():
    r = rep(time_zone="America/Los_Angeles", working_hours=WEEKDAYS_9_17, holidays=["2026-03-09"])
    # Friday 6 March 16:30 in Los Angeles is Saturday 00:30 UTC.
    start = at(2026, 3, 7, 0, 30)
    assert start == local("America/Los_Angeles", 2026, 3, 6, 16, 30)
    # 30 min Friday; weekend; Monday a holiday; Tuesday from 09:00 -> 10:30.
    assert engine.business_deadline(r, start, 2) == local("America/Los_Angeles", 2026, 3, 10, 10, 30)
    # Away all Tuesday morning until 10:00 local: 10:00-11:30.
    away = [(local("America/Los_Angeles", 2026, 3, 10, 0), local("America/Los_Angeles", 2026, 3, 10, 10))]
    assert engine.business_deadline(r, start, 2, away) == local("America/Los_Angeles", 2026, 3, 10, 11, 30)
    # A multi-day absence (Tuesday to Wednesday noon) pushes it to Wednesday 13:30.
    week = [(local("America/Los_Angeles", 2026, 3, 10, 0), local("America/Los_Angeles", 2026, 3, 11, 12))]
    assert engine.business_deadline(r, start, 2, week) == local("America/Los_Angeles", 2026, 3, 11, 13, 30)


def test_deadline_on_a_night_shift_with_an_absence_across_midnight():
    r = rep(time_zone="Asia/Tokyo", working_hours={d: [["22:00", "06:00"]] for d in ("mon", "tue", "wed", "thu", "fri")})
    start = local("Asia/Tokyo", 2026, 3, 2, 22)  # Monday 22:00 Tokyo = 13:00 UTC
    away = [(local("Asia/Tokyo", 2026, 3, 2, 23, 30), local("Asia/Tokyo", 2026, 3, 3, 0, 30))]
    # 22:00-23:30 (1.5 h), away until 00:30, then 1.5 h -> 02:00 Tuesday.
    assert engine.business_deadline(r, start, 3, away) == local("Asia/Tokyo", 2026, 3, 3, 2)
    # The shift ends at 06:00; the rest is on the next night's shift (Tuesday 22:00).
    assert engine.business_deadline(r, start, 9) == local("Asia/Tokyo", 2026, 3, 3, 23)
    # Tuesday a holiday: Tuesday night's shift is off, Wednesday's counts.
    off = rep(time_zone="Asia/Tokyo", working_hours=r.working_hours, holidays=["2026-03-03"])
    assert engine.business_deadline(off, start, 9) == local("Asia/Tokyo", 2026, 3, 4, 23)


def test_deadline_counts_real_hours_across_daylight_saving():
    # Berlin springs forward on Sunday 29 March 2026 (02:00 -> 03:00): the
    # Saturday night shift 22:00-06:00 is 7 real hours long.
    r = rep(time_zone="Europe/Berlin", working_hours={"sat": [["22:00", "06:00"]]})
    start = local("Europe/Berlin", 2026, 3, 28, 22)
    assert engine.business_deadline(r, start, 7) == local("Europe/Berlin", 2026, 3, 29, 6)
    assert engine.business_deadline(r, start, 7).astimezone(UTC) == at(2026, 3, 29, 4)


def test_deadline_without_hours_still_skips_holidays_and_absences():
    r = rep(holidays=["2026-03-03"])
    away = [(at(2026, 3, 2, 23), at(2026, 3, 3, 0))]
    # Monday 22:00 UTC + 3 h: 22-23 (1 h), away 23-24, Tuesday a holiday, Wednesday 00:00-02:00.
    assert engine.business_deadline(r, at(2026, 3, 2, 22), 3, away) == at(2026, 3, 4, 2)
    assert engine.business_deadline(rep(), at(2026, 3, 2, 22), 3) == at(2026, 3, 3, 1)


def test_compiled_hours_agree_with_the_datetime_check():
    """RepRow carries hours as JSON text and the engine checks compiled
    minutes; over two weeks (a DST change inside) in several zones, with a
    night shift, split days and a holiday, both answer alike."""
    import json

    from routing.services import RepRow

    hours = [
        WEEKDAYS_9_17,
        {"mon": [["22:00", "06:00"]], "tue": [["08:30", "12:00"], ["13:00", "17:45"]], "sun": [["23:00", "01:00"]]},
        {"sat": [["00:00", "23:59"]], "fri": [["18:00", "02:00"]]},
    ]
    checked = 0
    for zone in ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata"):
        for h in hours:
            model = rep(time_zone=zone, working_hours=h, holidays=["2026-03-30"])
            row = RepRow((1, "r", True, zone, json.dumps(h), json.dumps(["2026-03-30"]), None, None, 1, 0.0, None, None,
                          None, "", ""))
            t = at(2026, 3, 23)
            while t < at(2026, 4, 6):
                assert engine.in_working_hours(row, t) == engine.in_working_hours(model, t), (zone, h, t)
                assert engine.unavailable_reason(row, t, []) == engine.unavailable_reason(model, t, [])
                t += timedelta(minutes=13)
                checked += 1
    assert checked > 10_000
