"""The interpreter, tuned once per serving process for the token path.

The garbage collector. Startup's objects (modules, the app: about 160,000) are frozen:
without that every full collection rescans them all (80 to 100 ms here). The young
generation is collected after 3,000 net new container objects instead of 700: a
streamed token makes a few dozen that mostly die by reference counting, and at 50
conversations the default thresholds spent about 9% of the server's CPU in the
collector and started a full collection every few seconds, each up to 95 ms of CPU on
the event loop's thread (measured with gc.callbacks in a load step; docs/benchmarks.md).
Full collections still run, after a hundred of the older generation's.

The GIL's switch interval: 1 ms, not 5. The group-commit writer thread encodes and
saves commits while the event loop's thread streams tokens; when one wants the GIL the
other holds, it waits until the interval runs out, and a token meets several such
waits between the model and the client. At 50 conversations of 50 tokens/s the p99
from model to client fell from 492 to 168 ms (medians of 7 and 9 load steps, same
machine, interleaved; 2026-12-01), at the same CPU per token. Since then the writer
runs on the event loop on PostgreSQL (infra/store/loop_writer.py); the interval still
serves SQLite's writer thread and the threads that read the store.
"""

import gc
import sys
from functools import cache

YOUNG_THRESHOLD = 3_000
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 100
SWITCH_INTERVAL_SECONDS = 0.001


@cache
def tune_interpreter() -> None:
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
