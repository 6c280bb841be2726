"""A lean SSE client on asyncio streams: HTTP/1.1 GET, chunked body, frames as they come.

httpx costs far more CPU per frame, and the load generator shares the machine's two
CPUs with the server it measures: the leaner the client, the less it disturbs it.
Each read's arrival time is taken before its frames are parsed, so the parsing of
one frame never adds to the latency measured for the next.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


@dataclass(slots=True)
class Frame:
    id: int | None
    event: str | None
    data: bytes
    comment: bool  # a `:` comment line only (a heartbeat)


@dataclass(slots=True)
class _Chunked:
    """Decodes a chunked transfer encoding incrementally."""

    buffer: bytearray = field(default_factory=bytearray)
    remaining: int = 0  # bytes left in the current chunk (+2 for its CRLF)
    ended: bool = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while self.buffer and not self.ended:
            if self.remaining:
                take = min(self.remaining, len(self.buffer))
                out += self.buffer[:take]
                del self.buffer[:take]
                self.remaining -= take
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line = bytes(self.buffer[:line_end])
            del self.buffer[: line_end + 2]
            if not line:
                continue  # the CRLF after a chunk's data
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self.ended = True
            self.remaining = size
        return bytes(out)


def parse_frame(raw: bytes) -> Frame:
    frame = Frame(id=None, event=None, data=b"", comment=False)
    data: list[bytes] = []
    comments = 0
    lines = raw.split(b"\n")
    for line in lines:
        if line.startswith(b":"):
            comments += 1
        elif line.startswith(b"id: "):
            frame.id = int(line[4:])
        elif line.startswith(b"event: "):
            frame.event = line[7:].decode()
        elif line.startswith(b"data: "):
            data.append(line[6:])
    frame.data = b"\n".join(data)
    frame.comment = comments == len(lines)
    return frame


async def stream_sse(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    on_frames: Callable[[list[Frame], int], bool],
    *,
    on_open: Callable[[], None] | None = None,
) -> None:
    """GETs `path` as SSE and calls `on_frames(frames, arrival_ns)` per read until it
    returns True or the server ends the body; an answer other than 200 raises."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise HTTPStatusError(status, await _rest(reader))
        if on_open is not None:
            on_open()
        chunked = b"transfer-encoding: chunked" in head.lower()
        decoder = _Chunked()
        pending = b""
        while True:
            data = await reader.read(65536)
            arrived = time.time_ns()
            if not data:
                return
            body = decoder.feed(data) if chunked else data
            *raw_frames, pending = (pending + body).split(b"\n\n")
            frames = [parse_frame(raw) for raw in raw_frames if raw]
            if frames and on_frames(frames, arrived):
                return
            if decoder.ended:
                return
    finally:
        writer.close()


async def _rest(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(4096), 1.0)
    except TimeoutError:
        return b""
