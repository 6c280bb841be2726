"""Repeated measurements, their medians, and a progress line on stderr."""

import math
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

_STARTED = time.perf_counter()


@dataclass(frozen=True, slots=True)
class Sample:
    """The values of one quantity over the repetitions of a measurement."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> "Sample":
        collected = tuple(values)
        if not collected:
            raise ValueError("a sample needs at least one value")
        return cls(collected)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def ratios(numerators: Sample, denominators: Sample) -> Sample:
    """Per-repetition ratios: each pair was measured back to back, so drift cancels."""
    return Sample.of(n / d for n, d in zip(numerators.values, denominators.values, strict=True))


def progress(message: str) -> None:
    elapsed = time.perf_counter() - _STARTED
    print(f"[bench {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed_seconds() -> float:
    return time.perf_counter() - _STARTED


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank percentile `q` (0 to 100) of the values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("a percentile needs at least one value")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
