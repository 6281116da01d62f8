"""martech.cors: origin normalization and the CORS answers of public endpoints."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.test import RequestFactory

from martech.cors import cors_headers, origin_allowed, origin_normalize, origins_clean, preflight

ALLOWED = ["https://www.example.com", "http://localhost:8080"]


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("https://WWW.Example.com", "https://www.example.com"),
        ("https://www.example.com:443/", "https://www.example.com"),
        ("http://localhost:8080", "http://localhost:8080"),
        (" http://[::1]:9000 ", "http://[::1]:9000"),
    ],
)
def test_origin_is_normalized(raw, origin):
    assert origin_normalize(raw) == origin


@pytest.mark.parametrize("raw", ["www.example.com", "ftp://x.com", "https://x.com/path", "https://u:p@x.com", "https://x.com:99999", "null", ""])
def test_bad_origin_is_refused_saying_why(raw):
    with pytest.raises(ValidationError) as exc:
        origin_normalize(raw)
    assert "is not an origin" in exc.value.messages[0]


def test_origins_clean_lists_every_bad_one_and_dedupes():
    assert origins_clean(["https://a.com", "https://A.com/"]) == ["https://a.com"]
    with pytest.raises(ValidationError) as exc:
        origins_clean(["https://a.com", "a.com", "ftp://b.com"])
    assert len(exc.value.messages) == 2


def _req(method="post", origin=None):
    extra = {"HTTP_ORIGIN": origin} if origin is not None else {}
    return getattr(RequestFactory(), method)("/x", **extra)


def test_allowed_origin_gets_headers_and_preflight_204():
    req = _req("options", "https://www.example.com")
    res = preflight(req, ALLOWED)
    assert res.status_code == 204
    assert res["Access-Control-Allow-Origin"] == "https://www.example.com" and "Origin" in res["Vary"]
    assert "Content-Type" in res["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://www.example.com.evil.io"])
def test_other_origin_is_refused_without_headers(origin):
    assert preflight(_req("options", origin), ALLOWED).status_code == 403
    assert not origin_allowed(_req(origin=origin), ALLOWED)
    res = cors_headers(HttpResponse(), _req(origin=origin), ALLOWED)
    assert "Access-Control-Allow-Origin" not in res


def test_request_without_origin_is_not_a_browser_call():
    assert origin_allowed(_req(), ALLOWED)
    assert preflight(_req("options"), ALLOWED).status_code == 403
