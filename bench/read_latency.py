"""Benchmark 4: reading the conversation list and a message history over HTTP.

The store holds the population (100,000 conversations in a full run) and its read
models are built. The real app serves it under uvicorn (`tests.support.LiveServer`,
relay off: it would spend the run publishing the whole log to NATS). One client
sends requests one after another: the first page of `GET /v1/conversations`, then
each `next` page, PAGES deep; and the deep conversation's
`GET /v1/conversations/{id}/messages` from the start to its last page. Latency is
from sending a request to having its JSON body decoded.

The baseline, in the same run, is the same pages read straight from the read
model's view (`list_conversations` / `read_messages` in a read transaction), no HTTP.
"""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from bench.access import OWNER
from bench.measure import Sample, percentile, progress
from threadlog.infra.settings import Settings
from threadlog.projections.conversation_list import (
    ConversationList,
    ConversationSummary,
    ListQuery,
    list_conversations,
)
from threadlog.projections.message_history import Message, MessageHistory, read_messages
from threadlog.projections.read_models import ReadModels
from threadlog.projections.views import to_micros


@dataclass(frozen=True, kw_only=True)
class ReadLatencyConfig:
    list_pages: int  # pages deep into the conversation list, each round
    rounds: int  # walks through the list pages and through the messages, each
    page_size: int = Settings().page_size


@dataclass(frozen=True, kw_only=True)
class Latencies:
    """Milliseconds of every request of one kind, in the order they were sent."""

    http_ms: Sample
    direct_ms: Sample
    pages: int  # pages per walk

    @property
    def ratio(self) -> float:
        return self.http_ms.median / self.direct_ms.median

    def http_percentile(self, q: float) -> float:
        return percentile(self.http_ms.values, q)

    def direct_percentile(self, q: float) -> float:
        return percentile(self.direct_ms.values, q)


@dataclass(frozen=True, kw_only=True)
class ReadLatencyResult:
    config: ReadLatencyConfig
    conversations: int
    messages: int  # of the deep conversation
    conversation_list: Latencies
    message_history: Latencies


def run_read_latency(
    client: httpx.Client,
    read_models: ReadModels,
    deep_conversation: UUID,
    conversations: int,
    config: ReadLatencyConfig,
) -> ReadLatencyResult:
    list_http: list[float] = []
    list_direct: list[float] = []
    messages_http: list[float] = []
    messages_direct: list[float] = []
    messages = 0
    # Warm both paths (connections, prepared statements, caches) before measuring.
    _walk_list_http(client, config, [])
    _walk_list_direct(read_models, config, [])
    for round_number in range(config.rounds):
        progress(f"read latency: round {round_number + 1}/{config.rounds}")
        _walk_list_http(client, config, list_http)
        _walk_list_direct(read_models, config, list_direct)
        messages = _walk_messages_http(client, deep_conversation, config, messages_http)
        _walk_messages_direct(read_models, deep_conversation, config, messages_direct)
    return ReadLatencyResult(
        config=config,
        conversations=conversations,
        messages=messages,
        conversation_list=Latencies(
            http_ms=Sample.of(list_http),
            direct_ms=Sample.of(list_direct),
            pages=config.list_pages,
        ),
        message_history=Latencies(
            http_ms=Sample.of(messages_http),
            direct_ms=Sample.of(messages_direct),
            pages=len(messages_http) // config.rounds,
        ),
    )


def _timed(samples: list[float], call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = call()
    samples.append((time.perf_counter() - started) * 1000)
    return result


def _get_json(client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
    response = client.get(path, params=params)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _walk_list_http(client: httpx.Client, config: ReadLatencyConfig, samples: list[float]) -> None:
    cursor: str | None = None
    for _ in range(config.list_pages):
        params: dict[str, Any] = {"limit": config.page_size}
        if cursor is not None:
            params["cursor"] = cursor
        page = _timed(samples, functools.partial(_get_json, client, "/v1/conversations", params))
        if len(page["items"]) != config.page_size:
            raise RuntimeError(f"a list page held {len(page['items'])} conversations")
        cursor = page["next"]
        if cursor is None:
            raise RuntimeError("the conversation list ended before the pages wanted")


def _walk_list_direct(
    read_models: ReadModels, config: ReadLatencyConfig, samples: list[float]
) -> None:
    view = read_models.view(ConversationList.name)
    after: tuple[int, str] | None = None
    for _ in range(config.list_pages):
        query = ListQuery(owner=OWNER, limit=config.page_size + 1, after=after)

        def page(query: ListQuery = query) -> list[ConversationSummary]:
            with view.read() as sql:
                return list_conversations(sql, query)

        last = _timed(samples, page)[config.page_size - 1]
        after = (to_micros(last.last_activity_at), last.id)


def _walk_messages_http(
    client: httpx.Client, conversation_id: UUID, config: ReadLatencyConfig, samples: list[float]
) -> int:
    path = f"/v1/conversations/{conversation_id}/messages"
    after: int | None = None
    count = 0
    while True:
        params: dict[str, Any] = {"limit": config.page_size}
        if after is not None:
            params["after"] = after
        page = _timed(samples, functools.partial(_get_json, client, path, params))
        count += len(page["items"])
        after = page["next"]
        if after is None:
            return count


def _walk_messages_direct(
    read_models: ReadModels, conversation_id: UUID, config: ReadLatencyConfig, samples: list[float]
) -> None:
    view = read_models.view(MessageHistory.name)
    after = 0
    while True:

        def page(after: int = after) -> list[Message]:
            with view.read() as sql:
                return read_messages(
                    sql, str(conversation_id), after=after, limit=config.page_size + 1
                )

        rows = _timed(samples, page)
        if len(rows) <= config.page_size:
            return
        after = rows[config.page_size - 1].position
