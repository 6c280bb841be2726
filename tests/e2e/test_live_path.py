"""The live path: committed events go from the saving process straight to watching
clients (in process, and over core NATS to other processes), not through the relay;
a live event that may be lost is refilled from the store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path
from uuid import UUID, uuid4

import nats

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    stored_events,
)
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.eventstore import EventLog, open_service
from threadlog.infra.stream.feed import ConversationFeed, FeedEvent, Heartbeat
from threadlog.infra.stream.live import LiveEvents
from threadlog.infra.stream.nats import HEADER_POSITION, HEADER_TYPE, StreamNames

TOKENS = [f"t{i} " for i in range(30)]
CAUSE = Cause(actor="user:test", correlation_id="live-path")


def test_tokens_reach_a_watching_client_with_the_relay_switched_off(
    make_settings: SettingsFactory,
) -> None:
    model = scripted_model(TOKENS, delay=0.005)
    with LiveServer(make_settings(relay=False), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hello")
        events = read_sse(client, f"/v1/conversations/{conversation_id}/events")
        stored = stored_events(client, conversation_id)
    assert [e.data for e in events] == stored
    assert [e.data["data"]["delta"] for e in events if e.event == "TokenStreamed"] == TOKENS


def test_a_client_of_another_process_gets_a_run_over_the_live_subject(
    make_settings: SettingsFactory,
) -> None:
    """Two apps on one store and one NATS, no relay: the run executes on the first, its
    events reach a client of the second through the conversation's core NATS subject."""
    settings = make_settings(relay=False, orphan_check_seconds=0)
    model = scripted_model(TOKENS, delay=0.01)
    with (
        LiveServer(settings, model) as runner,
        LiveServer(settings, model) as watcher,
        runner.client() as runner_client,
        watcher.client() as watcher_client,
    ):
        conversation_id = create_conversation(runner_client)
        post_message(runner_client, conversation_id, "hello")
        events = read_sse(watcher_client, f"/v1/conversations/{conversation_id}/events")
        stored = stored_events(runner_client, conversation_id)
    assert [e.data for e in events] == stored
    assert events[-1].event == "RunCompleted"


async def _pages(
    feed: ConversationFeed, conversation_id: UUID
) -> AsyncGenerator[list[FeedEvent], None]:
    async for page in feed.follow_pages(conversation_id, after=0, heartbeat_seconds=30):
        if not isinstance(page, Heartbeat):
            yield list(page)


async def test_events_another_process_saved_are_read_from_the_store_when_the_live_path_lost_some(
    tmp_path: Path, nats_url: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_url)
    keys = open_content_keys(settings)
    here, elsewhere = open_service(settings, keys), open_service(settings, keys)
    live = await LiveEvents.connect(nats_url, StreamNames(prefix=f"t{tmp_path.name[-8:]}"), keys)
    here.on_commit(live.committed)
    feed = ConversationFeed(EventLog(here), live, keys)
    started = here.start_conversation(
        owner="u", agent="demo", title="", metadata={}, cause=CAUSE
    ).value
    await asyncio.sleep(0.05)  # its live hand-over is done before the client follows
    pages = _pages(feed, started.id)
    try:
        assert [e.position for e in await anext(pages)] == [1]
        # Saved by a service without a live path: nothing is published for it.
        await asyncio.to_thread(elsewhere.rename, started.id, title="quiet", cause=CAUSE)
        next_page = asyncio.ensure_future(anext(pages))
        await asyncio.sleep(0.3)
        assert not next_page.done()
        live.connection_lost()  # what a NATS reconnect reports
        page = await asyncio.wait_for(next_page, 5)
        assert [(e.position, e.type) for e in page] == [(2, "ConversationRenamed")]
        # And a live event after a gap brings the missing ones from the store first.
        await asyncio.to_thread(elsewhere.rename, started.id, title="gap", cause=CAUSE)
        await asyncio.to_thread(here.rename, started.id, title="live", cause=CAUSE)
        positions = [e.position for e in await asyncio.wait_for(anext(pages), 5)]
        positions += [e.position for e in await asyncio.wait_for(anext(pages), 5)]
        assert positions == [3, 4]
    finally:
        with contextlib.suppress(Exception):
            await pages.aclose()
        await live.close()
        here.close()
        elsewhere.close()
        keys.close()


async def _live(tmp_path: Path, nats_url: str) -> tuple[LiveEvents, StreamNames]:
    keys = open_content_keys(Settings(data_dir=tmp_path / "data", nats_url=nats_url))
    names = StreamNames(prefix=f"t{tmp_path.name[-8:]}")
    return await LiveEvents.connect(nats_url, names, keys), names


async def test_a_client_that_leaves_while_its_follower_subscribes_leaves_nothing_behind(
    tmp_path: Path, nats_url: str
) -> None:
    live, _ = await _live(tmp_path, nats_url)
    conversation_id = uuid4()
    try:
        following = asyncio.ensure_future(live.follow(conversation_id))
        await asyncio.sleep(0)  # inside the subscription's round trip to the server
        assert live.following(conversation_id) == 1
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        for _ in range(50):
            if not live.subscribed(conversation_id):
                break
            await asyncio.sleep(0.01)
        assert live.following(conversation_id) == 0
        assert not live.subscribed(conversation_id)
    finally:
        await live.close()


async def test_followers_arriving_together_share_one_subscription(
    tmp_path: Path, nats_url: str
) -> None:
    live, names = await _live(tmp_path, nats_url)
    conversation_id = uuid4()
    publisher = await nats.connect(nats_url)
    try:
        followers = await asyncio.gather(*(live.follow(conversation_id) for _ in range(5)))
        assert live.subscribed(conversation_id)
        await publisher.publish(
            names.live_subject(conversation_id),
            b"{}",
            headers={HEADER_POSITION: "7", HEADER_TYPE: "ConversationRenamed"},
        )
        await publisher.flush()
        await asyncio.sleep(0.3)
        # One subscription: each follower is offered the event once, not once per subscriber.
        assert [[item.position for item in f.drain()] for f in followers] == [[7]] * 5
        for follower in followers:
            await live.leave(follower)
        assert not live.subscribed(conversation_id)
    finally:
        await publisher.close()
        await live.close()
