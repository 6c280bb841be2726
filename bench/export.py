"""Benchmark 6: exporting the global audit log as NDJSON, and the server's memory meanwhile.

The store of benchmarks 3 and 4 (the whole population) is served by `threadlog serve`
in an OS process of its own (relay and projections off: it only serves), so that its
resident memory is the export's alone. An auditor reads `GET /v1/audit/events` with
`Accept: application/x-ndjson` to the end of the log; the rate is events (lines)
per second from the request to the last line. Meanwhile the server's RSS is read
from /proc: every SAMPLE_SECONDS, and when CHECKPOINTS of the events have arrived;
the peak is the largest of those and of the kernel's high-water mark (VmHWM, reset
before each export). The baseline, in the same run, reads the same rows with a raw
psycopg server-side cursor into a null sink.
"""

import contextlib
import math
import os
import pathlib
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Composed, Identifier

from bench.access import served
from bench.measure import Sample, progress, ratios
from bench.processes import ResourceSampler
from bench.servers import Servers
from tests.support import ADMIN_KEY
from threadlog.infra.settings import PREFIX, Settings
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.stream.embedded import free_port

PATH = "/v1/audit/events"
NDJSON = "application/x-ndjson"
SAMPLE_SECONDS = 0.02
CHECKPOINTS = (0.1, 0.5, 1.0)
WARM_UP_EVENTS = 10_000  # the last ones: a short export and read before measuring
FETCH_ROWS = 1000  # rows per round trip of the baseline's cursor, as the export's pages
START_TIMEOUT_SECONDS = 60.0
READ_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    repetitions: int


@dataclass(frozen=True, slots=True)
class Memory:
    """The server's resident memory (bytes) during one export."""

    start: int
    checkpoints: tuple[int, ...]  # when CHECKPOINTS of the events had arrived
    peak: int

    @property
    def growth(self) -> int:
        return self.peak - self.start


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    config: ExportConfig
    events: int
    stream_bytes: int
    export_rate: Sample  # events/s
    read_rate: Sample  # events/s, the raw cursor
    ratio: Sample  # export / raw read, per repetition
    memory: tuple[Memory, ...]  # one per repetition


def run_export(servers: Servers, database_url: str, config: ExportConfig) -> ExportResult:
    """Exports the whole log stored at `database_url` (benchmark 3's population)."""
    token = secrets.token_hex(6)
    settings = served(
        Settings(
            database_url=database_url,
            nats_url=servers.nats_url,
            nats_stream=f"BENCH_{token}",
            nats_subject_prefix=f"b{token}",
            relay=False,
            projections=False,
            log_level="WARNING",
            log_format="json",
        )
    )
    service = open_service(settings)
    try:
        recorder = service.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        table = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )
    finally:
        service.close()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="threadlog-bench-") as data_dir,
            _server_process(settings.replace(data_dir=pathlib.Path(data_dir))) as server,
        ):
            baseline = _RawRead(database_url, table)
            with _auditor(server.url) as client:
                return _measure(client, server.pid, baseline, config)
    finally:
        servers.release_stream(settings.nats_stream)


@dataclass(frozen=True, slots=True)
class _Server:
    url: str
    pid: int


@contextlib.contextmanager
def _server_process(settings: Settings) -> Iterator[_Server]:
    """`threadlog serve` with `settings` (as THREADLOG_* variables) in its own process."""
    port = free_port()
    environment = dict(os.environ)
    for name, value in (
        ("database_url", settings.database_url),
        ("nats_url", settings.nats_url),
        ("nats_stream", settings.nats_stream),
        ("nats_subject_prefix", settings.nats_subject_prefix),
        ("relay", "false"),
        ("projections", "false"),
        ("bootstrap_admin_key", settings.bootstrap_admin_key),
        ("rate_limit_per_key", str(settings.rate_limit_per_key)),
        ("rate_limit_per_ip", str(settings.rate_limit_per_ip)),
        ("data_dir", str(settings.data_dir)),
        ("log_level", settings.log_level),
        ("log_format", settings.log_format),
        ("port", str(port)),
    ):
        environment[PREFIX + name.upper()] = value or ""
    log_path = settings.data_dir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "from threadlog.infra.cli import main; main()", "serve"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process, log_path)
        yield _Server(url=url, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the export server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/", timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the export server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def _auditor(url: str) -> Iterator[httpx.Client]:
    """A client with the key of a new auditor (the export's role), made by the admin."""
    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS)
    with httpx.Client(base_url=url, timeout=timeout, headers={"X-API-Key": ADMIN_KEY}) as admin:
        user = admin.post("/v1/admin/users", json={"username": "auditor", "roles": ["auditor"]})
        user.raise_for_status()
        issued = admin.post(f"/v1/admin/users/{user.json()['id']}/keys", json={})
        issued.raise_for_status()
        key = str(issued.json()["key"])
    with httpx.Client(base_url=url, timeout=timeout, headers={"X-API-Key": key}) as client:
        yield client


def _measure(
    client: httpx.Client, pid: int, baseline: "_RawRead", config: ExportConfig
) -> ExportResult:
    events = baseline.count(after=0)
    warm_after = baseline.position_before_last(WARM_UP_EVENTS)
    warm_events = baseline.count(after=warm_after)
    _export(client, pid, after=warm_after, events=warm_events)
    baseline.read(after=warm_after, events=warm_events)
    exports: list[float] = []
    reads: list[float] = []
    memory: list[Memory] = []
    stream_bytes = 0
    for repetition in range(config.repetitions):
        progress(f"export: repetition {repetition + 1}/{config.repetitions}, {events:,} events")
        if repetition % 2:
            reads.append(baseline.read(after=0, events=events))
        seconds, stream_bytes, used = _export(client, pid, after=0, events=events)
        if not repetition % 2:
            reads.append(baseline.read(after=0, events=events))
        exports.append(seconds)
        memory.append(used)
        progress(f"export: {events / seconds:,.0f} events/s, peak RSS {used.peak / 2**20:,.0f} MiB")
    export_rate = Sample.of(events / seconds for seconds in exports)
    read_rate = Sample.of(events / seconds for seconds in reads)
    return ExportResult(
        config=config,
        events=events,
        stream_bytes=stream_bytes,
        export_rate=export_rate,
        read_rate=read_rate,
        ratio=ratios(export_rate, read_rate),
        memory=tuple(memory),
    )


def _export(
    client: httpx.Client, pid: int, *, after: int, events: int
) -> tuple[float, int, Memory]:
    """Seconds to receive `events` lines after `after`, the bytes, the server's memory."""
    marks = [max(1, math.ceil(events * share)) for share in CHECKPOINTS]
    checkpoints: list[int] = []
    lines = received = 0
    previous = last = b""
    start = _rss(pid)
    reset = _reset_peak(pid)
    with ResourceSampler(pid, interval=SAMPLE_SECONDS) as sampler:
        started = time.perf_counter()
        with client.stream(
            "GET", PATH, params={"after": after}, headers={"accept": NDJSON}
        ) as response:
            response.raise_for_status()
            for chunk in response.iter_raw():
                lines += chunk.count(b"\n")
                received += len(chunk)
                previous, last = last, chunk
                while len(checkpoints) < len(marks) and lines >= marks[len(checkpoints)]:
                    checkpoints.append(_rss(pid))
        seconds = time.perf_counter() - started
    final_line = (previous + last).rstrip(b"\n").rpartition(b"\n")[2]
    if final_line.startswith(b'{"error"'):
        raise RuntimeError(f"the export ended with {final_line.decode()}")
    if lines != events:
        raise RuntimeError(f"exported {lines} events, expected {events}")
    peaks = [sampler.peak_rss, *checkpoints]
    if reset:
        peaks.append(_status_bytes(pid, "VmHWM"))
    return seconds, received, Memory(start=start, checkpoints=tuple(checkpoints), peak=max(peaks))


class _RawRead:
    """The baseline: the same rows through a server-side cursor, into a null sink."""

    def __init__(self, database_url: str, table: Composed) -> None:
        self._database_url = database_url
        self._table = table
        self._query = SQL(
            "SELECT originator_id, originator_version, topic, state, notification_id "
            "FROM {} WHERE notification_id > %s ORDER BY notification_id"
        ).format(table)

    def count(self, *, after: int) -> int:
        """How many events the log holds after global position `after`."""
        query = SQL("SELECT count(*) FROM {} WHERE notification_id > %s").format(self._table)
        return self._number(query, [after])

    def position_before_last(self, events: int) -> int:
        """The global position after which the log's last `events` events come."""
        query = SQL(
            "SELECT coalesce(min(notification_id), 1) - 1 FROM "
            "(SELECT notification_id FROM {} ORDER BY notification_id DESC LIMIT %s) AS last"
        ).format(self._table)
        return self._number(query, [events])

    def _number(self, query: Composed, params: list[int]) -> int:
        with psycopg.connect(self._database_url) as connection:
            row = connection.execute(query, params).fetchone()
        assert row is not None
        return int(row[0])

    def read(self, *, after: int, events: int) -> float:
        rows = 0
        sink = _NullSink()
        started = time.perf_counter()
        with (
            psycopg.connect(self._database_url) as connection,
            connection.cursor(name="bench_export_baseline") as cursor,
        ):
            cursor.itersize = FETCH_ROWS
            cursor.execute(self._query, [after])
            for row in cursor:
                sink.write(row[3])
                rows += 1
        seconds = time.perf_counter() - started
        if rows != events:
            raise RuntimeError(f"the raw read got {rows} rows, expected {events}")
        return seconds


class _NullSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


def _rss(pid: int) -> int:
    return _status_bytes(pid, "VmRSS")


def _status_bytes(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    raise LookupError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS; False where that is not allowed."""
    try:
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
