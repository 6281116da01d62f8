"""The condition language: parsing, errors with columns, evaluation and Q
compilation on hand-picked leads (tests/martech/test_conditions_property.py
compares evaluate with the database on random leads and conditions)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from martech.conditions import Condition, ConditionError, ConditionField, matching_leads, parse, validate_condition
from martech.models import Lead, LifecycleStage
from tests.factories import AccountFactory, LeadFactory, UserFactory

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def _both(text: str, leads: list[Lead]) -> set[int]:
    """Matching ids, asserting evaluate() and the database agree."""
    cond = parse(text)
    in_db = set(matching_leads(cond, queryset=Lead.objects.filter(pk__in=[l.pk for l in leads]), now=NOW)
                .values_list("pk", flat=True))
    in_memory = {l.pk for l in Lead.objects.filter(pk__in=[l.pk for l in leads]) if cond.evaluate(l, now=NOW)}
    assert in_db == in_memory, text
    return in_db


# --- parsing and errors -----------------------------------------------------------


def test_parse_reports_fields_and_text():
    cond = parse('score >= 80 and country in ("US", "CA") and not email ends_with "@gmail.com" '
                 'and account.employee_count > 50 and properties.plan = "pro"')
    assert cond.fields == frozenset({"total_score", "country", "email", "account.employee_count", "properties.plan"})
    assert cond.text.startswith("score >= 80")
    assert str(cond) == cond.text


def test_condition_is_immutable():
    cond = parse('country = "US"')
    with pytest.raises(AttributeError):
        cond.text = "x"


@pytest.mark.parametrize(
    ("text", "column", "reason_part"),
    [
        ("", 1, "empty condition"),
        ("   ", 1, "empty condition"),
        ('nosuchfield = 1', 1, "unknown field 'nosuchfield'"),
        ('account.nope = 1', 1, "unknown account field"),
        ('country = "US" and (fit_score > 3', 34, "missing ')'"),
        ('country = "US")', 15, "unbalanced ')'"),
        ('fit_score = "high"', 13, "fit_score needs an integer"),
        ('fit_score = 1.5', 13, "needs an integer"),
        ('country < "US"', 9, "text has no order"),
        ('country = 5', 11, "country needs text"),
        ('country = ', 11, "expected a value"),
        ('country "US"', 9, "expected an operator"),
        ('country = "US', 11, "unterminated text"),
        ('country = "US" or', 18, "expected a condition"),
        ('created_at = 2026-01-01', 12, "operator '=' does not apply"),
        ('created_at > now - 3 fortnights', 22, "expected a unit"),
        ('created_at > 2026-02-30', 14, "not a valid date"),
        ('created_at > "2026-01-01"', 14, "needs a date"),
        ('country = ""', 11, "use 'is empty'"),
        ('account = 5', 9, "only supports 'is empty'"),
        ('account.annual_revenue > 1.005', 26, "at most 2 decimal places"),
        ('properties.plan in ("a", 1)', 26, "of one type"),
        ('properties.plan > "a"', 17, "does not apply to text"),
        ('properties = 1', 1, "properties.<name>"),
        ('country = "US" $', 16, "unexpected character"),
        ('fit_score > 99999999999999999999', 13, "out of range"),
        ('email is full', 10, "expected 'empty'"),
        ("(" * 60 + "country = 'US'" + ")" * 60, 42, "nested more than"),
    ],
)
def test_invalid_text_is_refused_with_column_and_reason(text, column, reason_part):
    with pytest.raises(ConditionError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValidationError)
    assert reason_part in err.reason
    assert err.position == column, err.reason
    assert err.messages == [f"column {column}: {err.reason}"]


def test_keywords_are_case_insensitive_and_quotes_escape():
    cond = parse("country = 'US' AND NOT job_title Contains \"say \\\"hi\\\"\"")
    assert cond.to_json()["tree"]["and"][1]["not"]["values"][0]["v"] == 'say "hi"'


def test_validator_and_field_refuse_invalid_text_on_full_clean():
    with pytest.raises(ValidationError):
        validate_condition("fit_score >")
    validate_condition("fit_score > 3")
    f = ConditionField()
    with pytest.raises(ValidationError) as info:
        f.clean("fit_score >", None)
    assert "column 12" in info.value.messages[0]
    assert f.clean("fit_score > 3", None) == "fit_score > 3"
    assert isinstance(f, models.TextField)


def test_json_round_trip_keeps_the_parsed_form():
    text = ('(score >= 10 or fit_score in (1, 2)) and not account is empty and created_at > now - 2 weeks '
            'and account.annual_revenue >= 10.5 and properties.trial = true and email_domain ends_with "x.com"')
    cond = parse(text)
    again = Condition.from_json(cond.to_json())
    assert again.to_json() == cond.to_json()
    assert again.fields == cond.fields
    assert again.text == text


@pytest.mark.parametrize("data", [None, {}, {"version": 2}, {"version": 1, "tree": {"field": "nope", "op": "="}},
                                  {"version": 1, "tree": {"field": "country", "op": "~", "values": []}},
                                  {"version": 1, "tree": {"field": "country", "op": "=",
                                                          "values": [{"t": "int", "v": 3}]}}])
def test_from_json_refuses_bad_stored_forms(data):
    with pytest.raises(ConditionError):
        Condition.from_json(data)


# --- semantics ----------------------------------------------------------------------


@pytest.fixture
def leads(db):
    mql = LifecycleStage.objects.get(key="mql")
    owner = UserFactory(username="ann")
    big = AccountFactory(industry="Software", employee_count=500, annual_revenue=Decimal("1000000.50"))
    small = AccountFactory(industry="Retail", employee_count=None)
    return {
        "us_big": LeadFactory(email="a@acme.com", country="US", total_score=90, fit_score=40, account=big,
                              job_title="VP Marketing", owner=owner, lifecycle_stage=mql,
                              properties={"plan": "Pro", "seats": 12, "trial": True},
                              created_at=NOW - dt.timedelta(days=3)),
        "ca_small": LeadFactory(email="b@gmail.com", country="CA", total_score=20, fit_score=5, account=small,
                                job_title="Engineer", properties={"plan": "free", "seats": "12"},
                                created_at=NOW - dt.timedelta(days=60)),
        "bare": LeadFactory(email=None, hubspot_id="h1", country="", total_score=0, job_title="",
                            lifecycle_stage=None, properties={"plan": None, "seats": 3.5, "trial": False},
                            created_at=NOW - dt.timedelta(days=1)),
        "empty_props": LeadFactory(email="c@example.org", country="us", total_score=75, fit_score=30, job_title="Analyst",
                                   properties={"plan": ""}, created_at=NOW - dt.timedelta(minutes=5)),
    }


def _names(leads, ids):
    return {name for name, lead in leads.items() if lead.pk in ids}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('score >= 75', {"us_big", "empty_props"}),
        ('score >= 75 and fit_score >= 30', {"us_big", "empty_props"}),
        ('country = "us"', {"us_big", "empty_props"}),  # text is case-insensitive
        ('country != "US"', {"ca_small", "bare"}),  # negation includes the empty country
        ('country in ("CA", "xx")', {"ca_small"}),
        ('country not in ("CA")', {"us_big", "bare", "empty_props"}),
        ('country is empty', {"bare"}),
        ('email is empty', {"bare"}),
        ('email ends_with "@GMAIL.com"', {"ca_small"}),
        ('not email ends_with "@gmail.com"', {"us_big", "bare", "empty_props"}),
        ('email_domain = "EXAMPLE.org"', {"empty_props"}),
        ('email_domain is empty', {"bare"}),
        ('job_title contains "market"', {"us_big"}),
        ('job_title starts_with "eng"', {"ca_small"}),
        ('job_title not contains "market"', {"ca_small", "bare", "empty_props"}),
        ('account is empty', {"bare", "empty_props"}),
        ('account.employee_count > 100', {"us_big"}),
        ('not account.employee_count > 100', {"ca_small", "bare", "empty_props"}),
        ('account.employee_count is empty', {"ca_small", "bare", "empty_props"}),
        ('account.industry in ("software", "retail")', {"us_big", "ca_small"}),
        ('account.annual_revenue >= 1000000.5', {"us_big"}),
        ('lifecycle_stage = "mql"', {"us_big"}),
        ('lifecycle_stage is empty', {"bare"}),
        ('owner = "ann"', {"us_big"}),
        ('owner is not empty', {"us_big"}),
        ('created_at > now - 7 days', {"us_big", "bare", "empty_props"}),
        ('created_at > now - 10 minutes', {"empty_props"}),
        ('created_at < 2026-10-01', {"ca_small"}),
        ('properties.plan = "pro"', {"us_big"}),
        ('properties.plan is empty', {"bare", "empty_props"}),  # JSON null and "" are empty
        ('properties.plan is not empty', {"us_big", "ca_small"}),
        ('properties.seats > 10', {"us_big"}),  # "12" is text, not a number
        ('properties.seats = "12"', {"ca_small"}),
        ('properties.seats < 4', {"bare"}),
        ('properties.seats in (3.5, 12)', {"us_big", "bare"}),
        ('properties.trial = true', {"us_big"}),
        ('properties.trial = false', {"bare"}),
        ('properties.trial != true', {"ca_small", "bare", "empty_props"}),
        ('properties.missing is empty', {"us_big", "ca_small", "bare", "empty_props"}),
        ('(country = "CA" or score > 80) and not properties.trial = true', {"ca_small"}),
        ('not (country = "CA" or country = "US")', {"bare"}),
    ],
)
def test_semantics_agree_in_memory_and_in_database(leads, text, expected):
    assert _names(leads, _both(text, list(leads.values()))) == expected


def test_evaluate_reads_the_account_only_when_needed(leads, django_assert_num_queries):
    lead = Lead.objects.get(pk=leads["us_big"].pk)
    with django_assert_num_queries(0):
        assert parse('score > 10 and country = "US"').evaluate(lead, now=NOW)
    with django_assert_num_queries(1):
        assert parse("account.employee_count > 10").evaluate(lead, now=NOW)


def test_matching_leads_accepts_text_and_defaults_to_all_leads(leads):
    assert set(matching_leads('country = "CA"')) == {leads["ca_small"]}


def test_now_defaults_to_the_current_time(leads):
    assert parse("created_at < now + 1 hours").evaluate(leads["us_big"])
    assert matching_leads("created_at > now + 1 hours").count() == 0
    assert timezone.now() > NOW - dt.timedelta(days=1)


@pytest.mark.parametrize("title", ["É", "é", "ß", "SS", "a%b", "a_b", "a\\b", "İ", "ı"])
@pytest.mark.parametrize("op", ["=", "contains", "starts_with", "ends_with", "!="])
@pytest.mark.parametrize("needle", ["é", "É", "ss", "%", "_", "\\\\", "i", "I"])
def test_case_folding_and_like_wildcards_agree_with_the_database(db, title, op, needle):
    # The database decides how case folds (SQLite: ASCII only; PostgreSQL:
    # one-to-one Unicode upper case); evaluate() must fold the same way, and
    # % _ \ in the text are literal characters, not LIKE wildcards.
    lead = LeadFactory(job_title=title)
    _both(f'job_title {op} "{needle}"', [lead])


def test_wildcards_are_literal(db):
    lead = LeadFactory(job_title="abc")
    assert _both('job_title contains "%"', [lead]) == set()
    assert _both('job_title = "a_c"', [lead]) == set()


def test_phone_compares_as_stored(db):
    lead = LeadFactory(phone="+14155550100")
    assert _both('phone starts_with "+1415"', [lead]) == {lead.pk}
    assert _both('phone = "+14155550100"', [lead]) == {lead.pk}
