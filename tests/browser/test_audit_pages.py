"""The console's timeline, analytics and admin pages in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
from playwright.sync_api import Page, expect
from psycopg import sql

from tests.browser.console import ConsoleServer, screenshot, sign_in_with_key
from tests.support import create_conversation, post_message, wait_for_run_end


def finished_conversation(server: ConsoleServer, title: str, *messages: str) -> str:
    with server.client() as admin:
        conversation_id = create_conversation(admin, title=title)
        for message in messages:
            post_message(admin, conversation_id, message)
            wait_for_run_end(admin, conversation_id)
    return conversation_id


def test_the_timeline_slider_shows_the_conversation_as_it_stood(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    conversation_id = finished_conversation(server, "Timeline", "first question", "second one")
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/timeline/{conversation_id}")
    expect(page.locator(".verify")).to_contain_text("Chain intact")
    rows = page.locator("table.events tbody tr")
    expect(page.locator(".load-status")).to_have_text(re.compile(r"^\d+ events\.$"))
    count = rows.count()
    assert count > 6
    expect(rows.first.locator("td").nth(1)).to_have_text("ConversationStarted")
    expect(rows.first.locator("td").nth(4)).to_have_text(re.compile(r"^[0-9a-f]{16}…$"))
    state = page.locator(".state-at")
    expect(state).to_contain_text(f"at position {count} of {count}")
    expect(state.locator("li")).to_have_count(4)
    slider = page.get_by_label("Position")
    # Position 2 is the first MessagePosted: one message then.
    slider.fill("2")
    expect(state).to_contain_text(f"at position 2 of {count}")
    expect(state.locator("li")).to_have_count(1)
    expect(state.locator("li")).to_contain_text("first question")
    expect(page.locator("tr.at td").first).to_have_text("2")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export NDJSON").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert [json.loads(line)["position"] for line in lines] == list(range(1, count + 1))
    screenshot(page, shots, "timeline")


def test_a_tampered_event_shows_as_the_first_broken_link(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    conversation_id = finished_conversation(server, "Tampered", "hello")
    # What someone with database access could do: edit an event's stored state.
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        table = conn.execute(
            # The server's own tables only: the catalog has views named so too
            # (PostgreSQL 17's pg_wait_events).
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
            "AND table_name LIKE %s",
            ("%events",),
        ).fetchall()
        # The conversations' events (the users' and the agents' stores have their own).
        events_table = next(
            name for (name,) in table if not name.startswith(("identity", "agents"))
        )
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
                "'\"actor\":\"user:', '\"actor\":\"user:x'), 'UTF8') "
                "WHERE originator_id = %s AND originator_version = 2"
            ).format(sql.Identifier(events_table)),
            (conversation_id,),
        )
    with server.client() as admin:
        auditor = admin.post("/v1/admin/users", json={"username": "audrey", "roles": ["auditor"]})
        key = admin.post(f"/v1/admin/users/{auditor.json()['id']}/keys", json={}).json()["key"]
    sign_in_with_key(page, server, key)
    page.goto(f"{server.base_url}/#/timeline/{conversation_id}")
    verify = page.locator(".verify")
    expect(verify).to_contain_text("Chain broken at position 2")
    expect(page.locator("table.events tr.broken td").first).to_have_text("2")
    # Auditors export through the audit log's NDJSON route.
    with page.expect_download() as download:
        page.get_by_role("button", name="Export NDJSON").click()
    assert Path(download.value.path()).read_text().count("\n") >= 5
    screenshot(page, shots, "timeline-broken")


def test_analytics_draws_usage_charts_and_live_events(
    page: Page, server: ConsoleServer, shots: Path
) -> None:
    finished_conversation(server, "For the charts", "some usage")
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/analytics")
    charts = page.locator(".charts .chart")
    expect(charts).to_have_count(4)
    for n in range(4):
        expect(charts.nth(n).locator("canvas")).to_have_count(1)
        assert int(charts.nth(n).get_attribute("data-points") or 0) >= 1
    expect(page.locator("figcaption", has_text="Usage per day")).to_be_visible()
    expect(page.locator(".popular li").first).to_contain_text("assistant")
    live = page.locator(".live .chart")
    expect(live.locator("canvas")).to_have_count(1)
    expect(page.locator(".live [role=status]")).to_have_text("Live: waiting for events…")
    finished_conversation(server, "Live", "now")
    expect(live).to_have_attribute("data-events", re.compile(r"^[1-9]\d*$"))
    expect(page.locator(".live .u-legend")).to_contain_text("TokenStreamed")
    screenshot(page, shots, "analytics")


def test_an_admin_issues_and_revokes_a_key(page: Page, server: ConsoleServer, shots: Path) -> None:
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/admin")
    page.get_by_label("New user's name").fill("carol")
    page.get_by_label("Password (optional", exact=False).fill("a long password")
    page.get_by_label("analyst").check()
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_text(re.compile(r"^Created carol \(.*analyst.*\)"))).to_be_visible()
    page.get_by_label("Key name").fill("for the test")
    page.get_by_role("button", name="Issue key").click()
    key = page.get_by_label("The new key").input_value()
    assert key.startswith("tlk_")
    with server.client(key) as holder:
        assert holder.get("/v1/users/me").status_code == 200
    screenshot(page, shots, "admin")
    page.locator(".keys li", has_text="for the test").get_by_role("button", name="Revoke").click()
    expect(page.locator(".keys li", has_text="for the test")).to_contain_text("Revoked")
    with server.client(key) as holder:
        assert holder.get("/v1/users/me").status_code == 401


def test_an_admin_erases_a_users_content_after_confirming(
    page: Page, server: ConsoleServer
) -> None:
    with server.client() as admin:
        created = admin.post("/v1/admin/users", json={"username": "erin", "roles": ["user"]})
        key = admin.post(f"/v1/admin/users/{created.json()['id']}/keys", json={}).json()["key"]
    with server.client(key) as erin:
        conversation_id = create_conversation(erin, title="Mine")
        post_message(erin, conversation_id, "my secret")
        wait_for_run_end(erin, conversation_id)
    sign_in_with_key(page, server)
    page.goto(f"{server.base_url}/#/admin")
    page.get_by_label("User to find").fill("erin")
    page.get_by_role("button", name="Find user").click()
    erase = page.get_by_role("button", name="Erase content")
    expect(erase).to_be_disabled()
    page.get_by_label("Type erin to confirm").fill("eri")
    expect(erase).to_be_disabled()
    page.get_by_label("Type erin to confirm").fill("erin")
    erase.click()
    erased = re.compile(r"Erased erin's content: [1-9]\d* content keys")
    expect(page.get_by_text(erased)).to_be_visible()
    with server.client(key) as erin:
        messages = erin.get(f"/v1/conversations/{conversation_id}/messages").json()["items"]
    assert messages and all(m["content"] is None and m["erased"] for m in messages)
