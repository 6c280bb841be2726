"""A serving process collects its young generation less often than Python's default."""

import gc

from threadlog.infra.collector import OLD_THRESHOLD, YOUNG_THRESHOLD, tune_collector

PYTHON_DEFAULT = (700, 10, 10)


def test_a_tuned_process_freezes_startup_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    gc.set_threshold(*PYTHON_DEFAULT)
    tune_collector.cache_clear()  # another test's app may have tuned this process already
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, OLD_THRESHOLD)
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
