"""How far a following projection runner is behind the store, in its log.

`/health/ready` answers the lag when asked; this writes it down unasked, so a
runner falling behind (and catching up again) shows in the log without polling.
"""

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

PROGRESS_LOG_SECONDS = 10.0


class LagLog:
    """Logs `projection.progress` (position, store position, lag) at most every
    `every` seconds while the runner is behind, and once when it has caught up."""

    def __init__(
        self, name: str, store_position: Callable[[], int], every: float = PROGRESS_LOG_SECONDS
    ) -> None:
        self._name = name
        self._store_position = store_position
        self._every = every
        self._checked = time.monotonic()
        self._logged = float("-inf")
        self._behind = False

    def observe(self, position: int, *, idle: bool) -> None:
        """Called by the runner after each batch, or each idle wait, with its position."""
        now = time.monotonic()
        # The store is asked every `every` seconds; while behind, also whenever the
        # runner runs out of events, to notice it has caught up.
        if now - self._checked < self._every and not (idle and self._behind):
            return
        self._checked = now
        store_position = self._store_position()
        lag = max(store_position - position, 0)
        if lag and now - self._logged >= self._every:
            self._logged = now
            self._behind = True
            self._log(position, store_position, lag, caught_up=False)
        elif not lag and self._behind:
            self._behind = False
            self._log(position, store_position, lag, caught_up=True)

    def _log(self, position: int, store_position: int, lag: int, *, caught_up: bool) -> None:
        log.info(
            "projection.progress",
            projection=self._name,
            position=position,
            store_position=store_position,
            lag=lag,
            caught_up=caught_up,
        )
