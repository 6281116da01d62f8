"""Money: three currencies (USD as the company currency, EUR, JPY), dated
rates, a rate change, a currency with no rate; the rates' admin, CSV
import through django-import-export and the fetch from a local server."""
from __future__ import annotations

import csv
import io
import threading
from datetime import date, datetime, timedelta, timezone as dt_tz
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import tablib
from django.core.exceptions import ValidationError

from attribution import money, selectors
from attribution.computation import attribution_compute
from attribution.models import AttributionCredit, AttributionRollup, CampaignSpend, ExchangeRate
from attribution.money import RateTable, exchange_rate_upsert, exchange_rates_fetch, exchange_rates_import
from attribution.resources import ExchangeRateResource
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from attribution.touchpoints import touchpoints_rebuild
from tests.factories import CampaignFactory, EventFactory, LeadFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=dt_tz.utc)
D0 = T0.date()


@pytest.fixture(autouse=True)
def company_usd(settings):
    settings.MARTECH_COMPANY_CURRENCY = "USD"


@pytest.fixture
def recomputes(monkeypatch):
    """The recompute batches a rate change queues, run at once (as the worker would)."""
    batches: list[list[int]] = []

    def run(func, ids, **kwargs):
        assert func == "attribution.tasks.opportunities_attribute"
        batches.append(list(ids))
        attribution_compute(opportunity_ids=ids)

    monkeypatch.setattr(money, "async_task", run)
    return batches


def _won(lead, *, amount: str, currency: str, created: datetime, closed: datetime):
    opp, _ = opportunity_upsert(
        data={"name": f"{amount} {currency}", "amount": Decimal(amount), "currency": currency, "created_at": created},
        source="t",
    )
    opportunity_set_contact(opportunity=opp, lead=lead, is_primary=True)
    opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="t", at=closed)
    return opp


@pytest.fixture
def world(django_capture_on_commit_callbacks):
    """One week, one email touch each: 100 USD, 100 EUR and 10,000 JPY won;
    EUR at 1.10 from D0-10, JPY at 0.0067 from D0-30 (rates also later,
    after the closes, which must not be used)."""
    campaign = CampaignFactory(channel="email")
    leads = [LeadFactory() for _ in range(3)]
    for i, lead in enumerate(leads):
        EventFactory(lead=lead, occurred_at=T0 - timedelta(days=3, hours=i), channel="email", campaign=campaign, utm_source="x")
    touchpoints_rebuild(lead_ids=[lead.pk for lead in leads])
    ExchangeRate.objects.create(currency="EUR", date=D0 - timedelta(days=10), rate=Decimal("1.10"))
    ExchangeRate.objects.create(currency="EUR", date=D0 + timedelta(days=30), rate=Decimal("2.00"))
    ExchangeRate.objects.create(currency="JPY", date=D0 - timedelta(days=30), rate=Decimal("0.0067"))
    deals = [
        _won(leads[0], amount="100.00", currency="USD", created=T0 - timedelta(days=2), closed=T0 + timedelta(days=1)),
        _won(leads[1], amount="100.00", currency="EUR", created=T0 - timedelta(days=2), closed=T0 + timedelta(days=2)),
        _won(leads[2], amount="10000.00", currency="JPY", created=T0 - timedelta(days=2), closed=T0 + timedelta(days=3)),
    ]
    CampaignSpend.objects.create(campaign=campaign, date=D0, amount=Decimal("50.00"), currency="EUR")
    CampaignSpend.objects.create(campaign=campaign, date=D0 + timedelta(days=1), amount=Decimal("45.00"), currency="USD")
    attribution_compute()
    return {"campaign": campaign, "deals": deals, "leads": leads}


def _email(**kwargs) -> dict:
    [row] = [r for r in selectors.attribution_report(model="linear", group_by="channel", **kwargs) if r["group"] == "email"]
    return row


def test_report_converts_each_deal_at_its_close_day_rate_and_names_the_rate_dates(world):
    row = _email()
    # 100 USD + 100 EUR x 1.10 + 10,000 JPY x 0.0067 (not 10,200.00 added raw)
    assert row["currency"] == "USD"
    assert row["attributed_revenue"] == Decimal("277.00")
    assert row["attributed_pipeline"] == Decimal("277.00")
    assert (row["rate_date_first"], row["rate_date_last"]) == (D0 - timedelta(days=30), D0 - timedelta(days=10))
    assert row["unconverted_currencies"] == ""
    # spend: 50 EUR at 1.10 + 45 USD = 100.00; ROI over converted amounts only
    assert row["spend"] == Decimal("100.00")
    assert (row["roas"], row["roi"]) == (2.77, 1.77)
    assert row["cpa"] == Decimal("33.33")  # 100.00 over three conversions

    # filtered to one currency: that currency's deals and spend, unconverted
    eur = _email(currency="EUR")
    assert (eur["currency"], eur["attributed_revenue"], eur["spend"]) == ("EUR", Decimal("100.00"), Decimal("50.00"))
    assert eur["attributed_conversions"] == 1.0 and eur["roas"] == 2.0
    assert (eur["rate_date_first"], eur["rate_date_last"]) == (None, None)  # no rate was used
    jpy = _email(currency="JPY")
    assert (jpy["attributed_revenue"], jpy["spend"], jpy["roi"]) == (Decimal("10000.00"), None, None)

    # the rollup rows carry the deals' currency, and the credits the rate date used
    currencies = set(AttributionRollup.objects.filter(model="linear", basis="won").values_list("currency", flat=True))
    assert currencies == {"USD", "EUR", "JPY"}
    eur_credit = AttributionCredit.objects.get(model="linear", opportunity=world["deals"][1])
    assert (eur_credit.credit, eur_credit.currency, eur_credit.company_credit, eur_credit.rate_date) == (
        Decimal("100.00"), "EUR", Decimal("110.00"), D0 - timedelta(days=10))
    assert eur_credit.company_amount == Decimal("110.00")
    # a deal in the company currency stores its credit once: its company amount is the credit
    usd_credit = AttributionCredit.objects.get(model="linear", opportunity=world["deals"][0])
    assert (usd_credit.credit, usd_credit.currency, usd_credit.company_credit, usd_credit.rate_date) == (
        Decimal("100.00"), "USD", None, None)
    assert usd_credit.company_amount == Decimal("100.00")
    usd_rollup = AttributionRollup.objects.get(model="linear", basis="won", currency="USD")
    assert (usd_rollup.credit, usd_rollup.company_credit, usd_rollup.unconverted) == (
        Decimal("100.00"), Decimal("100.00"), Decimal("0.00"))


def test_a_rate_change_recomputes_the_deals_it_moves_and_no_others(world, recomputes, django_capture_on_commit_callbacks):
    usd, eur, jpy = world["deals"]
    # an EUR deal closed after the next EUR rate (D0 + 30) keeps that rate
    later = _won(world["leads"][1], amount="10.00", currency="EUR", created=T0, closed=T0 + timedelta(days=35))
    attribution_compute(opportunity_ids=[later.pk])
    with django_capture_on_commit_callbacks(execute=True):
        exchange_rate_upsert(currency="eur", date=D0, rate="1.25", source="test")
    # only the EUR deal closed between D0 and the next rate is moved; USD, JPY and the later deal are not touched
    assert recomputes == [[eur.pk]]
    in_week = _email(end=D0 + timedelta(days=10))
    assert in_week["attributed_revenue"] == Decimal("292.00")  # 100 + 125 + 67
    assert AttributionCredit.objects.get(model="linear", opportunity=eur).rate_date == D0
    # the same rate again changes nothing and queues nothing
    with django_capture_on_commit_callbacks(execute=True):
        exchange_rate_upsert(currency="EUR", date=D0, rate="1.2500", source="test")
    assert recomputes == [[eur.pk]]
    # a rate dated after every JPY close moves no deal: nothing is queued
    with django_capture_on_commit_callbacks(execute=True):
        exchange_rate_upsert(currency="JPY", date=D0 + timedelta(days=20), rate="1", source="test")
    assert recomputes[1:] == [] and _email(end=D0 + timedelta(days=10))["attributed_revenue"] == Decimal("292.00")
    # the compare table follows
    [email] = [r for r in selectors.attribution_compare(group_by="channel", end=D0 + timedelta(days=10), models=["linear", "first_touch"])
               if r["group"] == "email"]
    assert email["revenue"] == {"linear": Decimal("292.00"), "first_touch": Decimal("292.00")} and email["currency"] == "USD"
    # deleting the D0 rate moves the EUR deal back to 1.10
    with django_capture_on_commit_callbacks(execute=True):
        money.exchange_rate_delete(rate=ExchangeRate.objects.get(currency="EUR", date=D0))
    assert recomputes[1:] == [[eur.pk]]
    assert _email(end=D0 + timedelta(days=10))["attributed_revenue"] == Decimal("277.00")


def test_a_currency_without_a_rate_is_flagged_never_taken_at_one(world):
    lead = LeadFactory()
    EventFactory(lead=lead, occurred_at=T0 - timedelta(days=1), channel="email", utm_source="x")
    touchpoints_rebuild(lead_ids=[lead.pk])
    gbp = _won(lead, amount="1000.00", currency="GBP", created=T0 - timedelta(days=1), closed=T0 + timedelta(days=1))
    attribution_compute(opportunity_ids=[gbp.pk])
    credit = AttributionCredit.objects.get(model="linear", opportunity=gbp)
    assert (credit.company_credit, credit.rate_date, credit.company_amount) == (None, None, None)
    row = _email()
    assert row["attributed_revenue"] == Decimal("277.00")  # not 1,277.00
    assert row["unconverted_currencies"] == "GBP"
    assert (row["roi"], row["roas"], row["cpa"]) == (None, None, None)  # not over a partial revenue
    assert selectors.money_summary([row], currency=None)["unconverted_currencies"] == ["GBP"]
    assert _email(currency="GBP")["attributed_revenue"] == Decimal("1000.00")
    body = selectors.pipeline_report()
    assert body["unconverted_currencies"] == ["GBP"] and body["currency"] == "USD"


def _rollup_money():
    fields = ("model", "basis", "day", "channel", "campaign_id", "currency", "credit", "company_credit", "unconverted",
              "rate_date_first", "rate_date_last", "first_of_opportunity")
    return sorted(AttributionRollup.objects.values_list(*fields), key=str)


def test_the_streamed_rollup_equals_the_sql_aggregate_with_currencies(world):
    """A full run sums the rollup in Python as it streams the credits, an
    incremental one aggregates them in SQL: the same money columns either way,
    a deal without a rate included."""
    lead = LeadFactory()
    EventFactory(lead=lead, occurred_at=T0 - timedelta(days=1), channel="email", utm_source="x")
    touchpoints_rebuild(lead_ids=[lead.pk])
    _won(lead, amount="1000.00", currency="GBP", created=T0 - timedelta(days=1), closed=T0 + timedelta(days=1))
    attribution_compute()
    streamed = _rollup_money()
    assert {r[5] for r in streamed} == {"USD", "EUR", "JPY", "GBP"}
    gbp = [r for r in streamed if r[5] == "GBP" and r[0] == "linear" and r[1] == "won"]
    assert [(r[7], r[8], r[9]) for r in gbp] == [(Decimal("0.00"), Decimal("1000.00"), None)]
    usd = [r for r in streamed if r[5] == "USD" and r[0] == "linear" and r[1] == "won"]
    assert [(r[6], r[7], r[8]) for r in usd] == [(Decimal("100.00"), Decimal("100.00"), Decimal("0.00"))]
    from attribution.computation import ALL_MODELS, rollup_refresh

    rollup_refresh(models=list(ALL_MODELS))
    assert _rollup_money() == streamed


def test_deal_size_and_win_rate_by_source_over_converted_amounts(world):
    body = selectors.pipeline_report()
    assert body["average_deal_size"] == Decimal("92.33")  # (100 + 110 + 67) / 3, not 3,400.00
    [none] = body["win_rate_by_source"]
    assert (none["won"], none["won_amount"], none["average_deal_size"]) == (3, Decimal("277.00"), Decimal("92.33"))


def test_rate_table_takes_the_latest_rate_on_or_before_the_day():
    table = RateTable([("EUR", date(2026, 1, 1), Decimal("1.1")), ("EUR", date(2026, 2, 1), Decimal("1.2"))], company="USD")
    assert table.convert(Decimal("10.00"), "EUR", date(2025, 12, 31)) is None
    assert table.convert(Decimal("10.00"), "EUR", date(2026, 1, 31)).amount == Decimal("11.00")
    c = table.convert(Decimal("10.00"), "EUR", date(2026, 2, 1))
    assert (c.amount, c.rate_date) == (Decimal("12.00"), date(2026, 2, 1))
    usd = table.convert(Decimal("10.00"), "USD", date(2020, 1, 1))
    assert (usd.amount, usd.rate_date) == (Decimal("10.00"), None)
    # half-even to the cent: 0.125 -> 0.12
    assert RateTable([("EUR", date(2026, 1, 1), Decimal("0.0125"))], company="USD").convert(
        Decimal("10.00"), "EUR", date(2026, 1, 1)).amount == Decimal("0.12")


@pytest.mark.parametrize("kwargs, field", [
    ({"currency": "E1R", "rate": "1"}, "currency"),
    ({"currency": "USD", "rate": "1"}, "currency"),  # the company currency
    ({"currency": "EUR", "rate": "0"}, "rate"),
    ({"currency": "EUR", "rate": "-2"}, "rate"),
    ({"currency": "EUR", "rate": "abc"}, "rate"),
])
def test_rate_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        exchange_rate_upsert(date=D0, source="t", **kwargs)
    assert field in exc.value.message_dict
    assert not ExchangeRate.objects.exists()


def test_rates_import_is_all_or_nothing_and_names_each_bad_row():
    with pytest.raises(ValidationError) as exc:
        exchange_rates_import(rows=[
            {"currency": "EUR", "date": "2026-01-02", "rate": "1.1"},
            {"currency": "usd", "date": "2026-01-02", "rate": "1"},
            {"currency": "JPY", "date": "2026-13-01", "rate": "0.0067"},
        ])
    assert set(exc.value.message_dict) == {"row 3", "row 4"}
    assert not ExchangeRate.objects.exists()


def test_csv_import_and_export_through_django_import_export(recomputes, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    opp, _ = opportunity_upsert(data={"name": "x", "amount": Decimal("10.00"), "currency": "EUR", "created_at": T0}, source="t")
    opportunity_set_contact(opportunity=opp, lead=lead, is_primary=True)
    bad = tablib.Dataset(headers=["currency", "date", "rate"])
    bad.append(["eur", "2026-03-01", "1.1"])
    bad.append(["GBP", "2026-03-01", "0"])
    result = ExchangeRateResource().import_data(bad, dry_run=False)
    assert result.has_validation_errors()
    [invalid] = result.invalid_rows
    assert invalid.number == 2 and "rate" in invalid.error_dict
    assert not ExchangeRate.objects.exists()  # all or nothing

    good = tablib.Dataset(headers=["currency", "date", "rate"])
    good.append(["eur", "2026-03-01", "1.1"])
    good.append(["GBP", "2026-03-01", "1.3"])
    with django_capture_on_commit_callbacks(execute=True):
        result = ExchangeRateResource().import_data(good, dry_run=False)
    assert not result.has_errors() and not result.has_validation_errors()
    assert sorted(ExchangeRate.objects.values_list("currency", "rate")) == [("EUR", Decimal("1.1")), ("GBP", Decimal("1.3"))]
    assert recomputes == [[opp.pk]]
    assert AttributionCredit.objects.get(model="linear", opportunity=opp).company_credit == Decimal("11.00")

    exported = ExchangeRateResource().export().csv
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(r["currency"], r["date"], r["rate"]) for r in rows] == [("EUR", "2026-03-01", "1.1000000000"), ("GBP", "2026-03-01", "1.3000000000")]


ECB = b"""<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <Cube>
    <Cube time="2026-12-03">
      <Cube currency="USD" rate="1.0500"/>
      <Cube currency="JPY" rate="157.50"/>
      <Cube currency="GBP" rate="0.8400"/>
    </Cube>
  </Cube>
</gesmes:Envelope>"""


@pytest.fixture
def rates_server():
    """A loopback HTTP server answering the ECB file (no network here)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            body = ECB if self.path == "/eurofxref-daily.xml" else b"nope"
            self.send_response(200 if self.path == "/eurofxref-daily.xml" else 404)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()
    server.server_close()


def test_fetch_reads_the_ecb_file_and_rebases_it_on_the_company_currency(rates_server, settings, recomputes):
    base_url, hits = rates_server
    settings.MARTECH_MONEY = {**settings.MARTECH_MONEY, "RATES_URL": f"{base_url}/eurofxref-daily.xml", "RATES_BASE": "EUR"}
    from attribution.tasks import exchange_rates_fetch as task

    assert task() == {"rows": 3, "changed": 3}
    rates = dict(ExchangeRate.objects.filter(date=date(2026, 12, 3)).values_list("currency", "rate"))
    # 1 EUR = 1.05 USD; 1 JPY = 1.05 / 157.5 USD; 1 GBP = 1.05 / 0.84 USD
    assert rates == {"EUR": Decimal("1.0500000000"), "JPY": Decimal("0.0066666667"), "GBP": Decimal("1.2500000000")}
    assert task() == {"rows": 3, "changed": 0}  # idempotent
    assert hits == ["/eurofxref-daily.xml"] * 2

    import requests

    with pytest.raises(requests.HTTPError):
        exchange_rates_fetch(url=f"{base_url}/missing.xml")
    settings.MARTECH_COMPANY_CURRENCY = "CHF"  # not quoted in the file: refused, nothing written
    with pytest.raises(ValidationError, match="CHF"):
        exchange_rates_fetch()
    assert ExchangeRate.objects.count() == 3


def test_admin_edits_rates_through_the_service(client, marketing_ops, analyst, recomputes, django_capture_on_commit_callbacks):
    client.force_login(marketing_ops)
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post("/admin/attribution/exchangerate/add/", {"currency": "eur", "date": "2026-03-01", "rate": "1.1"})
    assert r.status_code == 302, r.content
    rate = ExchangeRate.objects.get()
    assert (rate.currency, rate.rate, rate.source) == ("EUR", Decimal("1.1"), "admin (mops)")
    r = client.post("/admin/attribution/exchangerate/add/", {"currency": "usd", "date": "2026-03-01", "rate": "1"})
    assert r.status_code == 200 and b"company currency" in r.content
    assert client.get("/admin/attribution/exchangerate/import/").status_code == 200
    assert client.get("/admin/attribution/exchangerate/").status_code == 200

    client.force_login(analyst)
    assert client.get("/admin/attribution/exchangerate/").status_code == 200
    assert client.get("/admin/attribution/exchangerate/import/").status_code == 403
    assert client.post("/admin/attribution/exchangerate/add/", {"currency": "GBP", "date": "2026-03-01", "rate": "1.3"}).status_code == 403
