"""A local fake OpenAI-compatible server for tests.

It lets the real provider path (pydantic-ai's OpenAI models + `OpenAIProvider`, i.e. the `openai`
SDK over HTTP) run in tests, with only the language model itself faked.

Two endpoints are served, because pydantic-ai uses both: `OpenAIChatModel` and the model string
`openai-chat:...` call `POST /v1/chat/completions`, while the model string `openai:...` resolves
to `OpenAIResponsesModel`, which calls `POST /v1/responses`.

Streaming responses use chunked transfer-encoding on a keep-alive HTTP/1.1 connection. That is
what lets `fail_mid_stream_next` be detected by the client: dropping the connection before the
terminating zero-length chunk is a protocol error for httpx, whereas with `Connection: close`
and no length an abrupt close would be indistinguishable from a normal end of body.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"

_TOKEN_RE = re.compile(r"\S+\s*|\s+")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def split_tokens(text: str) -> list[str]:
    """Split `text` into word-ish tokens that keep their trailing whitespace."""
    return _TOKEN_RE.findall(text)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Whitespace-separated words across the request's messages (or Responses input items)."""
    return sum(len(text.split()) for text in _prompt_texts(body))


def _prompt_texts(body: dict[str, Any]) -> Iterator[str]:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield instructions
    items = body.get("messages") or body.get("input") or []
    if isinstance(items, str):
        yield items
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"

    @property
    def fake(self) -> FakeOpenAI:
        assert isinstance(self.server, _Server)
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send_error(404, f"Unknown path {self.path}")

    def do_POST(self) -> None:
        try:
            self._handle_post()
        except (ConnectionError, TimeoutError):
            # The client went away (e.g. a cancelled stream); nothing left to answer.
            self.close_connection = True

    def _handle_post(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in (CHAT_COMPLETIONS_PATH, RESPONSES_PATH):
            self._send_error(404, f"Unknown path {self.path}")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_error(400, "Request body is not valid JSON")
            return
        if not isinstance(body, dict):
            self._send_error(400, "Request body must be a JSON object")
            return

        streaming = body.get("stream") is True
        failure, drop_after, reply = self.fake._take_request(path, body, streaming=streaming)
        if failure is not None:
            self._send_error(*failure)
            return

        model = str(body.get("model") or "fake-model")
        prompt_tokens = count_prompt_tokens(body)
        tokens = split_tokens(reply)
        tool_call = self.fake._take_tool_call() if streaming else None
        if path == CHAT_COMPLETIONS_PATH and tool_call is not None:
            self._stream_chat_tool_call(model, *tool_call, prompt_tokens)
        elif path == CHAT_COMPLETIONS_PATH and streaming:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream_chat(model, tokens, prompt_tokens, include_usage, drop_after)
        elif path == CHAT_COMPLETIONS_PATH:
            self._send_json(200, _chat_completion(model, reply, prompt_tokens, len(tokens)))
        elif streaming:
            self._stream_responses(body, model, tokens, prompt_tokens, drop_after)
        else:
            done = _Responses(body, model, prompt_tokens)
            self._send_json(200, done.response("completed", reply, len(tokens)))

    def _stream_chat(
        self,
        model: str,
        tokens: list[str],
        prompt_tokens: int,
        include_usage: bool,
        drop_after: int | None,
    ) -> None:
        completion_id = _new_id("chatcmpl-")
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        self._start_event_stream()
        for token in self._paced(tokens, drop_after):
            delta = {"role": "assistant", "content": token}
            self._write_event(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        if drop_after is not None:
            self._drop_connection()
            return
        self._write_event(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if include_usage:
            self._write_event(chunk([], usage=_chat_usage(prompt_tokens, len(tokens))))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _stream_chat_tool_call(
        self, model: str, name: str, arguments: dict[str, Any], prompt_tokens: int
    ) -> None:
        """One tool call, its JSON arguments split over two chunks, then usage."""
        base: dict[str, Any] = {"id": _new_id("chatcmpl-"), "object": "chat.completion.chunk"}
        base |= {"model": model, "created": int(time.time())}
        text = json.dumps(arguments)
        half = len(text) // 2
        call = {"index": 0, "id": _new_id("call_"), "type": "function"}
        pieces = [
            {**call, "function": {"name": name, "arguments": text[:half]}},
            {"index": 0, "function": {"arguments": text[half:]}},
        ]
        self._start_event_stream()
        for piece in pieces:
            delta = {"role": "assistant", "tool_calls": [piece]}
            self._write_event({**base, "choices": [{"index": 0, "delta": delta}]})
        done = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        self._write_event({**base, "choices": [done]})
        self._write_event({**base, "choices": [], "usage": _chat_usage(prompt_tokens, 5)})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _stream_responses(
        self,
        body: dict[str, Any],
        model: str,
        tokens: list[str],
        prompt_tokens: int,
        drop_after: int | None,
    ) -> None:
        r = _Responses(body, model, prompt_tokens)
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> None:
            payload = {"type": kind, "sequence_number": next(seq), **fields}
            self._write_chunk(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

        where = {"item_id": r.message_id, "output_index": 0}
        self._start_event_stream()
        event("response.created", response=r.response("in_progress"))
        event("response.in_progress", response=r.response("in_progress"))
        event("response.output_item.added", output_index=0, item=r.message("in_progress", None))
        event("response.content_part.added", **where, content_index=0, part=_output_text(""))
        for token in self._paced(tokens, drop_after):
            event("response.output_text.delta", **where, content_index=0, delta=token, logprobs=[])
        if drop_after is not None:
            self._drop_connection()
            return
        text = "".join(tokens)
        event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        event("response.content_part.done", **where, content_index=0, part=_output_text(text))
        event("response.output_item.done", output_index=0, item=r.message("completed", text))
        event("response.completed", response=r.response("completed", text, len(tokens)))
        self._write_chunk(b"")

    def _paced(self, tokens: list[str], drop_after: int | None) -> Iterator[str]:
        delay = self.fake.token_delay
        for i, token in enumerate(tokens):
            if drop_after is not None and i >= drop_after:
                return
            if i and delay > 0:
                time.sleep(delay)
            yield token

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str) -> None:
        error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
        self._send_json(
            status,
            {"error": {"message": message, "type": error_type, "param": None, "code": None}},
        )

    def _start_event_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")

    def _drop_connection(self) -> None:
        # A FIN rather than an RST (SO_LINGER 0): an RST may make the client's kernel discard
        # chunks already received but not yet read, so "N tokens arrived first" would be racy.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_completion(
    model: str, reply: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _chat_usage(prompt_tokens, completion_tokens),
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Responses:
    """Builds the Responses API objects for one response to one request."""

    def __init__(self, body: dict[str, Any], model: str, prompt_tokens: int) -> None:
        self.body = body
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.response_id = _new_id("resp_")
        self.message_id = _new_id("msg_")
        self.created_at = int(time.time())

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [] if text is None else [_output_text(text)],
        }

    def response(
        self, status: str, text: str | None = None, output_tokens: int = 0
    ) -> dict[str, Any]:
        done = status == "completed"
        usage = {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + output_tokens,
        }
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": [self.message("completed", text)] if done else [],
            "usage": usage if done else None,
            "error": None,
            "incomplete_details": None,
            "instructions": self.body.get("instructions"),
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "top_p": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "previous_response_id": self.body.get("previous_response_id"),
            "store": False,
        }


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1, in a background thread.

    Serves `POST /v1/chat/completions` and `POST /v1/responses`, streaming (SSE over chunked
    transfer-encoding) or not. `fail_next` and `fail_mid_stream_next` are one-shot: they affect
    only the next request (respectively the next streaming request). The `openai` SDK retries
    5xx, 408, 409 and 429 by default (`max_retries=2`), so a one-shot `fail_next(500)` is
    invisible to a client with default retries: use a client with `max_retries=0`, the model
    setting `max_retries=0`, or a status that is not retried, such as 400.
    """

    def __init__(
        self, *, reply: str = "Hello from the fake model.", token_delay: float = 0.0
    ) -> None:
        self.token_delay = token_delay
        self.requests: list[dict[str, Any]] = []
        self.request_paths: list[str] = []
        self._reply = reply
        self._lock = threading.Lock()
        self._fail_next: tuple[int, str] | None = None
        self._fail_mid_stream_after: int | None = None
        self._tool_call_next: tuple[str, dict[str, Any]] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def base_url(self) -> str:
        """E.g. `http://127.0.0.1:PORT/v1`; only available once started."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def reply(self) -> str:
        with self._lock:
            return self._reply

    def set_reply(self, text: str) -> None:
        with self._lock:
            self._reply = text

    def fail_next(self, status: int = 500, message: str = "upstream exploded") -> None:
        """Answer the next request with HTTP `status` and an OpenAI-style error body."""
        with self._lock:
            self._fail_next = (status, message)

    def fail_mid_stream_next(self, after_tokens: int = 2) -> None:
        """Make the next streamed response send `after_tokens` tokens, then drop the connection."""
        if after_tokens < 0:
            raise ValueError("after_tokens must be >= 0")
        with self._lock:
            self._fail_mid_stream_after = after_tokens

    def call_tool_next(self, name: str, arguments: dict[str, Any]) -> None:
        """Make the next streamed chat completion a call of tool `name` (one-shot)."""
        with self._lock:
            self._tool_call_next = (name, arguments)

    def _take_tool_call(self) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            call, self._tool_call_next = self._tool_call_next, None
            return call

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeOpenAI is already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        # Keep-alive connections would otherwise leave handler threads blocked on a read.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _take_request(
        self, path: str, body: dict[str, Any], *, streaming: bool
    ) -> tuple[tuple[int, str] | None, int | None, str]:
        """Record a request; return its failure, drop-after token count and reply."""
        with self._lock:
            self.requests.append(body)
            self.request_paths.append(path)
            failure, self._fail_next = self._fail_next, None
            drop_after: int | None = None
            if failure is None and streaming:
                drop_after, self._fail_mid_stream_after = self._fail_mid_stream_after, None
            return failure, drop_after, self._reply

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
