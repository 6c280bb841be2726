"""An agent version's context budget in the agents store (SQLite): recorded with the
version, read back from events written before it existed, and recorded for the
server's own agents as their file gives it (unset: the server's default, which can
change without a new version)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from threadlog.domain.agent import (
    AgentDefinition,
    InvalidAgent,
    check_definition,
    system_agent_id,
)
from threadlog.domain.identity_service import Actor
from threadlog.infra.agents.catalog import AgentCatalog
from threadlog.infra.agents.registry import AgentRegistry
from threadlog.infra.runtime import open_agents
from threadlog.infra.settings import Settings

BY = Actor(actor="user:alice", correlation_id="req-1")
AGENTS_FILE = '[[agents]]\nname = "brief"\ncontext_budget = 300\n[[agents]]\nname = "plain"\n'


def catalog_for(settings: Settings) -> AgentCatalog:
    return AgentCatalog(open_agents(settings), AgentRegistry.build(settings), settings)


def test_a_version_records_its_budget_and_an_older_event_reads_as_the_servers(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, context_budget=5000)
    service = open_agents(settings)
    agent = service.create(
        name="helper", owner="alice", definition=AgentDefinition(context_budget=200), by=BY
    )
    service.revise(agent.id, AgentDefinition(context_budget=0), by=BY)
    service.close()
    # The first version as it was stored before AgentRevised had a context budget.
    with sqlite3.connect(settings.agents_sqlite_path) as db:
        rows = db.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE '%AgentRevised'"
            " ORDER BY originator_version"
        ).fetchall()
        rowid, state = rows[0]
        old = json.loads(state)
        assert old.pop("class_version") == 2 and old.pop("context_budget") == 200
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (json.dumps(old, separators=(",", ":")).encode(), rowid),
        )
    catalog = AgentCatalog(open_agents(settings), AgentRegistry.build(settings), settings)
    read = catalog.service.get(agent.id)
    assert [read.definition(v).context_budget for v in (1, 2)] == [None, 0]
    assert [catalog.context_budget(read.definition(v)) for v in (1, 2)] == [5000, 0]
    runnable = catalog.runnable("helper", str(agent.id), 1)
    assert runnable is not None and runnable.spec.context_budget == 5000
    pinned = catalog.runnable("helper", str(agent.id), 2)
    assert pinned is not None and pinned.spec.context_budget == 0
    entry = catalog.entry(agent.id)
    assert entry is not None and entry.definition.context_budget == 0
    catalog.service.close()


@pytest.mark.parametrize("budget", [-1, True, 1.5, 10**12])
def test_a_bad_budget_is_invalid_and_names_the_field(budget: object) -> None:
    with pytest.raises(InvalidAgent) as raised:
        check_definition(AgentDefinition(context_budget=budget))  # type: ignore[arg-type]
    assert raised.value.field == "context_budget"


def test_the_servers_agents_keep_their_files_budget_and_rerecording_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS_FILE)
    settings = Settings(data_dir=tmp_path, agents_file=path, context_budget=5000)
    catalog = catalog_for(settings)
    catalog.record_system_agents()
    brief = catalog.service.get(system_agent_id("brief"))
    plain = catalog.service.get(system_agent_id("plain"))
    assert (brief.latest, brief.definition().context_budget) == (1, 300)
    assert (plain.latest, plain.definition().context_budget) == (1, None)
    position = catalog.service.recorder.max_notification_id()
    catalog.service.close()
    # The same file under another default budget: no new version; the default follows.
    moved = Settings(data_dir=tmp_path, agents_file=path, context_budget=7000)
    again = catalog_for(moved)
    again.record_system_agents()
    assert again.service.recorder.max_notification_id() == position
    plain = again.service.get(system_agent_id("plain"))
    assert again.context_budget(plain.definition()) == 7000
    runnable = again.runnable("brief", str(system_agent_id("brief")), 1)
    assert runnable is not None and runnable.spec.context_budget == 300
    again.service.close()
