"""A process without the HTTP API (a worker, `projections run`) serves its metrics itself."""

from __future__ import annotations

import httpx

from threadlog.infra.metrics import EVENTS_WRITTEN, serve_metrics


def test_a_metrics_port_answers_the_token_only() -> None:
    server = serve_metrics("127.0.0.1", 0, "secret")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        EVENTS_WRITTEN.inc(0)
        refused = httpx.get(url)
        answered = httpx.get(url, headers={"authorization": "Bearer secret"})
    finally:
        server.shutdown()
    assert refused.status_code == 401
    assert answered.status_code == 200
    assert "threadlog_events_written_total" in answered.text
