"""A serving process collects its young generation less often than Python's default,
and hands the GIL between its threads more often."""

import gc
import sys

from threadlog.infra.interpreter import (
    OLD_THRESHOLD,
    SWITCH_INTERVAL_SECONDS,
    YOUNG_THRESHOLD,
    tune_interpreter,
)

PYTHON_DEFAULT = (700, 10, 10)
PYTHON_SWITCH_INTERVAL = 0.005


def test_a_tuned_process_freezes_startup_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    switch = sys.getswitchinterval()
    gc.set_threshold(*PYTHON_DEFAULT)
    sys.setswitchinterval(PYTHON_SWITCH_INTERVAL)
    tune_interpreter.cache_clear()  # another test's app may have tuned this process already
    try:
        tune_interpreter()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, OLD_THRESHOLD)
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == SWITCH_INTERVAL_SECONDS < PYTHON_SWITCH_INTERVAL
    finally:
        gc.set_threshold(*before)
        sys.setswitchinterval(switch)
