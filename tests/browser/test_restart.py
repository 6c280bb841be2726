"""A server restarted in the middle of a run: the page says it is reconnecting, then
resumes from the last event it showed, with no text missing and none twice.

A module of its own: its server is stopped and started again."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.console import ConsoleServer, sign_in_with_key
from tests.support import stored_events


def test_a_restart_mid_run_resumes_the_text_exactly(page: Page, server: ConsoleServer) -> None:
    sign_in_with_key(page, server)
    page.get_by_label("Title", exact=True).fill("Restarted")
    page.get_by_label("Agent", exact=True).first.select_option("slow")
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("h1.conversation-title")).to_have_text("Restarted")
    conversation_id = page.url.rsplit("/", 1)[1]
    box = page.get_by_label("Message", exact=True)
    box.fill("count slowly")
    box.press("Enter")
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_attribute("data-text", re.compile(r"( \d+@\d+){5}"))

    server.stop()
    banner = page.locator(".connection")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("reconnecting")
    shown_while_down = reply.get_attribute("data-text") or ""
    server.start()

    expect(banner).to_be_hidden(timeout=20_000)
    expect(reply.locator(".state")).to_contain_text("interrupted", timeout=20_000)
    with server.client() as admin:
        events = stored_events(admin, conversation_id)
    [run_id] = {e["data"]["run_id"] for e in events if e["type"] == "RunStarted"}
    stored_text = "".join(
        e["data"]["delta"]
        for e in events
        if e["type"] == "TokenStreamed" and e["data"]["run_id"] == run_id
    )
    text = reply.get_attribute("data-text") or ""
    assert text == stored_text  # every token once, in order
    assert text.startswith(shown_while_down)
    numbers = [int(n) for n in re.findall(r" (\d+)@", text)]
    assert numbers == list(range(len(numbers)))
