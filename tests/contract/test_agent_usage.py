"""The marketplace's popularity: conversations per agent (the `agent_usage` read model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.agent import TRIAL_METADATA
from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.projections.agent_usage import AgentUsage, usage_counts
from threadlog.projections.read_models import ReadModels

USER = Cause(actor="user:alice", correlation_id="req-1")


@pytest.fixture(params=BACKENDS)
def models(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadModels]:
    settings = Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    service = open_service(settings)
    read_models = ReadModels.open(
        service, store_environment(settings), settings.read_models_dir, names=(AgentUsage.name,)
    )
    yield read_models
    read_models.close()
    service.close()


def start(service: ConversationService, agent: str, *, trial: bool = False) -> None:
    metadata = {TRIAL_METADATA: True} if trial else {}
    service.start_conversation(owner="alice", agent=agent, title="t", metadata=metadata, cause=USER)


def counts(models: ReadModels) -> dict[str, int]:
    with models.view(AgentUsage.name).read() as sql:
        return usage_counts(sql, ["popular", "rare", "unused", "tried"])


def test_conversations_are_counted_per_agent_trials_not_and_a_rebuild_counts_the_same(
    models: ReadModels,
) -> None:
    service = models.service
    for agent in ("popular", "popular", "rare", "popular"):
        start(service, agent)
    start(service, "tried", trial=True)
    runner = models.runners[AgentUsage.name]
    runner.catch_up()
    live = counts(models)

    assert runner.rebuild() == service.recorder.max_notification_id()

    assert live == {"popular": 3, "rare": 1, "unused": 0, "tried": 0}
    assert counts(models) == live
