"""CORS for OFREP: only listed origins get headers; a preflight is answered or refused saying why."""

from __future__ import annotations

from flag_scheduler.serving.cors import cors_headers, preflight_headers

ALLOWED = frozenset({"https://app.example.com"})


def test_a_listed_origin_is_named_back_and_may_read_the_etag() -> None:
    assert cors_headers("https://app.example.com", ALLOWED) == {
        "Access-Control-Allow-Origin": "https://app.example.com", "Access-Control-Expose-Headers": "ETag",
        "Vary": "Origin",
    }


def test_any_other_origin_or_none_gets_no_cors_header() -> None:
    for origin in ("", "https://evil.example.com", "https://app.example.com.evil.example", "null"):
        assert cors_headers(origin, ALLOWED) == {}
        assert preflight_headers(origin, ALLOWED, "content-type") is None
    assert cors_headers("https://app.example.com", frozenset()) == {}, "default: no origin"


def test_a_preflight_allows_post_with_the_headers_the_page_asked_for() -> None:
    headers = preflight_headers("https://app.example.com", ALLOWED, "content-type,if-none-match")
    assert headers is not None
    assert headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == "content-type,if-none-match"
    assert preflight_headers("https://app.example.com", ALLOWED, "")["Access-Control-Allow-Headers"].startswith("Content-Type")
