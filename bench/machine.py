"""Facts about the machine a run measured on, read at run time."""

import os
import pathlib
import platform
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Machine:
    cpus: int
    cpu_model: str
    memory: str
    python: str
    system: str


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = pathlib.Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _memory() -> str:
    total = _proc_field("/proc/meminfo", "MemTotal")
    if total is None:
        return "unknown"
    kib = int(total.split()[0])
    return f"{kib / 1024 / 1024:.1f} GiB"


def _cpus() -> int:
    # What `nproc` prints: the CPUs this process may run on, not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def read_machine() -> Machine:
    return Machine(
        cpus=_cpus(),
        cpu_model=_proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        memory=_memory(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        system=f"{platform.system()} {platform.release()} ({platform.machine()})",
    )


def socket_buffer_bytes() -> int | None:
    """The default socket send buffer, past which one write may not take a whole statement."""
    try:
        return int(pathlib.Path("/proc/sys/net/core/wmem_default").read_text())
    except (OSError, ValueError):
        return None


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was besides this run."""
    try:
        return float(pathlib.Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
