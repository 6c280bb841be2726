"""Personal content: the event fields that hold what users and models said.

These fields are stored sealed (encrypted with a key of the conversation owner's),
so that destroying the owner's keys erases the content everywhere it was copied,
while every event, and the hash chain over the events as stored, stays. The domain
never reads these fields: callers pass their values through the owner's `Seal`
(infra/store/content.py) before the aggregate records them, and the hash covers the
sealed values. See docs/erasure.md.
"""

from collections.abc import Callable
from typing import Any

# A value to be recorded → what is recorded (the value sealed with the owner's key).
Seal = Callable[[Any], Any]

# Event type → its fields holding personal content. Everything else of an event
# (ids, positions, timestamps, actors, types, tool and agent names, usage, errors of
# threadlog's own, titles and metadata) stays readable after an erasure.
SEALED_FIELDS: dict[str, tuple[str, ...]] = {
    "MessagePosted": ("content",),
    "TokenStreamed": ("delta",),
    "ToolCallStarted": ("args",),
    "ToolCallCompleted": ("result", "error"),
    "OutputPartial": ("output",),
    "RunProgressReported": ("note",),
    "MessageCompleted": ("content", "model_messages", "output"),
    "RunCancelled": ("partial_content",),
    "HistoryCompacted": ("summary",),
}


def unsealed(value: Any) -> Any:
    """Records content as it is (domain tests, and stores written before sealing)."""
    return value


def plaintext_seals(owner: str) -> Seal:
    """The seal of every owner when no key store is configured."""
    return unsealed
