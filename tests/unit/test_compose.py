"""compose.yaml, checked without a Docker engine: valid against the Compose
specification's schema (vendored in tests/compose/), and the services the README names."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

ROOT = Path(__file__).resolve().parents[2]
NATS_NODES = ("nats-1", "nats-2", "nats-3")


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def flags(name: str) -> dict[str, str]:
    """A NATS node's `--flag=value` command line as a mapping."""
    return dict(part.removeprefix("--").partition("=")[::2] for part in service(name)["command"])


def errors_of(document: dict[str, Any]) -> list[str]:
    schema = json.loads((ROOT / "tests" / "compose" / "compose-spec.json").read_text())
    return [error.message for error in jsonschema_rs.validator_for(schema).iter_errors(document)]


def test_compose_yaml_is_valid_against_the_compose_specification() -> None:
    assert errors_of(compose()) == []


def test_the_specification_refuses_a_broken_compose_file() -> None:
    broken = {"services": {"api": {"image": "x", "colour": "blue"}}}
    assert any("colour" in error for error in errors_of(broken))


def test_compose_starts_postgresql() -> None:
    assert service("postgres")["image"].startswith("postgres:")
    assert "healthcheck" in service("postgres")


def test_compose_starts_a_three_node_nats_cluster_with_jetstream() -> None:
    routes = {f"nats://{node}:6222" for node in NATS_NODES}
    for node in NATS_NODES:
        options = flags(node)
        assert service(node)["image"].startswith("nats:")
        assert "jetstream" in options and options["name"] == node
        assert options["cluster_name"] == "threadlog"
        assert set(options["routes"].split(",")) == routes
        assert service(node)["volumes"], "JetStream keeps its data on a volume"


def test_compose_connects_every_threadlog_process_to_every_node_with_three_replicas() -> None:
    for name in ("api", "relay-projections", "worker"):
        environment = service(name)["environment"]
        servers = set(environment["THREADLOG_NATS_URL"].split(","))
        assert servers == {f"nats://{node}:4222" for node in NATS_NODES}
        assert environment["THREADLOG_NATS_STREAM_REPLICAS"] == "3"
        assert environment["THREADLOG_DATABASE_URL"].startswith("postgresql://")
        assert set(service(name)["depends_on"]) == {"postgres", *NATS_NODES}


def test_compose_starts_an_api_that_queues_runs_and_neither_relays_nor_projects() -> None:
    api = service("api")
    assert api["command"] == ["threadlog", "serve"] and api["ports"]
    environment = api["environment"]
    assert environment["THREADLOG_WORKERS"] == "true"
    assert (environment["THREADLOG_RELAY"], environment["THREADLOG_PROJECTIONS"]) == (
        "false",
        "false",
    )


def test_compose_starts_one_process_for_the_relay_and_the_projections() -> None:
    process = service("relay-projections")
    environment = process["environment"]
    assert process["command"][0] == "threadlog"
    assert (environment["THREADLOG_RELAY"], environment["THREADLOG_PROJECTIONS"]) == (
        "true",
        "true",
    )
    assert "ports" not in process and process.get("deploy", {}).get("replicas", 1) == 1


def test_compose_starts_two_workers() -> None:
    worker = service("worker")
    assert worker["command"] == ["threadlog", "worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["environment"]["THREADLOG_METRICS_PORT"] == "9100"


def test_the_readme_describes_the_compose_services() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme[readme.index("`compose.yaml` starts") :][:400]
    for part in (
        "PostgreSQL",
        "3-node NATS cluster with JetStream",
        "3 replicas",
        "the API",
        "the relay and projections process",
        "two workers",
    ):
        assert part in said, part
