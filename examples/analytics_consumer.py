"""Tokens per minute per agent, from threadlog's JetStream stream (docs/stream.md).

    python examples/analytics_consumer.py --nats-url nats://127.0.0.1:4222 \\
        --durable analytics --state analytics.json

A durable pull consumer. The state file keeps the counts together with the global
position of the last event they include, and is the truth about what was applied:
on start the consumer is (re)created at the first stream message after that
position. Each batch is applied in stream order, the state written atomically
(temporary file, fsync, rename), and only then acknowledged. A message delivered
again (a lost acknowledgement, or a relay duplicate published outside JetStream's
duplicate window) is at or below the saved position and skipped; a message that
arrives ahead of the next expected stream sequence makes it resubscribe from the
saved position. So a kill at any moment never loses or double-counts an event.

It counts `TokenStreamed` events (one per model text delta) by the agent of their
run (from `RunStarted`, else the conversation's `ConversationStarted`) and by the
minute of the event's timestamp (UTC). Needs only nats-py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

GLOBAL_POSITION = "Threadlog-Global-Position"
RUN_ENDS = {"RunCompleted", "RunFailed", "RunCancelled"}


@dataclass
class State:
    """What the consumer has applied, saved after every batch."""

    last_global_position: int = 0
    conversations: dict[str, str] = field(default_factory=dict)  # conversation → agent
    runs: dict[str, str] = field(default_factory=dict)  # run in flight → agent
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # agent → minute → count

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            last_global_position=int(raw["last_global_position"]),
            conversations=dict(raw["conversations"]),
            runs=dict(raw["runs"]),
            tokens={agent: dict(minutes) for agent, minutes in raw["tokens"].items()},
        )

    def save(self, path: Path) -> None:
        document = {
            "last_global_position": self.last_global_position,
            "conversations": self.conversations,
            "runs": self.runs,
            "tokens": self.tokens,
        }
        # Write a temporary file next to it, then rename: the file is always whole.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(document, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)

    def apply(self, global_position: int, event: dict[str, Any]) -> bool:
        """Applies one event; False when it was applied before (a redelivery)."""
        if global_position <= self.last_global_position:
            return False
        kind, data = event["type"], event["data"]
        if kind == "ConversationStarted":
            self.conversations[event["conversation_id"]] = data["agent"]
        elif kind == "RunStarted":
            self.runs[data["run_id"]] = data["agent"]
        elif kind == "TokenStreamed":
            self._count(event, data["run_id"])
        elif kind in RUN_ENDS or (kind == "RunInterrupted" and not data["retry"]):
            self.runs.pop(data["run_id"], None)  # keeps the map to the runs in flight
        self.last_global_position = global_position
        return True

    def _count(self, event: dict[str, Any], run_id: str) -> None:
        agent = self.runs.get(run_id) or self.conversations.get(event["conversation_id"], "?")
        moment = datetime.fromisoformat(event["timestamp"]).astimezone(UTC)
        minute = moment.strftime("%Y-%m-%dT%H:%MZ")
        per_minute = self.tokens.setdefault(agent, {})
        per_minute[minute] = per_minute.get(minute, 0) + 1

    def table(self) -> str:
        lines = [f"{'agent':<24} {'minute (UTC)':<18} {'tokens':>8}"]
        for agent in sorted(self.tokens):
            for minute, count in sorted(self.tokens[agent].items()):
                lines.append(f"{agent:<24} {minute:<18} {count:>8}")
        lines.append(f"(up to global position {self.last_global_position})")
        return "\n".join(lines)


class Gap(Exception):
    """A message arrived ahead of the next expected one: an earlier one is still out."""


async def first_sequence_after(
    js: JetStreamContext, stream: str, global_position: int, subjects: str = ">"
) -> int:
    """The stream sequence of the first event after `global_position`.

    Stream sequences and global positions both increase along the stream, but they
    differ wherever the store's global log has a gap, so this searches by header. Each
    probe reads the first message at or after a sequence: a repaired stream may have
    deleted sequences (docs/stream.md, "Repair")."""
    info = await js.stream_info(stream)
    low, high = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return high + 1
    found = high + 1
    while low <= high:
        middle = (low + high) // 2
        try:
            message = await js.get_msg(stream, middle, subject=subjects, next=True)
        except NotFoundError:  # nothing at or after `middle`
            high = middle - 1
            continue
        assert message.seq is not None
        if int((message.headers or {})[GLOBAL_POSITION]) > global_position:
            found, high = message.seq, middle - 1
        else:
            low = message.seq + 1
    return found


async def open_consumer(
    js: JetStreamContext, args: argparse.Namespace, state: State
) -> tuple[JetStreamContext.PullSubscription, int]:
    """(Re)creates the durable consumer at the first event after the saved position.

    The state file, not the consumer's acknowledgements, says what was applied: a
    message a crashed run fetched but never applied would otherwise come back only
    after `ack_wait`, behind newer ones, and be mistaken for a duplicate."""
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(args.stream, args.durable)
    start = await first_sequence_after(
        js, args.stream, state.last_global_position, f"{args.prefix}.conversation.>"
    )
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=args.ack_wait,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
    )
    subscription = await js.pull_subscribe(
        f"{args.prefix}.conversation.>", durable=args.durable, stream=args.stream, config=config
    )
    return subscription, start


async def consume(args: argparse.Namespace) -> State:
    state = State.load(args.state)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    last_message = time.monotonic()
    try:
        while args.idle_exit is None or time.monotonic() - last_message < args.idle_exit:
            subscription, expected = await open_consumer(js, args, state)
            try:
                while args.idle_exit is None or time.monotonic() - last_message < args.idle_exit:
                    try:
                        batch = await subscription.fetch(args.batch, timeout=1.0)
                    except TimeoutError:  # nats.errors.TimeoutError is one too
                        continue
                    last_message = time.monotonic()
                    expected = await apply_batch(state, batch, args.state, expected)
            except Gap:
                print("an earlier message is missing: resubscribing", file=sys.stderr)
            finally:
                await subscription.unsubscribe()
    finally:
        await nc.close()
    return state


async def apply_batch(state: State, batch: list[Msg], path: Path, expected: int) -> int:
    """Applies a batch in stream order, saves, then acknowledges; the next expected sequence."""
    applied, taken, gap = 0, [], False
    for message in batch:
        sequence = message.metadata.sequence.stream
        if sequence > expected:
            gap = True
            break
        taken.append(message)
        if sequence == expected:
            expected += 1
            position = int((message.headers or {})[GLOBAL_POSITION])
            applied += state.apply(position, json.loads(message.data))
    if applied:
        state.save(path)  # before acknowledging: a crash in between means a redelivery
    for message in taken:
        await message.ack()
    if applied < len(taken):
        print(f"skipped {len(taken) - applied} already applied", file=sys.stderr)
    if gap:
        raise Gap
    return expected


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tokens per minute per agent from threadlog.")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="THREADLOG", help="THREADLOG_NATS_STREAM")
    parser.add_argument("--prefix", default="threadlog", help="THREADLOG_NATS_SUBJECT_PREFIX")
    parser.add_argument("--durable", default="analytics", help="the durable consumer's name")
    parser.add_argument("--state", type=Path, default=Path("analytics-state.json"))
    parser.add_argument("--batch", type=int, default=100, help="messages per fetch")
    parser.add_argument(
        "--ack-wait", type=float, default=30.0, help="seconds before an unacknowledged redelivery"
    )
    parser.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many seconds without events"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        state = asyncio.run(consume(args))
    except KeyboardInterrupt:
        state = State.load(args.state)
    print(state.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
