"""Browser fixtures: one chromium and one `threadlog serve` per module, a fresh browser
context per test."""

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module's first test may install chromium with apt-get (minutes on a new machine)."""
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.timeout(900))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, not per session: while Playwright's sync API is open its event loop
    counts as this thread's running loop, and pytest-asyncio cannot run the async tests
    a worker takes after a browser module (xdist's loadfile hands out whole modules)."""
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
