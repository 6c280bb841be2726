"""Auditors re-verify a conversation's chain: through the API, the CLI, and on their own."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    ADMIN_KEY,
    LiveServer,
    create_conversation,
    post_message,
    scripted_model,
    stored_events,
    wait_for_run_end,
)
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service

THREADLOG = str(Path(sys.executable).parent / "threadlog")
VERIFY_SCRIPT = Path(__file__).parents[2] / "examples" / "verify_chain.py"
TRICKY = 'quotes " and \\ and emoji 🦜, U+2028 \u2028, tab \t, nul \x00, é'


def delete_event(settings: Settings, conversation_id: str, position: int) -> None:
    """What someone with database access could do."""
    service = open_service(settings)
    table = service.recorder.events_table_name  # type: ignore[attr-defined]
    service.close()
    if settings.database_url is not None:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE originator_id = %s AND originator_version = %s"
                ).format(sql.Identifier(table)),
                (conversation_id, position),
            )
        return
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute(
            f"DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
            (conversation_id.replace("-", ""), position),
        )


def test_an_auditor_verifies_the_chain_with_the_standalone_example_script(
    make_settings: SettingsFactory,
) -> None:
    with (
        LiveServer(make_settings(), scripted_model(["a 1.5", " reply"])) as server,
        server.client() as client,
    ):
        conversation_id = create_conversation(client, title=TRICKY, metadata={"n": 1.25})
        post_message(client, conversation_id, TRICKY)
        wait_for_run_end(client, conversation_id)
        last = stored_events(client, conversation_id)[-1]["position"]
        checked = subprocess.run(
            [sys.executable, str(VERIFY_SCRIPT), str(client.base_url), conversation_id],
            capture_output=True,
            text=True,
            env={**os.environ, "THREADLOG_API_KEY": ADMIN_KEY},
        )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == f"intact up to position {last}"


def test_the_verify_route_reports_an_intact_chain(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        wait_for_run_end(client, conversation_id)
        answer = client.get(f"/v1/audit/conversations/{conversation_id}/verify")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["intact"] is True and body["first_broken"] is None
    assert body["events"] == body["last_position"] >= 5


def test_the_verify_route_locates_a_deleted_event(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        wait_for_run_end(client, conversation_id)
        delete_event(settings, conversation_id, 2)
        answer = client.get(f"/v1/audit/conversations/{conversation_id}/verify")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["intact"] is False
    assert body["first_broken"]["position"] == 2
    assert body["first_broken"]["problem"] == "missing_event"


def test_verifying_an_unknown_conversation_is_404_and_a_bad_id_is_400(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings()) as server, server.client() as client:
        unknown = client.get("/v1/audit/conversations/00000000-0000-0000-0000-000000000001/verify")
        bad = client.get("/v1/audit/conversations/not-a-uuid/verify")
    assert unknown.status_code == 404 and unknown.json()["error"] == "conversation_not_found"
    assert bad.status_code in (400, 404) and "error" in bad.json()


def test_the_cli_verifies_everything_and_exits_1_naming_the_broken_conversation(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as client:
        intact = create_conversation(client)
        tampered = create_conversation(client)
        post_message(client, tampered, "hi")
        wait_for_run_end(client, tampered)
    delete_event(settings, tampered, 3)
    env = {**os.environ, "THREADLOG_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["THREADLOG_DATABASE_URL"] = settings.database_url
    everything = subprocess.run(
        [THREADLOG, "audit", "verify", "--all"], env=env, capture_output=True, text=True
    )
    assert everything.returncode == 1, everything.stderr
    assert f"{tampered}" in everything.stdout
    assert "BROKEN at position 3: missing_event" in everything.stdout
    assert intact not in everything.stdout
    assert "2 conversations verified, 1 broken" in everything.stdout
    assert "events/s" in everything.stderr
    one = subprocess.run(
        [THREADLOG, "audit", "verify", intact], env=env, capture_output=True, text=True
    )
    assert one.returncode == 0 and "intact" in one.stdout
