"""Issue 17, item 5: the condition language refuses at parse time what it
cannot evaluate, and anything that parses evaluates without error, in memory
and in SQL (property test, hypothesis), whatever the literal's size."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from martech.conditions import MAX_INTERVAL, Condition, ConditionError, matching_leads, parse
from martech.models import Account, Lead

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def _error(text: str) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        parse(text)
    return info.value


@pytest.mark.parametrize(("text", "column", "words"), [
    ("created_at > now - 1000000 days", 20, "interval too large: at most 36600 days"),
    ("created_at > now - 5300 weeks", 20, "at most 5228 weeks"),
    ("created_at > now + 52704001 minutes", 20, "at most 52704000 minutes"),
    ("fit_score > " + "9" * 4301, 13, "4301 digits before the point"),
    ("score = 1" + "0" * 19, 9, "out of range: 20 digits"),
    ("fit_score > 2147483648", 13, "2147483648 is out of range for fit_score (an integer column holds -2147483648..2147483647)"),
    ("account.employee_count in (1, -2147483649)", 31, "out of range for account.employee_count"),
    ("account.annual_revenue > 1" + "0" * 16, 26, "too large for account.annual_revenue"),
    ("properties.x > 1." + "1" * 40, 16, "more than 40 characters"),
])
def test_out_of_range_literals_are_refused_with_the_column_and_the_reason(text, column, words):
    err = _error(text)
    assert err.position == column, err.messages
    assert words in err.reason
    assert err.messages == [f"column {column}: {err.reason}"]


def test_the_largest_accepted_literals_parse():
    for text in (f"created_at > now - {MAX_INTERVAL['days']} days", f"created_at < now + {MAX_INTERVAL['weeks']} weeks",
                 "fit_score > -2147483648", "properties.n > 9223372036854775807", "score = 0000000000000000000000001"):
        parse(text)


def test_a_stored_condition_out_of_range_is_refused_on_load():
    stored = parse("created_at > now - 3 days").to_json()
    stored["tree"]["values"][0]["v"] = -1_000_000
    with pytest.raises(ConditionError, match="invalid stored condition"):
        Condition.from_json(stored)


# --- Property: whatever parses evaluates (memory and SQL) -----------------------

big_ints = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1), st.sampled_from([-(2**31), 2**31 - 1, 0, -1]),
    st.integers(min_value=-(10**25), max_value=10**25),  # mostly refused: must be refused cleanly
)
intervals = st.tuples(st.sampled_from(["+", "-"]), st.integers(min_value=0, max_value=10**7),
                      st.sampled_from(["minutes", "hours", "days", "weeks"])).map(lambda t: f"now {t[0]} {t[1]} {t[2]}")
dates = st.one_of(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)).map(dt.date.isoformat),
                  st.sampled_from(["0001-01-01", "9999-12-31"]))
decimals = st.decimals(min_value=Decimal("-1e20"), max_value=Decimal("1e20"), allow_nan=False, places=2).map(str)
numbers = st.one_of(big_ints.map(str), decimals, st.sampled_from(["1.5", "0.0", "-0.01"]))
comparison = st.one_of(
    st.tuples(st.sampled_from(["fit_score", "score", "account.employee_count"]),
              st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), big_ints).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.tuples(st.sampled_from(["fit_score", "account.employee_count"]), st.lists(big_ints, min_size=1, max_size=3))
    .map(lambda t: f"{t[0]} in ({', '.join(map(str, t[1]))})"),
    st.tuples(st.sampled_from(["created_at", "latest_touch_at"]), st.sampled_from(["<", "<=", ">", ">="]),
              st.one_of(intervals, dates)).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.tuples(st.sampled_from(["account.annual_revenue", "properties.n", "properties.big"]),
              st.sampled_from(["=", "<", ">="]), numbers).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
)
conditions = st.recursive(
    comparison,
    lambda inner: st.one_of(st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
                            inner.map(lambda c: f"not {c}")),
    max_leaves=4,
)


class ParsedConditionsEvaluateTests(TestCase):
    """A few leads with extreme values; every condition that parses runs
    without error in memory and in SQL (this database: SQLite or PostgreSQL)
    and both agree."""

    @classmethod
    def setUpTestData(cls):
        big = Account.objects.create(name="big", employee_count=2**31 - 1, annual_revenue=Decimal("999999999999.99"))
        small = Account.objects.create(name="small", employee_count=0, annual_revenue=Decimal("-999999999999.99"))
        cls.ids = [
            Lead.objects.create(email="a@x.example", fit_score=2**31 - 1, total_score=-(2**31), account=big,
                                created_at=NOW, latest_touch_at=NOW - dt.timedelta(days=36_000),
                                properties={"n": 10**30, "big": -(2**63)}).pk,
            Lead.objects.create(email="b@x.example", fit_score=-(2**31), total_score=2**31 - 1, account=small,
                                created_at=NOW - dt.timedelta(days=1), properties={"n": 1.5e300, "big": "x"}).pk,
            Lead.objects.create(email="c@x.example", created_at=NOW, properties={}).pk,
        ]

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=conditions)
    def test_whatever_parses_evaluates(self, text):
        try:
            cond = parse(text)
        except ConditionError:
            return
        leads = list(Lead.objects.filter(pk__in=self.ids).select_related("account"))
        for now in (NOW, dt.datetime(2200, 1, 1, tzinfo=dt.UTC)):
            for c in (cond, Condition.from_json(cond.to_json())):
                expected = {lead.pk for lead in leads if c.evaluate(lead, now=now)}
                got = set(matching_leads(c, queryset=Lead.objects.filter(pk__in=self.ids), now=now)
                          .values_list("pk", flat=True))
                assert got == expected, text
