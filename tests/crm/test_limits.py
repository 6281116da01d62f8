"""Limits pause, never kill: a HubSpot 429 (any policy, no Retry-After, as
HubSpot documents it), HubSpot's DAILY limit and Salesforce's 403
REQUEST_LIMIT_EXCEEDED pause the connection and charge no record an
attempt; what earlier chunks of a batch wrote is kept; the HubSpot
connector paces itself under the window. On the emulators over HTTP, through
hubspot-api-client and simple-salesforce."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.utils import timezone

from martech.crm import tasks
from martech.crm.connectors.base import RateLimiter, limiter_for, parse_rate
from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.models import Connection, OutboxItem, PushState, SyncRun
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Lead, LifecycleStage

pytestmark = pytest.mark.django_db
UPSERT = ("POST", "/crm/v3/objects/contacts/batch/upsert")
SF_UPSERT = ("PATCH", "/services/data/v59.0/composite/sobjects/Lead/Martech_Id__c")


def _queue(connection, n: int, prefix: str = "q") -> list[int]:
    """``n`` leads queued for ``connection``, as the lead hook queues them (in bulk, for speed)."""
    stage = LifecycleStage.objects.filter(key="lead").first()
    leads = Lead.objects.bulk_create([Lead(email=f"{prefix}{i}@example.org", first_name="F", last_name=f"L{i}",
                                           company_name="Acme", lifecycle_stage=stage) for i in range(n)])
    OutboxItem.objects.all().delete()  # whatever the hook queued; exactly one pending row per lead below
    OutboxItem.objects.bulk_create([OutboxItem(connection=connection, object="contact", local_id=lead.pk)
                                    for lead in leads])
    return [lead.pk for lead in leads]


def _resume(connection, *, new_day: bool = False) -> None:
    """The pause is over: move it (and the released rows) into the past, as
    the clock would; ``new_day``: past midnight too (today's counts are yesterday's)."""
    past = timezone.now() - dt.timedelta(seconds=1)
    Connection.objects.filter(pk=connection.pk).update(paused_until=past)
    if new_day:
        yesterday = timezone.now() - dt.timedelta(days=1)
        Connection.objects.filter(pk=connection.pk).update(api_calls_day=yesterday.date(), crm_calls_at=yesterday)
    OutboxItem.objects.filter(status="pending").update(next_attempt_at=past)
    connection.refresh_from_db()


def _paused_for(run, until):
    """The pause the run set, as a whole length: the limit answer came between its start and its end."""
    for seconds in (10, 3600):
        if run.started_at + dt.timedelta(seconds=seconds) <= until <= run.finished_at + dt.timedelta(seconds=seconds):
            return dt.timedelta(seconds=seconds)
    return until - run.finished_at


def _untouched(n: int) -> None:
    rows = OutboxItem.objects.filter(status="pending")
    assert rows.count() == n
    assert not rows.exclude(attempts=0).exists(), "a limit charged records an attempt"
    assert not OutboxItem.objects.filter(status="dead").exists()


# --- pause, never kill ------------------------------------------------------------

def test_hubspot_429_without_retry_after_pauses_and_charges_nothing(connection, hubspot, no_sleep):
    _queue(connection, 1000)
    hubspot.burst_429 = 1  # HubSpot's documented 429: policyName TEN_SECONDLY_ROLLING, no Retry-After
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (0, 0)
    assert "TEN_SECONDLY_ROLLING" in run.error and "paused until" in run.error
    assert no_sleep == []  # not waited out inside the call: the connection pauses
    _untouched(1000)
    connection.refresh_from_db()
    assert "TEN_SECONDLY_ROLLING" in connection.pause_reason
    # The interval from X-HubSpot-RateLimit-Interval-Milliseconds (10 s).
    assert _paused_for(run, connection.paused_until) == dt.timedelta(seconds=10)
    assert "Paused until" in connection.last_error
    # Released due at the pause end, not before.
    assert set(OutboxItem.objects.values_list("next_attempt_at", flat=True)) == {connection.paused_until}

    # While paused a drain and a pull only say so.
    again = outbox_drain(connection=connection)
    pulled = pull_changes(connection=connection)
    assert again.paused_until == pulled.paused_until == connection.paused_until
    assert again.error.startswith("Paused until") and (again.api_calls, pulled.api_calls) == (0, 0)
    assert hubspot.calls[UPSERT] == 1 and hubspot.statuses[429] == 1

    _resume(connection)
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed, run.error) == (1000, 0, "")
    assert OutboxItem.objects.filter(status="done").count() == 1000 and len(hubspot.contacts) == 1000
    connection.refresh_from_db()
    assert connection.paused_until is None and connection.pause_reason == ""


def test_limits_never_make_dead_letters_however_often_they_come(connection, hubspot, no_sleep, settings):
    """The old failure: every drain charged an attempt, and the whole outbox
    was dead after MAX_ATTEMPTS drains."""
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "MAX_ATTEMPTS": 2}
    _queue(connection, 300)
    for _ in range(4):
        hubspot.burst_429 = 1
        run = outbox_drain(connection=connection)
        assert run.pushed == 0 and "paused until" in run.error
        _untouched(300)
        _resume(connection)
    assert outbox_drain(connection=connection).pushed == 300


def test_hubspot_daily_limit_pauses_until_midnight_utc(connection, hubspot, no_sleep):
    _queue(connection, 1000)
    hubspot.daily_limit = 0  # spent: 429 policyName DAILY
    run = outbox_drain(connection=connection)
    assert run.pushed == 0 and "DAILY" in run.error
    _untouched(1000)
    connection.refresh_from_db()
    midnight = dt.datetime.combine(run.started_at.astimezone(dt.timezone.utc).date() + dt.timedelta(days=1),
                                   dt.time(), tzinfo=dt.timezone.utc)
    assert connection.paused_until == midnight and "DAILY" in connection.pause_reason
    assert hubspot.refused_429 == {"DAILY": 1}

    hubspot.daily_limit = None  # a new day
    _resume(connection, new_day=True)
    assert outbox_drain(connection=connection).pushed == 1000
    _untouched(0)


def test_salesforce_request_limit_exceeded_pauses_and_rechecks_hourly(sf_connection, salesforce, sf_no_sleep):
    _queue(sf_connection, 1000)
    salesforce.daily_max, salesforce.api_used = 5_000, 5_000  # the org's allowance is spent
    out = tasks.drain_outbox()  # reads /limits first: refused too
    assert out == {"salesforce": 0}
    run = SyncRun.objects.filter(connection=sf_connection).latest("pk")
    assert "REQUEST_LIMIT_EXCEEDED" in run.error and "TotalRequests Limit exceeded." in run.error
    _untouched(1000)
    sf_connection.refresh_from_db()
    assert _paused_for(run, sf_connection.paused_until) == dt.timedelta(hours=1)
    assert "REQUEST_LIMIT_EXCEEDED" in sf_connection.pause_reason
    assert salesforce.limit_refused == 1 and salesforce.write_calls() == 0

    # The 403 carried Sforce-Limit-Info (5000/5000): a drain without the /limits
    # read pauses again at that figure without a call.
    _resume(sf_connection)
    run = outbox_drain(connection=sf_connection)
    assert run.pushed == 0 and "allowance used (5000 of 5000 calls)" in run.error and run.api_calls == 0
    _untouched(1000)

    salesforce.api_used = 1_000  # calls aged out of the rolling 24 h
    _resume(sf_connection)
    assert tasks.drain_outbox() == {"salesforce": 1000}
    _untouched(0)
    sf_connection.refresh_from_db()
    # Kept current from Sforce-Limit-Info: /limits and five Collections calls.
    assert sf_connection.api_calls_used == sf_connection.crm_calls_used == salesforce.api_used == 1_006


def test_salesforce_pauses_at_the_allowance_it_reads_from_the_headers(sf_connection, salesforce, sf_no_sleep,
                                                                       settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "DRAIN_BATCH": 200}
    _queue(sf_connection, 1000)
    salesforce.daily_max, salesforce.api_used = 10_000, 9_998  # two calls left
    run = outbox_drain(connection=sf_connection)
    # One batch of 200; Sforce-Limit-Info then says 9999/10000: past SLOWDOWN_AT, one batch of 100 and stop.
    assert (run.pushed, run.error) == (300, "") and salesforce.limit_refused == 0
    sf_connection.refresh_from_db()
    assert (sf_connection.api_calls_used, sf_connection.daily_api_limit) == (10_000, 10_000)
    run = outbox_drain(connection=sf_connection)
    # At the allowance: paused (Salesforce: look again in an hour), no call made, nothing refused or charged.
    assert run.pushed == 0 and run.api_calls == 0 and "allowance" in run.error
    sf_connection.refresh_from_db()
    assert _paused_for(run, sf_connection.paused_until) == dt.timedelta(hours=1)
    assert salesforce.limit_refused == 0
    _untouched(700)


# --- partial chunks ----------------------------------------------------------------

def _pushed(connection, ids: list[int]) -> set[int]:
    return set(PushState.objects.filter(connection=connection, local_id__in=ids).values_list("local_id", flat=True))


def test_a_limit_in_chunk_5_of_10_keeps_chunks_1_to_4(connection, hubspot, no_sleep):
    ids = _queue(connection, 1000)
    hubspot.daily_limit = 4  # the fifth call of the day is refused: 429 DAILY
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (400, 0) and "DAILY" in run.error
    assert run.by_object == {"contact": {"pushed": 400, "failed": 0}}
    assert _pushed(connection, ids) == set(ids[:400])
    assert OutboxItem.objects.filter(status="done").count() == 400
    assert Lead.objects.filter(pk__in=ids[:400], hubspot_id="").count() == 0  # CRM ids written back
    _untouched(600)  # never sent: released, no attempt
    hubspot.daily_limit = None
    _resume(connection, new_day=True)
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.skipped) == (600, 0) and len(hubspot.contacts) == 1000


def test_a_refused_call_in_chunk_5_charges_only_the_records_not_written(connection, hubspot, no_sleep, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 1}
    ids = _queue(connection, 1000)
    served = {"n": 0}
    answer = hubspot.limit_refusal

    def fifth_fails(request):
        if (request.method, request.path) == UPSERT:
            served["n"] += 1
            if served["n"] >= 5:
                return hubspot.unavailable()  # 503, and again on the retry
        return answer(request)

    hubspot.limit_refusal = fifth_fails
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (400, 600)
    assert "503" in run.error
    assert _pushed(connection, ids) == set(ids[:400])
    charged = OutboxItem.objects.filter(status="pending")
    assert charged.count() == 600 and set(charged.values_list("attempts", flat=True)) == {1}
    assert "503" in charged.first().last_error
    connection.refresh_from_db()
    assert connection.paused_until is None and "503" in connection.last_error


def test_salesforce_org_limit_in_the_third_collection_keeps_the_first_two(sf_connection, salesforce, sf_no_sleep):
    ids = _queue(sf_connection, 1000)
    # Our stored figures know nothing yet: the org has two calls left, then answers 403 REQUEST_LIMIT_EXCEEDED.
    salesforce.daily_max, salesforce.api_used = 100_002, 100_000
    run = outbox_drain(connection=sf_connection)
    assert (run.pushed, run.failed) == (400, 0) and "REQUEST_LIMIT_EXCEEDED" in run.error
    assert salesforce.calls[SF_UPSERT] == 3 and salesforce.limit_refused == 1
    assert _pushed(sf_connection, ids) == set(ids[:400])
    assert OutboxItem.objects.filter(status="done").count() == 400
    assert Lead.objects.filter(pk__in=ids[:400], salesforce_lead_id="").count() == 0
    _untouched(600)
    sf_connection.refresh_from_db()
    assert sf_connection.paused_until is not None and "TotalRequests" in sf_connection.pause_reason


# --- pacing ----------------------------------------------------------------------

def test_pacing_under_an_enforced_window_never_meets_a_429(connection, hubspot, no_sleep, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_RATE": "5/1s"}
    hubspot.rate_limit = "5/1s"  # enforced: a sixth request within a rolling second is a 429
    _queue(connection, 1500)
    connector = HubSpotConnector(connection)
    run = outbox_drain(connection=connection, connector=connector)
    assert run.pushed == 1500 and run.error == ""
    assert hubspot.statuses[429] == 0 and not hubspot.refused_429
    assert hubspot.calls[UPSERT] == 15
    assert connector.stats.paced  # it did wait for the window (how long is not asserted)


def test_remaining_header_paces_calls_made_elsewhere_with_the_same_token(connection, hubspot, no_sleep, settings):
    # Our limiter allows far more than the portal: only X-HubSpot-RateLimit-Remaining keeps us under it.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_RATE": "1000/1s"}
    hubspot.rate_limit = "4/1s"
    _queue(connection, 1200)
    connector = HubSpotConnector(connection)
    run = outbox_drain(connection=connection, connector=connector)
    assert run.pushed == 1200 and hubspot.statuses[429] == 0
    assert connector.stats.paced


def test_the_limiter_is_shared_by_the_threads_of_a_process(connection, hubspot, settings):
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_RATE": "4/1s"}
    hubspot.rate_limit = "4/1s"
    hubspot.add_owner(owner_id="1", email="o@example.org")
    connectors = [HubSpotConnector(connection) for _ in range(3)]
    assert connectors[0].limiter is connectors[1].limiter is connectors[2].limiter
    errors: list[Exception] = []

    def work(connector):
        try:
            for _ in range(4):
                connector.owners()
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in connectors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # owners() reads two pages (the active owners, then the archived ones): 3 x 4 x 2 calls.
    assert errors == [] and hubspot.statuses[429] == 0 and hubspot.statuses[200] == 24


def test_rate_setting_and_limiter_unit():
    assert parse_rate("190/10s") == (190, 10.0) and parse_rate("100/10s") == (100, 10.0)
    assert parse_rate("6000/1m") == (6000, 60.0)
    with pytest.raises(ValueError):
        parse_rate("fast")
    assert limiter_for((1, "u"), "190/10s") is limiter_for((1, "u"), "190/10s")
    assert limiter_for((1, "u"), "100/10s").limit == 100  # a changed setting: a new limiter
    clock = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: clock[0])
    for _ in range(2):
        limiter.acquire()
        limiter.release()
    assert limiter._running == 0 and len(limiter._ends) == 2  # both slots count until t=10
    clock[0] = 10.0
    limiter.acquire()  # free again: no wait
    limiter.release()


# --- isolation -------------------------------------------------------------------

def test_a_crashing_connection_does_not_stop_the_next_one(connection, hubspot, sf_connection, salesforce,
                                                          sf_no_sleep, monkeypatch):
    from martech.crm.connectors.salesforce import SalesforceConnector
    from martech.crm.selectors import connection_health

    assert connection.pk < sf_connection.pk  # HubSpot's drain and pull come first
    _queue(connection, 3, prefix="h")
    OutboxItem.objects.bulk_create([OutboxItem(connection=sf_connection, object="contact", local_id=pk)
                                    for pk in Lead.objects.values_list("pk", flat=True)])

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(HubSpotConnector, "push_batch", broken)
    monkeypatch.setattr(HubSpotConnector, "pull_since", broken)
    monkeypatch.setattr(HubSpotConnector, "owners", broken)
    # Salesforce's /limits read crashes too: recorded, and its drain goes on with the stored figures.
    monkeypatch.setattr(SalesforceConnector, "limits", broken)
    salesforce.put("Lead", {"LastName": "Pulled", "Company": "Acme", "Email": "pulled@example.org"})

    assert tasks.drain_outbox() == {"hubspot": 0, "salesforce": 3}
    out = tasks.pull_all()
    assert out["salesforce:contact"] >= 1 and Lead.objects.filter(email="pulled@example.org").exists()
    assert SyncRun.objects.get(connection=sf_connection, kind="pull", object="contact").error == ""

    connection.refresh_from_db()
    sf_connection.refresh_from_db()
    assert "OSError: No space left on device" in connection.last_error and connection.last_error_at
    assert sf_connection.last_error.startswith("reading the API allowance: OSError")
    failed = SyncRun.objects.filter(connection=connection).exclude(error="")
    assert {r.kind for r in failed} == {"push", "pull"}
    assert all("OSError" in r.error and r.finished_at for r in failed)
    health = connection_health(connection=connection)
    assert health["success_rate_24h"] == 0.0 and health["runs_failed_24h"] >= 2
    assert "OSError" in health["last_failed_run"]["error"] and "OSError" in health["last_error"]
    assert OutboxItem.objects.filter(connection=connection, attempts__gt=0).count() == 0  # a crash charges none


def test_a_crash_outside_the_services_is_recorded_and_the_loop_goes_on(connection, hubspot, sf_connection,
                                                                      salesforce, sf_no_sleep, monkeypatch):
    from martech.crm import services

    _queue(sf_connection, 2)
    real = services.pulled_object_keys

    def keys(*, connection, connector=None):
        if connection.provider == "hubspot":
            raise OSError("connector config unreadable")
        return real(connection=connection, connector=connector)

    monkeypatch.setattr(services, "pulled_object_keys", keys)
    tasks.pull_all()
    run = SyncRun.objects.get(connection=connection, kind="pull", error__contains="OSError")
    assert run.error == "Crashed: OSError: connector config unreadable"
    assert SyncRun.objects.filter(connection=sf_connection, kind="pull", object="contact").exists()


def test_webhooks_during_a_pause_make_no_call_and_a_limit_pauses(connection, hubspot, no_sleep):
    from martech.crm.models import WebhookReceipt
    from martech.crm.services import connection_pause, webhook_process

    made = hubspot.put_contact({"email": "w@example.org"})
    first = WebhookReceipt.objects.create(provider="hubspot", event_id="1", payload={
        "subscriptionType": "contact.propertyChange", "objectId": int(made["id"])})
    hubspot.burst_429 = 1
    webhook_process(receipt_ids=[first.pk])
    first.refresh_from_db()
    connection.refresh_from_db()
    assert "TEN_SECONDLY_ROLLING" in first.error and connection.paused_until is not None
    connection_pause(connection=connection, until=timezone.now() + dt.timedelta(minutes=1), reason="DAILY")
    second = WebhookReceipt.objects.create(provider="hubspot", event_id="2", payload={
        "subscriptionType": "contact.propertyChange", "objectId": int(made["id"])})
    calls = sum(hubspot.calls.values())
    webhook_process(receipt_ids=[second.pk])
    second.refresh_from_db()
    assert second.error.startswith("Paused until") and sum(hubspot.calls.values()) == calls
