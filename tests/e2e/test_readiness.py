"""Readiness follows the dependencies: 503 with Retry-After while NATS is down,
200 again once it is back."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.servers import EmbeddedNatsFactory
from tests.support import LiveServer, scripted_model


def ready_status(client: httpx.Client, want: int, within: float = 15) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        response = client.get("/health/ready")
        if response.status_code == want or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_readiness_is_503_while_nats_is_down_and_200_after_it_returns(
    make_settings: SettingsFactory, embedded_nats_factory: EmbeddedNatsFactory
) -> None:
    nats_server = embedded_nats_factory()
    settings = make_settings().replace(nats_url=nats_server.url)
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as client:
        assert ready_status(client, 200).status_code == 200
        nats_server.kill()
        down = ready_status(client, 503)
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["checks"]["nats"].startswith("failed")
        assert client.get("/health").status_code == 200
        nats_server.start()
        assert ready_status(client, 200, within=30).status_code == 200
