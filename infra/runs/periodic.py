"""A check run every interval until cancelled; a failure waits for the next turn."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def every(interval_seconds: float, check: Callable[[], Awaitable[Any]], failed: str) -> None:
    """Runs `check` every `interval_seconds`; logs `failed` when it raises."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await check()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a dependency down: try again next time
            log.warning(failed, error=repr(error))
