"""schemathesis against the live API's own OpenAPI schema, as an authenticated user.

Bounded (a fixed seed and a few examples per operation) so it fits the test command;
it fails on any 5xx and on any response that breaks the schema the API publishes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import NatsNames
from tests.support import LiveServer, scripted_model, settings_for

SCHEMATHESIS = str(Path(sys.executable).parent / "st")


def test_fuzzing_finds_no_server_error_and_no_response_off_its_schema(
    tmp_path: Path, nats_url: str, nats_names: NatsNames
) -> None:
    settings = settings_for(tmp_path, database_url=None, nats_url=nats_url, names=nats_names)
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as admin:
        user = admin.post("/v1/admin/users", json={"username": "fuzzer"}).json()
        key = admin.post(f"/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
        fuzzed = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.base_url}/schema/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--header",
                f"X-API-Key: {key}",
                # JSON pages, not endless event streams.
                "--header",
                "Accept: application/json",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--suppress-health-check",
                "all",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=400,
        )
    assert fuzzed.returncode == 0, fuzzed.stdout[-8000:] + fuzzed.stderr[-2000:]
