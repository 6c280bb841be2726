"""Rate limits shared by every API process, counted in a NATS JetStream key-value bucket.

A sliding-window counter: each subject (a credential, a client address) has one
counter per fixed window; the estimate is the current window's count plus the
previous window's, weighted by how much of it still overlaps the sliding window.
Counters are incremented with compare-and-set, so concurrent processes never lose
a hit, and expire with the bucket's TTL. If NATS does not answer, requests pass
(and a warning is logged): a limiter outage must not become an API outage.
"""

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

_CAS_ATTEMPTS = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9_=-]")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int


def subject_for(kind: str, value: str) -> str:
    """A KV-safe subject: credentials are hashed (never stored), addresses escaped."""
    if kind == "key":
        return "key." + hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{kind}." + _UNSAFE.sub("_", value)


async def open_bucket(js: JetStreamContext, name: str, window_seconds: float) -> KeyValue:
    try:
        return await js.key_value(name)
    except (NotFoundError, nats.errors.Error):
        config = KeyValueConfig(bucket=name, history=1, ttl=2 * window_seconds + 1)
        return await js.create_key_value(config=config)


# A hit never holds a request longer than this (NATS answers in milliseconds when up).
HIT_TIMEOUT_SECONDS = 1.0


class RateLimiter:
    def __init__(
        self,
        kv: KeyValue,
        *,
        window_seconds: float,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._kv = kv
        self._window = window_seconds
        self._connected = connected

    async def hit(self, subject: str, limit: int) -> Decision:
        now = time.time()
        window = int(now // self._window)
        elapsed = (now % self._window) / self._window
        passed = Decision(allowed=True, limit=limit, remaining=limit, retry_after_seconds=0)
        if not self._connected():
            # NATS is down: waiting for its timeouts would stall every request.
            log.warning("ratelimit.unavailable", error="nats disconnected")
            return passed
        try:
            async with asyncio.timeout(HIT_TIMEOUT_SECONDS):
                current = await self._increment(f"{subject}.{window}")
                previous = await self._count(f"{subject}.{window - 1}")
        except (nats.errors.Error, TimeoutError) as error:
            log.warning("ratelimit.unavailable", error=repr(error))
            return passed
        estimate = previous * (1 - elapsed) + current
        remaining = max(0, math.floor(limit - estimate))
        if estimate <= limit:
            return Decision(allowed=True, limit=limit, remaining=remaining, retry_after_seconds=0)
        wait = max(1, math.ceil(self._window * (1 - elapsed)))
        return Decision(allowed=False, limit=limit, remaining=0, retry_after_seconds=wait)

    async def _count(self, key: str) -> int:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def _increment(self, key: str) -> int:
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                try:
                    await self._kv.create(key, b"1")
                    return 1
                except KeyWrongLastSequenceError:
                    continue
            value = int(entry.value or b"0") + 1
            try:
                await self._kv.update(key, str(value).encode(), last=entry.revision)
                return value
            except KeyWrongLastSequenceError:
                continue
        # Heavy contention on one counter: count the hit as over the limit's edge.
        return 2**31
