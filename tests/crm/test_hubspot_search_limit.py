"""HubSpot's search endpoints have a limit of their own: 5 requests per
second per token (its CRM search guide). The emulator answers a search past
it with HubSpot's secondly 429; the connector paces its searches under it (a
second limiter beside the general one, shared by the pull's read-ahead
thread) and waits such a 429 out inside the call instead of pausing the
connection. Over HTTP through the real client."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.management import CommandError, call_command
from hubspot import HubSpot
from hubspot.crm.contacts import PublicObjectSearchRequest
from hubspot.crm.contacts.exceptions import ApiException

from martech.crm.connectors.base import RateLimited
from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.emulators.hubspot import DEFAULT_SEARCH_RATE, HubSpotEmulator
from martech.crm.models import Connection
from martech.crm.services import pull_changes
from martech.models import Lead

pytestmark = pytest.mark.django_db

BASE = dt.datetime(2026, 1, 5, 9, 0, 0, tzinfo=dt.timezone.utc)


def _client(hubspot, settings, token: str = "pat-one") -> HubSpot:
    return HubSpot(access_token=token, host=settings.MARTECH_CRM["HUBSPOT_URL"])


def _search(client: HubSpot):
    return client.crm.contacts.search_api.do_search(
        public_object_search_request=PublicObjectSearchRequest(filter_groups=[], sorts=[], properties=["email"],
                                                               limit=10, after="0"))


def _seed(hubspot, n: int) -> None:
    for i in range(n):
        hubspot.put("contacts", {"email": f"s{i}@example.org", "firstname": f"S{i}"},
                    at=BASE + dt.timedelta(milliseconds=i))


@pytest.fixture
def frozen(hubspot):
    """The emulator's clock, moved by hand: requests all fall in one second until it moves."""
    now = [1000.0]
    hubspot.clock = lambda: now[0]
    return now


def test_default_is_the_documented_five_per_second():
    assert DEFAULT_SEARCH_RATE == "5/1s"
    assert HubSpotEmulator().search_rate == "5/1s"


def test_sixth_search_in_a_second_is_hubspots_secondly_429(hubspot, settings, frozen):
    client = _client(hubspot, settings)
    for _ in range(5):
        assert _search(client).total == 0
    # Other calls do not count against the search limit, and are not refused by it.
    assert client.crm.contacts.basic_api.get_page(limit=10).results == []
    with pytest.raises(ApiException) as refused:
        _search(client)
    exc = refused.value
    assert exc.status == 429
    body = json.loads(exc.body)
    assert {k: body[k] for k in ("status", "message", "errorType", "policyName")} == {
        "status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT",
        "policyName": "SECONDLY"}
    assert body["correlationId"] and body["requestId"]
    assert "Retry-After" not in exc.headers  # HubSpot sends none
    # The usual headers (the ten-second window's; a refused search took none of it).
    assert exc.headers["X-HubSpot-RateLimit-Max"] == "190"
    assert exc.headers["X-HubSpot-RateLimit-Remaining"] == str(190 - 6)
    assert hubspot.refused_429["SECONDLY"] == 1
    # Per token: another token has its own five.
    other = _client(hubspot, settings, token="pat-two")
    for _ in range(5):
        _search(other)
    with pytest.raises(ApiException):
        _search(other)
    # A second later the first token may search again.
    frozen[0] += 1.0
    assert _search(client).total == 0
    assert hubspot.refused_429["SECONDLY"] == 2


def test_search_rate_is_a_setting_of_the_emulator(hubspot, settings, frozen):
    client = _client(hubspot, settings)
    hubspot.search_rate = "4/1s"  # the 2020 changelog's figure
    for _ in range(4):
        _search(client)
    with pytest.raises(ApiException):
        _search(client)
    hubspot.search_rate = None  # off
    for _ in range(20):
        _search(client)
    assert hubspot.refused_429["SECONDLY"] == 1


@pytest.fixture
def started(monkeypatch):
    """Run crm_emulator until it would serve forever; keep the app it built."""
    from martech.crm.management.commands import crm_emulator

    apps = []
    real = crm_emulator.Served

    class Capture(real):
        def __init__(self, app, **kwargs):
            apps.append(app)
            super().__init__(app, **kwargs)

    def stop(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(crm_emulator, "Served", Capture)
    monkeypatch.setattr(crm_emulator.time, "sleep", stop)
    return apps


def test_search_rate_from_the_command_line(started):
    call_command("crm_emulator", "--port", "0")
    assert started[-1].search_rate == "5/1s"
    call_command("crm_emulator", "--port", "0", "--search-rate", "4/1s")
    assert started[-1].search_rate == "4/1s"
    call_command("crm_emulator", "--port", "0", "--search-rate", "off")
    assert started[-1].search_rate is None
    with pytest.raises(CommandError, match="--search-rate"):
        call_command("crm_emulator", "--port", "0", "--search-rate", "often")
    with pytest.raises(CommandError, match="--search-rate: HubSpot only"):
        call_command("crm_emulator", "--provider", "salesforce", "--port", "0", "--search-rate", "5/1s")


def test_a_pull_of_many_pages_makes_no_search_faster_than_the_limit(connection, hubspot, settings):
    # 3 a second on both sides, so the pull (12 search pages of 200, read ahead
    # in a thread while pages are written) must be held back to keep under it.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_SEARCH_RATE": "3/1s"}
    hubspot.search_rate = "3/1s"
    n = 2_300
    _seed(hubspot, n)
    run = pull_changes(connection=connection)
    assert run.error == ""
    assert (run.pulled, run.failed) == (n, 0)
    assert Lead.objects.count() == n
    searches = [path for _, path, _ in hubspot.requests if path.endswith("/search")]
    assert len(searches) >= 12
    assert hubspot.refused_429["SECONDLY"] == 0  # never past the limit
    assert hubspot.statuses[429] == 0
    connector = HubSpotConnector(connection)
    assert (connector.search_limiter.limit, connector.search_limiter.window) == (3, 1.0)
    assert connector.search_limiter is not connector.limiter
    connection.refresh_from_db()
    assert connection.paused_until is None


def test_a_search_429_is_waited_out_and_the_pull_completes(connection, hubspot, settings):
    # Our pacing far looser than the portal's limit (another process spending
    # the token's searches plays the same): the emulator refuses some searches.
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "HUBSPOT_SEARCH_RATE": "100/1s"}
    hubspot.search_rate = "2/1s"
    n = 1_300
    _seed(hubspot, n)
    run = pull_changes(connection=connection)
    assert hubspot.refused_429["SECONDLY"] >= 1
    assert run.error == ""
    assert (run.pulled, run.failed) == (n, 0)
    assert Lead.objects.count() == n
    connection.refresh_from_db()
    assert connection.paused_until is None  # a secondly limit is a short wait, not a pause


def test_a_search_429_reads_as_a_one_second_wait(hubspot, settings, frozen):
    hubspot.search_rate = "1/1s"
    connector = HubSpotConnector(Connection(pk=None, provider="hubspot", name="x"))
    slept: list[float] = []
    connector.sleep = lambda seconds: (slept.append(seconds), frozen.__setitem__(0, frozen[0] + seconds))
    settings.MARTECH_CRM = {**settings.MARTECH_CRM, "RETRIES": 2}
    list(connector.pull_since("contact", "", ["email"]))  # one search, accepted
    list(connector.pull_since("contact", "", ["email"]))  # refused, waited out, accepted
    assert slept == [1.0] and hubspot.refused_429["SECONDLY"] == 1
    # Still refused after the retries: RateLimited (SECONDLY, one second), never daily.
    connector.sleep = slept.append  # the emulator's clock stays: every retry is refused
    with pytest.raises(RateLimited) as exc:
        list(connector.pull_since("contact", "", ["email"]))
    assert (exc.value.policy, exc.value.wait, exc.value.retry_after, exc.value.daily) == ("SECONDLY", 1.0, 1.0, False)
