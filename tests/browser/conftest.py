"""Browser fixtures: one chromium per test process, one `threadlog serve` per module,
a fresh browser context per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.console import (
    ConsoleServer,
    ensure_chromium,
    new_page,
    page_errors,
    serve,
)
from tests.servers import ScratchDatabases


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, scratch_databases: ScratchDatabases, nats_url: str
) -> Iterator[ConsoleServer]:
    database_url = scratch_databases.create()
    yield from serve(tmp_path_factory, database_url, nats_url)
    scratch_databases.drop(database_url)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = new_page(browser, viewport={"width": 1280, "height": 800})
    yield opened
    errors = page_errors(opened)
    opened.context.close()
    assert not errors, errors


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return tmp_path
