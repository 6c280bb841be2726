"""schemathesis against the live API's own OpenAPI document: every check, every phase.

Every check includes the stateful phase (links between operations: create, then read,
change, list …), schema-valid requests that must be accepted, schema-violating ones
that must be rejected, the `Allow` header, status codes, content types, response
schemas, authentication. One run has a fixed seed (reproducible, on PostgreSQL); one a
new seed each time, printed (replay a failure with `--seed`); one streams: the Server-
Sent Events and NDJSON representations, each event checked against its schema.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import NatsNames
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    scripted_model,
    settings_for,
    wait_for_run_end,
)

SCHEMATHESIS = str(Path(sys.executable).parent / "st")
FIXED_SEED = 20261130
EVERY_ROLE = ["user", "auditor", "analyst", "admin"]

# HTTP servers ignore header names they do not know, so an unknown header is not invalid
# input; schemathesis would send one as such to operations that declare a header
# parameter (Last-Event-ID).
HEADER_OPERATIONS = """
[[operations]]
include-path = "/v1/conversations/{conversation_id}/events"
generation.allow-extra-parameters = false

[[operations]]
include-path = "/v1/stream"
generation.allow-extra-parameters = false
[[operations]]
include-path = "/v1/ag-ui"
generation.allow-extra-parameters = false
# An agent is named by a system agent's name or by an agent's id: an id of the right shape
# that names no agent the caller may use is a 400 (`unknown_agent`, documented).
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "404", "409", "429", "5xx",
]

[[operations]]
include-path = "/v1/conversations"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "404", "409", "429", "5xx",
]

# A retired agent is Gone (410, documented) to a request that is valid by the schema:
# the stateful phase retires an agent (DELETE) and then reads or changes it.
[[operations]]
include-path-regex = "^/v1/agents/[{]agent_id[}]"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx",
]
"""

STREAMS = (
    "/v1/conversations/{conversation_id}/events",
    "/v1/stream",
    "/v1/audit/events",
)


def fuzzer_key(admin: httpx.Client) -> str:
    """An API key of a user holding every role, so that every operation is reachable."""
    user = admin.post("/v1/admin/users", json={"username": "fuzzer", "roles": EVERY_ROLE})
    issued = admin.post(f"/v1/admin/users/{user.json()['id']}/keys", json={})
    key: str = issued.json()["key"]
    return key


def schemathesis(
    server: LiveServer, key: str, config: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{server.base_url}/schema/openapi.json",
            "--checks",
            "all",
            "--header",
            f"X-API-Key: {key}",
            "--workers",
            "1",
            "--suppress-health-check",
            "all",
            # A slower answer is a hang, not a breach of the contract: the default 10 s
            # was exceeded by a 400 on a loaded 2-CPU machine (three test workers).
            "--max-response-time",
            "60",
            *arguments,
        ],
        capture_output=True,
        text=True,
        # 41 operations, the try route running an agent each time: about a minute on a
        # quiet machine; below pytest's own limit (300 s) so that the report is ours.
        timeout=280,
    )


def report(run: subprocess.CompletedProcess[str]) -> str:
    return run.stdout[-12000:] + run.stderr[-2000:]


def test_the_api_keeps_its_contract_under_a_fixed_seed(
    tmp_path: Path, database_url: str, nats_url: str, nats_names: NatsNames
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(HEADER_OPERATIONS)
    settings = settings_for(
        tmp_path, database_url=database_url, nats_url=nats_url, names=nats_names
    )
    with LiveServer(settings, scripted_model(["ok", " then"])) as server, server.client() as admin:
        run = schemathesis(
            server,
            fuzzer_key(admin),
            config,
            # JSON pages here: the streams have their own run below.
            "--header",
            "Accept: application/json",
            "--max-examples",
            "20",
            "--seed",
            str(FIXED_SEED),
            "--request-timeout",
            "20",
        )
    assert run.returncode == 0, report(run)


def test_the_api_keeps_its_contract_under_a_new_seed(
    tmp_path: Path, nats_url: str, nats_names: NatsNames
) -> None:
    seed = random.randrange(2**31)
    print(f"schemathesis seed: {seed} (replay: --seed {seed})")
    config = tmp_path / "schemathesis.toml"
    config.write_text(HEADER_OPERATIONS)
    settings = settings_for(tmp_path, database_url=None, nats_url=nats_url, names=nats_names)
    with LiveServer(settings, scripted_model(["ok", " then"])) as server, server.client() as admin:
        run = schemathesis(
            server,
            fuzzer_key(admin),
            config,
            "--header",
            "Accept: application/json",
            "--max-examples",
            "8",
            "--seed",
            str(seed),
            "--request-timeout",
            "20",
        )
    assert run.returncode == 0, f"seed {seed}:\n" + report(run)


def test_event_streams_keep_their_contract(
    tmp_path: Path, nats_url: str, nats_names: NatsNames
) -> None:
    settings = settings_for(tmp_path, database_url=None, nats_url=nats_url, names=nats_names)
    with LiveServer(settings, scripted_model(["ok", " then"])) as server, server.client() as admin:
        key = fuzzer_key(admin)
        with server.client(key) as fuzzer:
            conversation_id = create_conversation(fuzzer)
            post_message(fuzzer, conversation_id, "hello")
            wait_for_run_end(fuzzer, conversation_id)
        config = tmp_path / "schemathesis.toml"
        # A stream never ends by itself: read each for 2 s at most, or 3 events.
        config.write_text(
            "request-timeout = 2\nmax-stream-events = 3\n\n"
            f'[parameters]\nconversation_id = "{conversation_id}"\n'
            + HEADER_OPERATIONS
            + '\n[[operations]]\ninclude-path = "/v1/audit/events"\n'
            + 'headers = { Accept = "application/x-ndjson" }\n'
        )
        run = schemathesis(
            server,
            key,
            config,
            *(argument for path in STREAMS for argument in ("--include-path", path)),
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "10",
            "--seed",
            str(FIXED_SEED),
        )
    assert run.returncode == 0, report(run)
