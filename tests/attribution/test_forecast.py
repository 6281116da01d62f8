"""Pipeline forecast (by month and source, weighted and commit), its daily
snapshots and their accuracy, and the forecast / report endpoints with a
token."""
from __future__ import annotations

from datetime import date, datetime, timezone as dt_tz
from decimal import Decimal

import pytest
from django.utils import timezone

from attribution import forecast
from attribution.forecast import forecast_accuracy, forecast_report, forecast_snapshot_take
from attribution.models import ExchangeRate, ForecastSnapshot, OpportunityStage
from attribution.services import opportunity_change_stage, opportunity_upsert, stage_for
from martech.models import ApiClient
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=dt_tz.utc)
READ, WRITE = ApiClient.Scope.ATTRIBUTION_READ.value, ApiClient.Scope.ATTRIBUTION_WRITE.value


def _deal(name, amount, currency="USD", *, stage, source="", **extra):
    opp, _ = opportunity_upsert(data={
        "name": name, "amount": Decimal(amount), "currency": currency, "stage": stage, "created_at": T0, "source": source,
        **extra,
    }, source="t")
    return opp


@pytest.fixture
def book(settings):
    """Open deals in three currencies. Probabilities: proposal 50, negotiation
    75, qualification 20, prospecting 10; commit from 90."""
    settings.MARTECH_COMPANY_CURRENCY = "USD"
    settings.MARTECH_MONEY = {**settings.MARTECH_MONEY, "COMMIT_PROBABILITY": 90}
    ExchangeRate.objects.create(currency="EUR", date=date(2026, 1, 1), rate=Decimal("1.10"))
    OpportunityStage.objects.filter(key="qualification").update(days_to_close=30)
    deals = {
        "a": _deal("A", "1000.00", stage="proposal", source="paid_search", expected_close_date=date(2026, 4, 10)),
        # 2000 EUR = 2200 USD; its own 95% puts it in commit
        "b": _deal("B", "2000.00", "EUR", stage="negotiation", source="email", expected_close_date=date(2026, 4, 20),
                   probability=Decimal("95")),
        # no date of its own: entered qualification on T0 + the stage's 30 days = 2026-04-01
        "c": _deal("C", "400.00", stage="qualification", source="email"),
        # neither: unscheduled
        "d": _deal("D", "300.00", stage="prospecting"),
        # no JPY rate: counted, not summed
        "e": _deal("E", "50000.00", "JPY", stage="proposal", source="paid_social", expected_close_date=date(2026, 5, 5)),
        # won: not in the forecast
        "f": _deal("F", "999.00", stage="closed_won", source="email"),
    }
    return deals


def test_forecast_by_month_and_source_weighted_and_commit_in_the_company_currency(book):
    body = forecast_report()
    assert (body["currency"], body["converted"], body["commit_probability"]) == ("USD", True, 90)
    months = {r["month"]: r for r in body["by_month"]}
    assert list(months) == ["2026-04", "2026-05", "(unscheduled)"]
    april = months["2026-04"]
    # A 1000 x 50% + B 2200 x 95% + C 400 x 20%
    assert (april["open_deals"], april["pipeline"], april["weighted"], april["commit"]) == (
        3, Decimal("3600.00"), Decimal("2670.00"), Decimal("2200.00"))
    may = months["2026-05"]
    assert (may["open_deals"], may["unconverted_deals"], may["pipeline"]) == (1, 1, Decimal("0.00"))
    assert months["(unscheduled)"]["weighted"] == Decimal("30.00")
    sources = {r["source"]: r for r in body["by_source"]}
    assert sources["email"]["weighted"] == Decimal("2170.00") and sources["email"]["commit"] == Decimal("2200.00")
    assert sources["(none)"]["pipeline"] == Decimal("300.00")
    assert body["unconverted_currencies"] == ["JPY"]
    assert body["total"]["weighted"] == Decimal("2700.00")
    assert body["rate_date_first"] == body["rate_date_last"] == date(2026, 1, 1)

    # one currency, unconverted
    eur = forecast_report(currency="EUR")
    assert (eur["currency"], eur["converted"], eur["total"]["weighted"]) == ("EUR", False, Decimal("1900.00"))


def test_the_expected_close_follows_the_stage_entry_unless_the_deal_has_its_own(book):
    OpportunityStage.objects.filter(key="negotiation").update(days_to_close=5)
    c = book["c"]
    opportunity_change_stage(opportunity=c, to_stage=stage_for(pipeline=c.pipeline, key="negotiation"), source="t",
                             at=datetime(2026, 3, 20, 9, 0, tzinfo=dt_tz.utc))
    [deal] = [d for d in forecast.open_deals() if d["id"] == c.pk]
    assert (deal["expected_close"], deal["probability"]) == (date(2026, 3, 25), Decimal("75.00"))
    # the deal's own date and probability win; B has both
    [b] = [d for d in forecast.open_deals() if d["id"] == book["b"].pk]
    assert (b["expected_close"], b["probability"], b["commit"]) == (date(2026, 4, 20), Decimal("95.00"), True)


def test_snapshots_are_idempotent_and_accuracy_compares_the_last_one_before_the_month(book, monkeypatch):
    assert forecast_snapshot_take(on=date(2026, 3, 20))["rows"] == forecast_snapshot_take(on=date(2026, 3, 20))["rows"]
    first = ForecastSnapshot.objects.filter(taken_on=date(2026, 3, 20)).count()
    assert first == 4  # (April, paid_search), (April, email), (May, paid_social), (unscheduled, none)
    # a later snapshot before April, after A's amount grew; and one taken inside April (not a forecast of it)
    opportunity_upsert(opportunity=book["a"], data={"amount": Decimal("2000.00")}, source="t")
    forecast_snapshot_take(on=date(2026, 3, 31))
    forecast_snapshot_take(on=date(2026, 4, 5))
    # April: A won 2,000 USD, B won 2,000 EUR (2,200 USD at the close day's rate); C slipped
    for key, at in (("a", datetime(2026, 4, 12, tzinfo=dt_tz.utc)), ("b", datetime(2026, 4, 22, tzinfo=dt_tz.utc))):
        opp = book[key]
        opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="t", at=at)
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 5, 15, 12, 0, tzinfo=dt_tz.utc))

    body = forecast_accuracy()
    assert body["currency"] == "USD"
    [april] = body["results"]  # May is not over: not measured
    # the 31 March snapshot: A 2000 x 50% + B 2200 x 95% + C 400 x 20% = 3170; commit 2200
    assert (april["month"], april["forecast_taken_on"]) == ("2026-04", date(2026, 3, 31))
    assert (april["weighted"], april["commit"], april["actual"]) == (Decimal("3170.00"), Decimal("2200.00"), Decimal("4200.00"))
    assert april["weighted_error"] == round((3170 - 4200) / 4200, 4)
    assert april["commit_error"] == round((2200 - 4200) / 4200, 4)

    [april_early] = forecast_accuracy(taken_on=date(2026, 3, 20))["results"]
    assert april_early["weighted"] == Decimal("2670.00")
    [by_email] = forecast_accuracy(source="email")["results"]
    assert (by_email["weighted"], by_email["actual"]) == (Decimal("2170.00"), Decimal("2200.00"))


def test_forecast_and_accuracy_read_a_fixed_number_of_queries(book, token_api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    api = token_api(READ)
    forecast_snapshot_take(on=date(2026, 1, 20))
    won = _deal("won in April", "10.00", "EUR", stage="proposal")
    opportunity_change_stage(opportunity=won, to_stage=stage_for(pipeline=won.pipeline, key="closed_won"), source="t",
                             at=datetime(2026, 4, 15, tzinfo=dt_tz.utc))

    def counts() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as f:
            assert api.get("/api/v1/attribution/forecast").status_code == 200
        with CaptureQueriesContext(connection) as a:
            assert api.get("/api/v1/attribution/forecast/accuracy", {"taken_on": "2026-01-20"}).status_code == 200
        return len(f), len(a)

    counts()  # the first request of a token also records its use
    before = counts()
    for n in range(5):
        _deal(f"more {n}", "10.00", "EUR", stage="proposal", source="display", expected_close_date=date(2026, 2, 1 + n))
    forecast_snapshot_take(on=date(2026, 1, 20))
    assert counts() == before


# --- API, with a token --------------------------------------------------------


def test_forecast_and_accuracy_endpoints_with_a_token(book, token_api):
    api = token_api(READ)
    r = api.get("/api/v1/attribution/forecast")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["currency"] == "USD" and body["total"]["weighted"] == "2700.00"
    assert [m["month"] for m in body["by_month"]] == ["2026-04", "2026-05", "(unscheduled)"]
    r = api.get("/api/v1/attribution/forecast", {"source": "email", "format": "csv"})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    lines = r.content.decode().splitlines()
    assert lines[0] == "currency,month,open_deals,pipeline,weighted,commit,unconverted_deals"
    assert lines[1] == "USD,2026-04,2,2600.00,2170.00,2200.00,0"
    assert api.get("/api/v1/attribution/forecast", {"currency": "EUR"}).json()["total"]["weighted"] == "1900.00"
    r = api.get("/api/v1/attribution/forecast", {"currency": "E1"})
    assert r.status_code == 400 and "currency" in error_fields(r)
    r = api.get("/api/v1/attribution/forecast", {"start": "2026-05-01", "end": "2026-04-01"})
    assert r.status_code == 400 and "end" in error_fields(r)

    r = api.get("/api/v1/attribution/forecast/accuracy")
    assert r.status_code == 200 and r.json() == {"currency": "USD", "results": []}

    # scoped: a client without attribution:read is refused
    assert token_api(WRITE).get("/api/v1/attribution/forecast").status_code == 403
    assert token_api(WRITE).get("/api/v1/attribution/forecast/accuracy").status_code == 403


def test_report_and_compare_currency_filter_with_a_token(token_api):
    api = token_api(READ)
    r = api.get("/api/v1/attribution/report", {"currency": "eur"})
    assert r.status_code == 200, r.content
    assert {k: r.json()[k] for k in ("currency", "converted", "unconverted_currencies")} == {
        "currency": "EUR", "converted": False, "unconverted_currencies": []}
    r = api.get("/api/v1/attribution/compare")
    assert r.status_code == 200 and (r.json()["currency"], r.json()["converted"]) == ("USD", True)
    r = api.get("/api/v1/attribution/report", {"currency": "12$"})
    assert r.status_code == 400 and "currency" in error_fields(r)


def test_deal_probability_and_expected_close_through_the_api(book, token_api):
    api = token_api(READ, WRITE)
    c = book["c"]
    r = api.patch(f"/api/v1/opportunities/{c.pk}", {"probability": "60", "expected_close_date": "2026-06-30"}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["probability"], body["own_probability"], body["stage_probability"], body["expected_close_date"]) == (
        "60.00", "60.00", "20.00", "2026-06-30")
    months = {m["month"]: m for m in api.get("/api/v1/attribution/forecast").json()["by_month"]}
    assert months["2026-06"]["weighted"] == "240.00"
    r = api.patch(f"/api/v1/opportunities/{c.pk}", {"probability": "101"}, format="json")
    assert r.status_code == 400 and "probability" in error_fields(r)
    r = api.patch(f"/api/v1/opportunities/{c.pk}", {"probability": None}, format="json")
    assert r.json()["probability"] == "20.00"


def test_csv_import_sets_and_checks_the_forecast_columns(settings):
    from django.core.exceptions import ValidationError

    from attribution.imports import opportunities_import
    from attribution.models import Opportunity

    settings.MARTECH_COMPANY_CURRENCY = "USD"
    with pytest.raises(ValidationError) as exc:
        opportunities_import(rows=[
            {"name": "ok", "amount": "10", "probability": "30", "expected_close_date": "2026-07-01"},
            {"name": "bad", "probability": "130", "expected_close_date": "2026-02-30"},
        ])
    assert exc.value.message_dict == {"row 3": ["probability: A percentage from 0 to 100.", "expected_close_date: A date, as YYYY-MM-DD."]}
    assert not Opportunity.objects.exists()
    assert opportunities_import(rows=[{"name": "ok", "amount": "10", "probability": "30", "expected_close_date": "2026-07-01"}]) == {
        "created": 1, "updated": 0}
    opp = Opportunity.objects.get()
    assert (opp.probability, opp.expected_close_date, opp.currency) == (Decimal("30"), date(2026, 7, 1), "USD")
