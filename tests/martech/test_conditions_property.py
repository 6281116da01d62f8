"""Property tests of the condition language (hypothesis).

1. For random leads (with and without accounts, owners, stages; text with
   case, LIKE wildcards and non-ASCII letters; NULL and empty values; custom
   properties of every JSON type or missing) and random conditions, the
   in-memory ``evaluate`` and the database (``matching_leads``) select the same
   leads. Runs on whichever database the suite uses (SQLite and PostgreSQL).
2. The parser never raises anything but ConditionError, whatever the input.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from martech.conditions import Condition, ConditionError, matching_leads, parse
from martech.models import Account, Lead, LifecycleStage

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)

# Letters that fold differently across Python/SQLite/PostgreSQL are the risk:
# ASCII case, é/É (folded by PostgreSQL, not by SQLite), ß (no one-character
# upper case), and LIKE's own wildcards and escape.
ALPHABET = "aAéÉß%_\\\\."
words = st.text(alphabet=ALPHABET, min_size=0, max_size=4)
short = st.text(alphabet=ALPHABET, min_size=0, max_size=2)  # country is CharField(max_length=2)
nonempty = st.text(alphabet=ALPHABET, min_size=1, max_size=2)
small_int = st.integers(min_value=-3, max_value=3)
datetimes = st.integers(min_value=-90 * 24 * 60, max_value=10 * 24 * 60).map(
    lambda m: NOW + dt.timedelta(minutes=m)
)
json_values = st.one_of(
    st.none(), st.booleans(), small_int, st.sampled_from([0.5, -1.5, 2.0]), words,
    st.lists(small_int, max_size=2),
)
props = st.dictionaries(st.sampled_from(["plan", "seats", "trial"]), json_values, max_size=3)

account_data = st.none() | st.fixed_dictionaries({
    "industry": words,
    "employee_count": st.none() | st.integers(min_value=0, max_value=5),
    "annual_revenue": st.none() | st.sampled_from([Decimal("0"), Decimal("10.50"), Decimal("-2.25")]),
    "country": short,
})
lead_data = st.fixed_dictionaries({
    "email_local": st.none() | st.text(alphabet="abAB%_.", min_size=1, max_size=3),
    "email_domain": st.sampled_from(["x.com", "gmail.com", "a%b.org", "ÉX.com"]),
    "country": short,
    "job_title": words,
    "fit_score": small_int,
    "total_score": small_int,
    "created_at": datetimes,
    "latest_touch_at": st.none() | datetimes,
    "properties": props,
    "account": account_data,
    "stage": st.sampled_from([None, "lead", "mql", "sql"]),
    "owner": st.sampled_from([None, "ann", "BOB"]),
})


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text_cmp(field: str):
    lit = nonempty.map(_quote)
    return st.one_of(
        st.tuples(st.sampled_from(["=", "!=", "contains", "not contains", "starts_with", "ends_with",
                                   "not ends_with"]), lit).map(lambda t: f"{field} {t[0]} {t[1]}"),
        st.tuples(st.sampled_from(["in", "not in"]), st.lists(lit, min_size=1, max_size=3)).map(
            lambda t: f"{field} {t[0]} ({', '.join(t[1])})"),
        st.sampled_from(["is empty", "is not empty"]).map(lambda op: f"{field} {op}"),
    )


def _num_cmp(field: str, values):
    return st.one_of(
        st.tuples(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values).map(
            lambda t: f"{field} {t[0]} {t[1]}"),
        st.tuples(st.sampled_from(["in", "not in"]), st.lists(values, min_size=1, max_size=3)).map(
            lambda t: f"{field} {t[0]} ({', '.join(map(str, t[1]))})"),
        st.sampled_from(["is empty", "is not empty"]).map(lambda op: f"{field} {op}"),
    )


ints = small_int.map(str)
decs = st.sampled_from(["0", "10.5", "-2.25", "3", "10.49"])
when = st.one_of(
    st.integers(min_value=-100, max_value=12).map(lambda d: f"now {'-' if d < 0 else '+'} {abs(d)} days"),
    st.integers(min_value=0, max_value=3000).map(lambda m: f"now - {m} minutes"),
    st.sampled_from(["2026-11-01", "2026-09-01", "now", "now - 2 weeks", "now + 1 hours"]),
)
prop_cmp = st.sampled_from(["properties.plan", "properties.seats", "properties.trial", "properties.none"]).flatmap(
    lambda f: st.one_of(
        _text_cmp(f),
        _num_cmp(f, st.sampled_from(["0", "1", "-1", "0.5", "2", "-1.5", "3"])),
        st.sampled_from(["= true", "= false", "!= true"]).map(lambda op: f"{f} {op}"),
    )
)
comparison = st.one_of(
    st.sampled_from(["country", "job_title", "email", "email_domain", "lifecycle_stage", "owner",
                     "account.industry", "account.country"]).flatmap(_text_cmp),
    st.sampled_from(["fit_score", "score", "total_score"]).flatmap(lambda f: _num_cmp(f, ints)),
    _num_cmp("account.employee_count", ints),
    _num_cmp("account.annual_revenue", decs),
    st.tuples(st.sampled_from(["created_at", "latest_touch_at"]), st.sampled_from(["<", "<=", ">", ">="]),
              when).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.sampled_from(["account is empty", "account is not empty"]),
    prop_cmp,
)
conditions = st.recursive(
    comparison,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda c: f"not {c}"),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} and {t[1]} or {t[2]}"),
    ),
    max_leaves=6,
)


class ConditionAgreementTests(TestCase):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @given(leads=st.lists(lead_data, min_size=1, max_size=6), texts=st.lists(conditions, min_size=1, max_size=8))
    def test_evaluate_and_database_agree(self, leads, texts):
        stages = {s.key: s for s in LifecycleStage.objects.all()}
        users = {name: get_user_model().objects.get_or_create(username=name)[0] for name in ("ann", "BOB")}
        ids = []
        for n, data in enumerate(leads):
            account = None
            if data["account"] is not None:
                account = Account.objects.create(name=f"acc{n}", **data["account"])
            email = None if data["email_local"] is None else f"{data['email_local']}{n}@{data['email_domain']}"
            lead = Lead.objects.create(
                email=email.lower() if email else None, hubspot_id=f"h{n}",
                country=data["country"], job_title=data["job_title"], fit_score=data["fit_score"],
                total_score=data["total_score"], created_at=data["created_at"],
                latest_touch_at=data["latest_touch_at"], properties=data["properties"], account=account,
                lifecycle_stage=stages.get(data["stage"]), owner=users.get(data["owner"]),
            )
            ids.append(lead.pk)
        fresh = list(Lead.objects.filter(pk__in=ids))
        for text in texts:
            cond = parse(text)
            for c in (cond, Condition.from_json(cond.to_json())):
                expected = {lead.pk for lead in fresh if c.evaluate(lead, now=NOW)}
                got = set(matching_leads(c, queryset=Lead.objects.filter(pk__in=ids), now=NOW)
                          .values_list("pk", flat=True))
                assert got == expected, (text, [(l.pk, l.email, l.country, l.job_title, l.properties) for l in fresh])


TOKENS = ["and", "or", "not", "in", "contains", "starts_with", "ends_with", "is", "empty", "true", "false",
          "now", "days", "(", ")", ",", "=", "!=", "<", "<=", ">", ">=", "+", "-", '"a"', "'b'", '"', "'", "\\",
          "1", "1.5", "2026-01-31", "2026-13-45", "country", "score", "email_domain", "account",
          "account.employee_count", "account.nope", "properties", "properties.plan", "properties.a.b",
          "lifecycle_stage", "created_at", "99999999999999999999999", "é", "\x00", "$", ".", "1e5"]


class ParserFuzzTests(TestCase):
    @settings(max_examples=400, deadline=None)
    @given(text=st.one_of(st.text(max_size=80),
                          st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join),
                          st.lists(st.sampled_from(TOKENS), max_size=14).map("".join),
                          conditions.map(lambda c: c[: len(c) // 2])))
    def test_any_text_gives_a_condition_or_a_condition_error(self, text):
        try:
            cond = parse(text)
        except ConditionError as err:
            assert 1 <= err.position <= len(text) + 1 or err.position == 10_001
            assert err.messages == [f"column {err.position}: {err.reason}"]
            return
        # A parsed condition also compiles and evaluates without error.
        list(matching_leads(cond, now=NOW)[:1])
        assert Condition.from_json(cond.to_json()).to_json() == cond.to_json()
