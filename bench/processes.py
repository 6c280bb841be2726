"""Separate OS processes for the load and soak benchmarks, and what /proc says of them.

The server under test runs as `threadlog serve` (its own process, as in production);
the SSE clients run in `python -m bench.sse_clients` processes, so neither the
clients' work nor the benchmark's own shows in the server's CPU time and memory.
"""

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from bench.servers import Servers
from bench.sse_clients import IdleJob, IdleOutcome, LoadJob, LoadOutcome
from tests.support import ADMIN_KEY
from threadlog.infra.stream.embedded import free_port

THREADLOG = Path(sys.executable).parent / "threadlog"
START_SECONDS = 60.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (the third field first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs (`threadlog serve` starts its background
    process): a server's CPU and memory are its whole tree's."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process, its descendants and the children it waited
    for have used so far."""
    fields = _stat(pid)
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in descendants(pid):
        # One that ended meanwhile is in its parent's cutime once waited for.
        with contextlib.suppress(OSError):
            ticks += sum(int(f) for f in _stat(child)[11:13])
    return ticks / TICKS


def rss_bytes(pid: int) -> int:
    """The resident memory of the process and its descendants."""
    total = 0
    for process in (pid, *descendants(pid)):
        try:
            total += int(Path(f"/proc/{process}/statm").read_text().split()[1])
        except OSError:
            if process == pid:
                raise
    return total * PAGE_BYTES


class ResourceSampler:
    """Samples a process's resident memory every `interval` seconds in a thread, and its
    CPU time at start and stop: peak RSS and CPU seconds over a measured window (of the
    process and its descendants)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.rss_start = rss_bytes(pid)
        self.peak_rss = self.rss_start
        self.rss_end = self.rss_start
        self._cpu_start = cpu_seconds(pid)
        self._wall_start = time.perf_counter()
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_end = rss_bytes(self._pid)
        self.peak_rss = max(self.peak_rss, self.rss_end)
        self.cpu = cpu_seconds(self._pid) - self._cpu_start
        self.wall = time.perf_counter() - self._wall_start

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak_rss = max(self.peak_rss, rss_bytes(self._pid))
            except OSError:
                return


@dataclass(frozen=True, kw_only=True)
class ServedApp:
    """A server process's address and the headers its clients send."""

    port: int
    pid: int
    nats_url: str = ""
    nats_prefix: str = ""  # the subjects' prefix, for a subscriber that watches them

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServerProcess:
    """An HTTP server in its own OS process, logging to a file; `ready_path` answers 200
    once it serves."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path, port: int) -> None:
        self._argv = list(argv)
        self.env = env
        self._log = log
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str) -> ServedApp:
        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                self._argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_SECONDS
        while not self._answers(ready_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self._argv} did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return ServedApp(
            port=self.port,
            pid=self._process.pid,
            nats_url=self.env.get("THREADLOG_NATS_URL", ""),
            nats_prefix=self.env.get("THREADLOG_NATS_SUBJECT_PREFIX", ""),
        )

    def _answers(self, path: str) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a load step's server may hold minutes of backlog; its data is thrown away."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def threadlog_server(
    servers: Servers, database_url: str, data_dir: Path, **settings: str
) -> ServerProcess:
    """`threadlog serve` on the benchmark's PostgreSQL and NATS, as the admin of
    `tests.support` with rate limits off; `settings` are more THREADLOG_* values."""
    token = secrets.token_hex(6)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
    values = {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "NATS_URL": servers.nats_url,
        "NATS_STREAM": f"BENCH_{token}",
        "NATS_SUBJECT_PREFIX": f"b{token}",
        "PORT": str(port),
        "BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "RATE_LIMIT_PER_KEY": "0",
        "RATE_LIMIT_PER_IP": "0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **settings,
    }
    env.update({f"THREADLOG_{name}": value for name, value in values.items()})
    return ServerProcess([str(THREADLOG), "serve"], env, data_dir / "serve.log", port)


def stream_of(process: ServerProcess) -> str:
    """The JetStream stream a `threadlog_server` publishes to (to delete it afterwards)."""
    return process.env["THREADLOG_NATS_STREAM"]


class ClientsProcess:
    """A `python -m bench.sse_clients` process running one job."""

    def __init__(self, job: LoadJob | IdleJob) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.sse_clients"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(msgspec.json.encode(job))
        self._process.stdin.close()

    def wait_ready(self) -> None:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != b"ready":
            self._process.kill()
            raise RuntimeError(f"the SSE clients did not get ready: {line!r}")

    def _outcome(self) -> bytes:
        assert self._process.stdout is not None
        out = self._process.stdout.read()
        if self._process.wait() != 0:
            raise RuntimeError("the SSE clients failed (see standard error)")
        return out

    def load_outcome(self) -> LoadOutcome:
        return msgspec.json.decode(self._outcome(), type=LoadOutcome)

    def idle_outcome(self) -> IdleOutcome:
        return msgspec.json.decode(self._outcome(), type=IdleOutcome)

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
