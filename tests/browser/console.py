"""The browser tests' machinery: the browser (installed when missing), a real
`threadlog serve` process, and helpers that drive the console's pages.

Playwright for Python drives the Debian chromium (`executable_path`, never
`playwright install`): its locators wait on their own for elements, text and
states (no sleeps), it is one Python package (no separate driver binary whose
version must match the browser's, as chromedriver's must), and it can hold a
download, a dialog or the console's messages for a test to check.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.servers import NatsNames
from threadlog.infra.stream.embedded import free_port

CHROMIUM = Path("/usr/bin/chromium")
THREADLOG = Path(sys.executable).parent / "threadlog"
ADMIN_KEY = "tlk_console-admin-key-0123456789"
SCREENSHOTS_ENV = "THREADLOG_CONSOLE_SCREENSHOTS"
"""A folder to copy each page's screenshot into as well (docs/console/ was made so)."""

# `slow`: 20 tokens a second for 8 s, time to cancel a run or restart the server in it;
# `extractor`: structured output (the demo model fills in the schema).
AGENTS_TOML = """
[[agents]]
name = "slow"
description = "Streams 160 numbered tokens, 20 a second"
model = "paced:20:160"

[[agents]]
name = "brief"
description = "The demo model with a context budget of 300 tokens: it compacts soon"
context_budget = 300

[[agents]]
name = "extractor"
description = "Answers with a person as a JSON object"

[agents.output_schema]
type = "object"
required = ["name", "age"]
properties = { name = { type = "string" }, age = { type = "integer" } }
"""


def ensure_chromium() -> Path:
    """The browser: /usr/bin/chromium, installed with apt-get when missing and we are
    root. A machine where it cannot be installed fails the tests, loudly."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            f"the browser tests need chromium at {CHROMIUM} and cannot install it here "
            f"({'not root' if apt else 'no apt-get'}): install the Debian package `chromium`",
            pytrace=False,
        )
    for command in ([apt, "update"], [apt, "install", "-y", "chromium"]):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"installing chromium failed: {' '.join(command)}:\n{done.stdout}{done.stderr}",
                pytrace=False,
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing", pytrace=False)
    return CHROMIUM


class ConsoleServer:
    """`threadlog serve` on PostgreSQL and NATS with the demo model (tokens paced) and
    the `slow` agent; it can be stopped and started again on the same port and data."""

    def __init__(self, workdir: Path, database_url: str, nats_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        names = NatsNames.new()
        agents = workdir / "agents.toml"
        agents.write_text(AGENTS_TOML)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
        env.update(
            THREADLOG_PORT=str(self.port),
            THREADLOG_DATA_DIR=str(workdir / "data"),
            THREADLOG_DATABASE_URL=database_url,
            THREADLOG_NATS_URL=nats_url,
            THREADLOG_NATS_STREAM=names.stream,
            THREADLOG_NATS_SUBJECT_PREFIX=names.subject_prefix,
            THREADLOG_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY,
            THREADLOG_AGENTS_FILE=str(agents),
            THREADLOG_DEMO_TOKEN_DELAY_MS="8",
            THREADLOG_RATE_LIMIT_PER_KEY="0",
            THREADLOG_RATE_LIMIT_PER_IP="0",
            THREADLOG_LOG_FORMAT="json",
        )
        self.env = env
        self.log = workdir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(THREADLOG), "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text()[-5000:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def client(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, headers={"X-API-Key": key})


def serve(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, nats_url: str
) -> Iterator[ConsoleServer]:
    server = ConsoleServer(tmp_path_factory.mktemp("console"), database_url, nats_url)
    try:
        yield server
    finally:
        server.stop()


def sign_in_with_key(page: Page, server: ConsoleServer, key: str = ADMIN_KEY) -> None:
    page.goto(f"{server.base_url}/#/signin")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=False)
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / path.name)
    return path


def new_page(browser: Browser, **options: Any) -> Page:
    """A page in a fresh context (its own sessionStorage) that fails the test on a
    script error or a dialog (an alert() means injected script ran)."""
    context = browser.new_context(**options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_dialog(dialog: Any) -> None:
        errors.append(f"a dialog opened: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.set_default_timeout(15_000)
    page.errors = errors  # type: ignore[attr-defined]
    return page


def page_errors(page: Page) -> list[str]:
    errors: list[str] = page.errors  # type: ignore[attr-defined]
    return errors
