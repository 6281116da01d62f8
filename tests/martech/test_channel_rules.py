"""Channel rules are staff-typed regular expressions run on public input:
they are compiled with RE2, so no pattern can stall ingestion, and a pattern
RE2 cannot run is refused in the admin with the field and the reason."""
from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from martech.models import ApiClient, ChannelRule, Event
from martech.services.campaigns import UtmNormalizer

pytestmark = pytest.mark.django_db

# Catastrophic backtracking: with a backtracking engine, a 254-character run of
# "a" followed by a mismatch takes about 2**254 steps.
PATHOLOGICAL = r"(a+)+$"
HOSTILE_SOURCE = "a" * 254 + "!"


def _rule(order=1, **kw) -> ChannelRule:
    return ChannelRule.objects.create(order=order, name=kw.pop("name", "r"), channel=kw.pop("channel", "referral"), **kw)


def test_pathological_pattern_matches_hostile_input_without_backtracking():
    ChannelRule.objects.all().delete()
    _rule(source_pattern=PATHOLOGICAL, channel="affiliate")
    normalizer = UtmNormalizer.load()
    assert normalizer.channel(HOSTILE_SOURCE, "") == "other"
    assert normalizer.channel("a" * 254, "") == "affiliate"


def test_hostile_utm_through_the_events_endpoint_gets_its_channel():
    ChannelRule.objects.all().delete()
    _rule(source_pattern=PATHOLOGICAL, medium_pattern="", channel="affiliate")
    tok = "tok-rules-0123456789abcdef"
    ApiClient.objects.create(name="site", token_hash=ApiClient.hash_token(tok), token_prefix=tok[:8], scopes=["capture"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tok}")
    items = [
        {"type": "page", "messageId": mid, "anonymousId": "v1", "timestamp": "2025-03-01T12:00:00Z",
         "context": {"campaign": {"source": source, "medium": "x"}}}
        for mid, source in (("hostile", HOSTILE_SOURCE), ("plain", "aaaa"))
    ]
    resp = api.post("/api/v1/events", {"batch": items}, format="json")
    assert resp.status_code in (200, 201, 207), resp.content
    assert Event.objects.get(client_event_id="hostile").channel == "other"
    assert Event.objects.get(client_event_id="plain").channel == "affiliate"


@pytest.mark.parametrize(
    "field,pattern,reason",
    [
        ("source_pattern", r"(?=goog)google", "invalid perl operator"),
        ("medium_pattern", r"(cpc)\1", "invalid escape sequence"),
        ("source_pattern", r"(unclosed", "missing )"),
    ],
)
def test_pattern_re2_cannot_run_is_refused_naming_field_and_reason(field, pattern, reason):
    rule = ChannelRule(order=1, name="x", channel="referral", **{field: pattern})
    with pytest.raises(ValidationError) as exc:
        rule.full_clean()
    message = " ".join(exc.value.message_dict[field])
    assert reason in message and "RE2" in message


def test_admin_form_shows_the_refusal(admin_client):
    resp = admin_client.post(
        "/admin/martech/channelrule/add/",
        {"order": 1, "name": "lookahead", "source_pattern": r"(?!bing).*", "medium_pattern": "", "channel": "referral", "is_active": "on"},
    )
    assert resp.status_code == 200
    assert "source_pattern" in resp.context["adminform"].form.errors
    assert not ChannelRule.objects.filter(name="lookahead").exists()


def test_rule_saved_before_re2_is_skipped_and_logged(caplog):
    ChannelRule.objects.all().delete()
    legacy = _rule(order=1, name="legacy", source_pattern=r"(?=x)x", channel="affiliate")
    _rule(order=2, name="fallback", source_pattern=r"x.*", channel="referral")
    with caplog.at_level(logging.ERROR, logger="martech.services.campaigns"):
        normalizer = UtmNormalizer.load()
    assert normalizer.channel("xyz", "") == "referral"
    assert f"Channel rule {legacy.pk} (legacy) is skipped" in caplog.text
