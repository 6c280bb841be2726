"""Where a server process spends its time: py-spy samples, summed by stage and function.

py-spy (a dev dependency) samples the process from outside at `rate` Hz without
stopping it (`--nonblocking`) and writes collapsed stacks (`frame;frame;… count`,
one thread's stack per line, idle threads left out). Each sample is put in the first
stage whose marker appears on its stack, read from the innermost frame outwards, and
its innermost frame counts for the function table.
"""

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# (stage, marker in a frame), the innermost match wins.
STAGES = (
    ("PostgreSQL client (psycopg)", "psycopg"),
    ("NATS client (nats-py)", "nats/"),
    ("JSON / msgspec", "msgspec"),
    ("group-commit writer", "infra/writer.py"),
    ("relay (store → NATS)", "infra/relay.py"),
    ("read-model projections", "projections/"),
    ("live feed (NATS → SSE)", "infra/feed.py"),
    ("SSE route", "http/conversations.py"),
    ("run executor", "infra/runs.py"),
    ("pydantic-ai / paced model", "pydantic_ai"),
    ("domain (aggregate, events)", "domain/"),
    ("eventsourcing library", "eventsourcing/"),
    ("HTTP server (uvicorn, h11)", "uvicorn"),
    ("HTTP framework (Litestar)", "litestar"),
    ("asyncio event loop", "asyncio"),
)
OTHER = "other"


@dataclass(frozen=True, kw_only=True)
class Profile:
    seconds: float
    samples: int
    stages: list[tuple[str, int]]  # (stage, samples), most first
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
    command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out


def finish_sampling(
    started: tuple[subprocess.Popen[bytes], Path], seconds: float
) -> Profile | None:
    process, out = started
    process.wait(timeout=seconds + 60)
    if not out.exists():
        return None
    return summarize(out.read_text(errors="replace"), seconds)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, marker in STAGES:
            if marker in frame:
                return stage
    return OTHER


def summarize(collapsed: str, seconds: float, top: int = 12) -> Profile:
    stages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        stages[_stage(frames)] += count
        functions[frames[-1]] += count
    return Profile(
        seconds=seconds,
        samples=sum(stages.values()),
        stages=stages.most_common(),
        functions=functions.most_common(top),
    )
