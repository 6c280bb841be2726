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
from collections import Counter
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
    samples: int
    components: list[tuple[str, int]]  # (component, samples), most first
    libraries: list[tuple[str, int]]  # (library, samples), most first
    functions: list[tuple[str, int]]  # (innermost frame, samples), most first


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def start_sampling(
    pid: int, seconds: float, rate: int = 100
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """Starts py-spy on `pid` for `seconds`; None when py-spy is not installed."""
    binary = py_spy()
    if binary is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="threadlog-bench-profile-")) / "stacks.txt"
    command = [binary, "record", "--pid", str(pid), "--duration", str(round(seconds))]
    command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--gil"]
    command += ["-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out


def finish_sampling(
    started: tuple[subprocess.Popen[bytes], Path], seconds: float
) -> Profile | None:
    process, out = started
    process.wait(timeout=seconds + 60)
    try:
        return summarize(out.read_text(errors="replace"), seconds) if out.exists() else None
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


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


def summarize(collapsed: str, seconds: float, top: int = 12) -> Profile:
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
        samples=sum(components.values()),
        components=components.most_common(),
        libraries=libraries.most_common(),
        functions=functions.most_common(top),
    )
