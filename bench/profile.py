"""Where a server process spends its time: py-spy samples, summed two ways.

py-spy (a dev dependency) samples the process from outside at `rate` Hz without
stopping it (`--nonblocking`), keeping only the thread that holds the GIL (`--gil`):
the Python work that competes for the one core a single process can use. It writes
collapsed stacks (`frame;frame;… count`). Each sample counts once in each table:

- by threadlog component: the innermost frame of threadlog's own code on the stack
  (which part of threadlog made the work: the run executor, the writer, the relay …);
- by library: the innermost frame of a library (where the work was done: psycopg,
  eventsourcing, nats-py …), or threadlog's own code when none is deeper.
"""

import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# (name, prefixes of a frame's file); the innermost frame with one decides.
COMPONENTS = (
    (
        "run executor (infra/runs/executor.py, recorder.py)",
        ("infra/runs/executor.py", "infra/runs/recorder.py"),
    ),
    ("group-commit writer (infra/store/writer.py)", ("infra/store/writer.py",)),
    ("relay: store → JetStream (infra/stream/relay.py)", ("infra/stream/relay.py",)),
    ("read-model projections (projections/)", ("projections/",)),
    ("live feed: NATS → SSE (infra/stream/feed.py)", ("infra/stream/feed.py",)),
    ("HTTP routes (http/)", ("http/",)),
    ("domain (domain/)", ("domain/",)),
    (
        "store adapters (infra/store/eventstore.py, envelope.py)",
        ("infra/store/eventstore.py", "infra/store/envelope.py"),
    ),
    ("paced model (infra/agents/paced_model.py)", ("infra/agents/paced_model.py",)),
    ("other threadlog code (infra/)", ("infra/",)),
)
LIBRARIES = (
    ("psycopg (PostgreSQL client)", ("psycopg",)),
    ("eventsourcing", ("eventsourcing/",)),
    ("nats-py", ("nats/",)),
    ("msgspec / json", ("msgspec", "json/")),
    ("pydantic-ai / pydantic", ("pydantic_ai/", "pydantic/", "pydantic_core")),
    ("uvicorn / h11 (HTTP server)", ("uvicorn/", "h11/")),
    ("litestar (HTTP framework)", ("litestar/",)),
    ("structlog", ("structlog/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
    ("threads (threading, concurrent.futures)", ("threading.py", "concurrent/")),
)
# The command's entry point, at the bottom of every stack of the event loop's thread.
IGNORED = ("infra/cli.py",)
OUTSIDE = "no threadlog frame (event loop, server, thread pool)"
OWN = "threadlog's own code or the standard library"
_Markers = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, kw_only=True)
class Profile:
    seconds: float
    rate: int  # samples per second asked of py-spy
    samples: int
    components: list[tuple[str, int]]  # (component, samples), most first
    libraries: list[tuple[str, int]]  # (library, samples), most first
    functions: list[tuple[str, int]]  # (innermost frame, samples), most first

    @property
    def busy(self) -> float:
        """The share of the wall time the process held the GIL (samples are taken only
        then): the rest it waited (on PostgreSQL, NATS, a client, a timer)."""
        return min(1.0, self.samples / (self.seconds * self.rate)) if self.seconds else 0.0


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


Sampling = tuple[subprocess.Popen[bytes], Path, int]  # py-spy, its output, its rate


def start_sampling(pid: int, seconds: float, rate: int = 100) -> Sampling | None:
    """Starts py-spy on `pid` for `seconds`; None when py-spy is not installed."""
    binary = py_spy()
    if binary is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="threadlog-bench-profile-")) / "stacks.txt"
    command = [binary, "record", "--pid", str(pid), "--duration", str(round(seconds))]
    command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--gil"]
    command += ["-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out, rate


def finish_sampling(started: Sampling, seconds: float) -> Profile | None:
    process, out, rate = started
    process.wait(timeout=seconds + 60)
    try:
        if not out.exists():
            return None
        return summarize(out.read_text(errors="replace"), seconds, rate=rate)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def sample_while(
    pid: int, seconds: float, work: Callable[[], object], rate: int = 100
) -> Profile | None:
    """Samples `pid` while `work` is done again and again for about `seconds` (work that
    outlasts the sampling is not cut short); None when py-spy is not installed."""
    started = start_sampling(pid, seconds, rate)
    if started is None:
        return None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        work()
    return finish_sampling(started, seconds)


def _classify(frames: list[str], markers: _Markers, default: str) -> str:
    for frame in reversed(frames):
        where = frame.rpartition("(")[
            2
        ]  # the file, as py-spy shortens it: "infra/runs/executor.py:286)"
        if where.startswith(IGNORED):
            continue
        for name, prefixes in markers:
            if where.startswith(prefixes):
                return name
    return default


def summarize(collapsed: str, seconds: float, *, rate: int = 100, top: int = 12) -> Profile:
    components: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        components[_classify(frames, COMPONENTS, OUTSIDE)] += count
        libraries[_classify(frames, LIBRARIES, OWN)] += count
        functions[frames[-1]] += count
    return Profile(
        seconds=seconds,
        rate=rate,
        samples=sum(components.values()),
        components=components.most_common(),
        libraries=libraries.most_common(),
        functions=functions.most_common(top),
    )


def described(profile: Profile, heading: str) -> list[str]:
    """A report's paragraph on `profile` (after its bold `heading`) and its three tables,
    as Markdown lines."""
    return [
        f"{heading}: {_sampled(profile)}: the Python work that one process can do on one "
        "core at a time. By threadlog component (the innermost frame of threadlog's own code "
        "on the stack) and by library (the innermost library frame):",
        *_tables(profile),
    ]


def _tables(profile: Profile) -> list[str]:
    total = profile.samples or 1

    def table(title: str, rows: list[tuple[str, int]], quote: bool = False) -> list[str]:
        mark = "`" if quote else ""
        return [
            "",
            f"| {title} | share of samples |",
            "|---|---|",
            *(f"| {mark}{name}{mark} | {count / total:.1%} |" for name, count in rows),
        ]

    return [
        *table("threadlog component", profile.components),
        *table("library", profile.libraries),
        *table("innermost function (self time)", profile.functions, quote=True),
    ]


def _sampled(profile: Profile) -> str:
    """How the profile was taken."""
    return (
        f"py-spy sampled it for {profile.seconds:.0f} s at {profile.rate} Hz (non-blocking), "
        f"keeping only the thread that held the GIL ({profile.samples:,} samples: the process "
        f"held the GIL {profile.busy:.0%} of that time, and waited the rest)"
    )
