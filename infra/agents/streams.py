"""pydantic-ai's model streams, without a turn of the event loop per event.

Every streamed model response goes through pydantic-ai's `PeekableAsyncStream`
(twice for a streamed response: the model's stream and the continuation around it),
which pulls each event under an anyio `Lock`. anyio's lock yields to the event loop
on every acquire, even a free one, unless made with `fast_acquire=True`: so each
token cost two more turns of the loop. Measured: 12 against 6.5 µs per event
through one such stream alone, and about a tenth of the API process's samples at 75
streams (anyio's lock and its checkpoint). A lock that acquires a free lock at once
excludes concurrent pulls the same way; only the needless yield goes.

pydantic-ai 2.68 names the lock `_source_lock`. Should a release rename it,
`tests/unit/test_model_streams.py` fails, and streams work as before, only slower.
"""

from typing import Any

import anyio
from pydantic_ai import _utils

_PATCHED = "_threadlog_fast_lock"


def pull_without_yielding() -> None:
    """Has every `PeekableAsyncStream` made from now on take its lock without yielding."""
    stream_class: Any = _utils.PeekableAsyncStream
    if getattr(stream_class, _PATCHED, False):
        return
    made = stream_class.__init__

    def init(self: Any, source: Any) -> None:
        made(self, source)
        if isinstance(getattr(self, "_source_lock", None), anyio.Lock):
            self._source_lock = anyio.Lock(fast_acquire=True)

    stream_class.__init__ = init
    setattr(stream_class, _PATCHED, True)
