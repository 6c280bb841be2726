"""End-to-end fixtures: the settings of a real server on each backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BACKENDS, database_url_for
from tests.servers import NatsNames
from tests.support import settings_for
from threadlog.infra.settings import Settings

SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    backend_name: str = request.param
    return backend_name


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest,
    backend: str,
    tmp_path: Path,
    nats_url: str,
    nats_names: NatsNames,
) -> SettingsFactory:
    database_url = database_url_for(request, backend)

    def make(**changes: Any) -> Settings:
        return settings_for(
            tmp_path, database_url=database_url, nats_url=nats_url, names=nats_names, **changes
        )

    return make
