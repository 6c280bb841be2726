"""The settings of scaled-out runs: read from the environment, checked, required."""

import pytest

from threadlog.infra.cli import main
from threadlog.infra.settings import Settings, SettingsError


def test_runs_execute_in_process_unless_workers_are_configured() -> None:
    assert Settings.from_env({}).workers is False


def test_worker_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "THREADLOG_WORKERS": "true",
            "THREADLOG_WORKER_LEASE_SECONDS": "2.5",
            "THREADLOG_RUN_MAX_RETRIES": "0",
            "THREADLOG_WORKER_CONCURRENCY": "4",
        }
    )
    assert (settings.workers, settings.worker_lease_seconds) == (True, 2.5)
    assert (settings.run_max_retries, settings.worker_concurrency) == (0, 4)


@pytest.mark.parametrize(
    "name, value",
    [
        ("THREADLOG_WORKER_LEASE_SECONDS", "0"),
        ("THREADLOG_RUN_MAX_RETRIES", "-1"),
        ("THREADLOG_WORKER_DRAIN_SECONDS", "-1"),
        ("THREADLOG_WORKER_CONCURRENCY", "0"),
    ],
)
def test_unusable_worker_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name.removeprefix("THREADLOG_")):
        Settings.from_env({name: value})


def test_a_worker_refuses_to_start_without_a_shared_nats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("THREADLOG_NATS_URL", raising=False)
    monkeypatch.setenv("THREADLOG_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="THREADLOG_NATS_URL"):
        main(["worker"])
