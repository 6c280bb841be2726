"""The console's sign-in and chat pages in a real browser against `threadlog serve`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.browser.console import (
    ConsoleServer,
    new_page,
    page_errors,
    screenshot,
    sign_in_with_key,
)
from tests.support import create_conversation

XSS = "<img src=x onerror=alert(1)> <script>window.__xss = 1</script> **bold**"


def open_new_conversation(page: Page, title: str, agent: str, policy: str = "reject") -> str:
    page.get_by_label("Title", exact=True).fill(title)
    page.get_by_label("Agent", exact=True).first.select_option(agent)
    page.get_by_label("A message during a run").select_option(policy)
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("h1.conversation-title")).to_have_text(title)
    return page.url.rsplit("/", 1)[1]


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def test_signing_in_with_a_password_then_out(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    with server.client() as admin:
        created = admin.post(
            "/v1/admin/users",
            json={"username": "pat", "roles": ["user"], "password": "correct horse battery"},
        )
        assert created.status_code == 201, created.text
    page.goto(server.base_url)
    expect(page).to_have_url(re.compile(r"#/signin$"))
    page.get_by_label("Username").fill("pat")
    page.get_by_label("Password").fill("wrong password!")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("401")
    screenshot(page, shots, "signin")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#who")).to_have_text("pat (user)")
    expect(page.get_by_role("link", name="Admin")).to_be_hidden()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"#/signin$"))
    # The credential went nowhere near a URL, and is gone from the session.
    assert page.evaluate("sessionStorage.length") == 0


def test_tokens_appear_as_they_stream_and_enter_sends(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Streaming", "assistant")
    box = page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"  # Shift+Enter: a new line
    box.press("Enter")
    expect(page.locator(".message.user .content")).to_have_text("first line\nsecond line")
    reply = page.locator(".message.assistant").last
    # Seen mid-stream: some text while the run still streams …
    expect(reply).to_have_class(re.compile(r"\brunning\b"))
    expect(reply).to_have_attribute("data-text", re.compile(r".+"))
    partial = reply.get_attribute("data-text") or ""
    # … and the whole reply at its end.
    expect(reply).to_have_class(re.compile(r"\bcompleted\b"))
    final = reply.get_attribute("data-text") or ""
    assert len(partial) < len(final) and final.startswith(partial)
    assert "first line second line" in final
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    screenshot(page, shots, "chat")


def test_a_compaction_shows_where_it_happened_live_and_after_a_reload(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Compacted", "brief")
    for i in range(4):
        send(page, f"message {i} about a long conversation")
        expect(page.locator(".message.assistant.completed")).to_have_count(i + 1)
    note = page.locator("details.compacted").first
    expect(note).to_contain_text("History compacted here for the model")
    page.reload()
    expect(page.locator(".message.user")).to_have_count(4)  # every message stays
    note = page.locator("details.compacted").first
    expect(note).to_contain_text("tokens, up to position")
    note.locator("summary").click()
    expect(note).to_contain_text("user messages in all so far")
    screenshot(page, shots, "compaction")


def test_a_script_in_a_message_runs_nothing(page: Page, server: ConsoleServer) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, XSS, "assistant")
    send(page, XSS)
    expect(page.locator(".message.user .content")).to_have_text(XSS)
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_class(re.compile(r"\bcompleted\b"))
    expect(reply.locator("strong")).to_have_text("bold")  # Markdown, rendered …
    assert page.locator("img, main script").count() == 0  # … and sanitized
    page.goto(f"{server.base_url}/#/chat")
    expect(page.locator(".conversation-list .title").first).to_have_text(XSS)
    assert page.evaluate("window.__xss") is None
    assert page_errors(page) == []  # no alert() dialog, no script error


def test_tool_calls_show_as_cards_with_arguments_and_results(
    page: Page, server: ConsoleServer
) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Tools", "tools-demo")
    send(page, "what is (2 + 3) * 7?")
    card = page.locator(
        "details.tool-call", has=page.locator("summary", has_text="Tool: calculator")
    )
    expect(card.locator("summary")).to_have_text("Tool: calculator")
    card.locator("summary").click()
    expect(card.locator("pre.args")).to_contain_text("(2 + 3) * 7")
    expect(card.locator("pre.result")).to_contain_text("35")
    # The agent reports its progress with a tool of its own: a progress bar.
    expect(page.locator(".run-progress progress")).to_be_visible()
    assert float(page.locator(".run-progress progress").get_attribute("value") or 0) > 0


def test_structured_output_shows_as_formatted_json(page: Page, server: ConsoleServer) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Structured", "extractor")
    send(page, "Ada Lovelace")
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_class(re.compile(r"\bcompleted\b"))
    shown = reply.locator(".output pre.json")
    expect(shown).to_contain_text('"age": ')
    output = json.loads(shown.inner_text())
    assert set(output) == {"name", "age"} and isinstance(output["age"], int)
    assert "\n  " in shown.inner_text()  # indented, one field a line


def test_cancelling_a_run_keeps_its_text_and_ends_it(page: Page, server: ConsoleServer) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Cancel me", "slow")
    send(page, "count for me")
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_attribute("data-text", re.compile(r"( \d+@\d+){3}"))
    page.get_by_role("button", name="Cancel run").click()
    expect(reply.locator(".state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert len(reply.get_attribute("data-text") or "") > 0


def test_a_message_during_a_run_shows_the_busy_policys_answer(
    page: Page, server: ConsoleServer
) -> None:
    sign_in_with_key(page, server)
    open_new_conversation(page, "Busy, refusing", "slow", policy="reject")
    send(page, "one")
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
    send(page, "two")
    answer = page.locator(".answer")
    expect(answer).to_contain_text("Refused")
    expect(answer).to_contain_text("409")
    page.get_by_role("button", name="Cancel run").click()

    open_new_conversation(page, "Busy, queueing", "slow", policy="enqueue")
    send(page, "one")
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
    send(page, "two")
    expect(answer).to_have_text("Queued: it runs after the active run.")
    expect(page.locator(".message.user .state")).to_have_text("queued: runs after the active run")
    page.get_by_role("button", name="Cancel run").click()


def test_the_transcript_opens_on_the_newest_messages_and_loads_older_ones(
    page: Page, server: ConsoleServer
) -> None:
    with server.client() as admin:
        conversation_id = create_conversation(admin, title="Long")
        for n in range(16):  # 32 messages: more than the first page of 30
            answered = admin.post(
                f"/v1/conversations/{conversation_id}/messages",
                params={"wait": "true"},
                json={"content": f"message {n}"},
            )
            assert answered.status_code == 200, answered.text
        wait_for_messages(admin, conversation_id, 32)
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/chat/{conversation_id}")
    messages = page.locator(".messages .message")
    expect(messages).to_have_count(30)
    expect(messages.last).to_contain_text("message 15")
    expect(messages.first).not_to_contain_text("message 0")
    page.locator(".transcript").evaluate("el => { el.scrollTop = 0; }")
    expect(messages).to_have_count(32)
    expect(messages.first).to_have_text(re.compile("message 0$"))
    expect(page.locator(".older")).to_have_text("The beginning of the conversation.")


def wait_for_messages(client: httpx.Client, conversation_id: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = client.get(
            f"/v1/conversations/{conversation_id}/messages", params={"limit": 100}
        ).json()
        if len(page["items"]) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} messages")


def test_the_console_fits_a_375px_wide_screen(
    browser: Browser, server: ConsoleServer, shots: Path
) -> None:
    page = new_page(browser, viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        sign_in_with_key(page, server)
        open_new_conversation(page, "On a phone", "assistant")
        send(page, "hello from a small screen")
        expect(page.locator(".message.assistant").last).to_have_class(re.compile(r"\bcompleted\b"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        expect(page.get_by_label("Message", exact=True)).to_be_in_viewport()
        screenshot(page, shots, "mobile")
        assert page_errors(page) == []
    finally:
        page.context.close()


def test_unknown_pages_and_conversations_and_bad_credentials_show_cleanly(
    page: Page, server: ConsoleServer
) -> None:
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/nowhere")
    expect(page.get_by_role("heading", name="404: no such page")).to_be_visible()
    page.goto(f"{server.base_url}/#/chat/00000000-0000-4000-8000-000000000000")
    expect(page.locator("h1.conversation-title")).to_have_text("Conversation not found")
    expect(page.get_by_role("alert")).to_contain_text("404")
    # A credential that stops working (here: replaced by a bad one) signs the page out.
    page.evaluate(
        "sessionStorage.setItem('threadlog.credential', "
        "JSON.stringify({kind: 'key', value: 'tlk_not-a-key'}))"
    )
    page.goto(f"{server.base_url}/#/chat")
    page.reload()
    expect(page).to_have_url(re.compile(r"#/signin$"))
