"""The garbage collector, tuned once per serving process for the token path.

Startup's objects (modules, the app: about 160,000) are frozen: without that every
full collection rescans them all (80 to 100 ms here). The young generation is
collected after 3,000 net new container objects instead of 700: a streamed token
makes a few dozen that mostly die by reference counting, and at 50 conversations the
default thresholds spent about 9% of the server's CPU in the collector and started a
full collection every few seconds, each up to 95 ms of CPU on the event loop's thread
(measured with gc.callbacks in a load step; docs/benchmarks.md). Full collections
still run, after a hundred of the older generation's.
"""

import gc
from functools import cache

YOUNG_THRESHOLD = 3_000
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 100


@cache
def tune_collector() -> None:
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
