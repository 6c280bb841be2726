"""Protection: rate limits shared by API processes, CORS from settings, security headers."""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import SettingsFactory
from tests.support import ADMIN_KEY, LiveServer


def test_a_credential_over_its_limit_gets_429_with_retry_after(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(rate_limit_per_key=3, rate_limit_window_seconds=30)
    with LiveServer(settings) as server, server.client() as client:
        answers = [client.get("/v1/users/me") for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    limited = answers[3]
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 30


def test_the_limit_is_shared_by_every_api_process(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_per_key=4, rate_limit_window_seconds=30)
    with (
        LiveServer(settings) as first,
        LiveServer(settings.replace(relay=False, projections=False)) as second,
        first.client() as one,
        second.client() as two,
    ):
        statuses = [c.get("/v1/users/me").status_code for c in (one, two, one, two, one)]
    assert statuses == [200, 200, 200, 200, 429]


def test_a_client_address_over_its_limit_gets_429_even_without_credentials(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(rate_limit_per_ip=2, rate_limit_window_seconds=30)
    with LiveServer(settings) as server, server.client(key=None) as client:
        statuses = [client.get("/v1/conversations").status_code for _ in range(3)]
        health = client.get("/health")
    assert statuses == [401, 401, 429]
    assert health.status_code == 200  # probes are never limited


def test_cors_allows_the_configured_origin_with_credentials(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(cors_origins="https://app.example")
    with LiveServer(settings) as server, server.client(key=None) as client:
        preflight = client.options(
            "/v1/conversations",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        other = client.options(
            "/v1/conversations",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert preflight.status_code in (200, 204), preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_a_wildcard_origin_never_comes_with_credentials(make_settings: SettingsFactory) -> None:
    settings = make_settings(cors_origins="*")
    with LiveServer(settings) as server, server.client() as client:
        answer = client.get("/v1/users/me", headers={"Origin": "https://any.example"})
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers


def test_every_answer_carries_the_security_headers(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client(key=None) as client:
        for answer in (client.get("/health"), client.get("/v1/conversations")):
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
            assert "default-src 'none'" in answer.headers["content-security-policy"]
            assert answer.headers["x-request-id"]


def test_oversized_headers_get_431_with_the_error_body(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(max_header_bytes=4096)) as server, server.client() as client:
        refused = client.get("/v1/users/me", headers={"X-Padding": "a" * 5000})
        fine = client.get("/v1/users/me", headers={"X-Padding": "a" * 1000})
    assert refused.status_code == 431
    assert refused.json()["error"] == "headers_too_large"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    assert fine.status_code == 200


def test_a_client_gone_before_its_body_arrived_is_not_logged_as_a_server_error(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    with LiveServer(make_settings(log_level="INFO")) as server, server.client() as client:
        head = (
            "POST /v1/conversations HTTP/1.1\r\nHost: test\r\n"
            f"X-API-Key: {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(head.encode() + b'{"title": "cut sh')
        deadline = time.monotonic() + 10
        while "http.client_disconnected" not in (seen := capsys.readouterr().out):
            assert time.monotonic() < deadline, "the disconnect was not logged"
            assert "http.server_error" not in seen
            time.sleep(0.1)
        assert client.get("/health/").status_code == 200
    assert "http.server_error" not in seen
