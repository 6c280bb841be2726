"""The two event-store backends every contract and end-to-end test runs against."""

from __future__ import annotations

import pytest

BACKENDS = ["sqlite", "postgres"]


def database_url_for(request: pytest.FixtureRequest, backend: str) -> str | None:
    """None means SQLite (the embedded default); PostgreSQL gets a fresh database."""
    if backend == "sqlite":
        return None
    url: str = request.getfixturevalue("database_url")
    return url
