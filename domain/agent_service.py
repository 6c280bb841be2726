"""The agents application service: create, revise, publish, unpublish, retire, copy.

Agents live in a store of their own (like users and keys): `agents_events` on
PostgreSQL, `agents.sqlite` on SQLite. Who may change which agent is the caller's
to decide (http/); this service records what was decided.
"""

from collections.abc import Callable
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from threadlog.domain.agent import (
    SYSTEM_OWNER,
    Agent,
    AgentDefinition,
    AgentNotFound,
    system_agent_id,
)
from threadlog.domain.identity_service import Actor

SAVE_ATTEMPTS = 5


class AgentService(Application[UUID]):
    name = "agents"

    def create(
        self,
        *,
        name: str,
        owner: str,
        definition: AgentDefinition,
        by: Actor,
        copied_from: dict[str, object] | None = None,
    ) -> Agent:
        agent = Agent.create(
            name=name,
            owner=owner,
            definition=definition,
            actor=by.actor,
            correlation_id=by.correlation_id,
            copied_from=copied_from,
        )
        self.save(agent)
        return agent

    def get(self, agent_id: UUID) -> Agent:
        try:
            agent: Agent = self.repository.get(agent_id)
        except AggregateNotFoundError:
            raise AgentNotFound(f"no agent {agent_id}") from None
        return agent

    def revise(self, agent_id: UUID, definition: AgentDefinition, *, by: Actor) -> Agent:
        return self._change(
            agent_id,
            lambda agent: agent.revise(
                definition, actor=by.actor, correlation_id=by.correlation_id
            ),
        )

    def publish(self, agent_id: UUID, *, by: Actor) -> Agent:
        return self._change(
            agent_id, lambda agent: agent.publish(actor=by.actor, correlation_id=by.correlation_id)
        )

    def unpublish(self, agent_id: UUID, *, by: Actor) -> Agent:
        return self._change(
            agent_id,
            lambda agent: agent.unpublish(actor=by.actor, correlation_id=by.correlation_id),
        )

    def retire(self, agent_id: UUID, *, by: Actor) -> Agent:
        return self._change(
            agent_id, lambda agent: agent.retire(actor=by.actor, correlation_id=by.correlation_id)
        )

    def copy(self, source: Agent, *, version: int | None, owner: str, by: Actor) -> Agent:
        """A private fork of `source` (its version `version`, default the latest) owned by
        `owner`; it remembers where it came from."""
        data = source.version_data(version)
        return self.create(
            name=source.name,
            owner=owner,
            definition=AgentDefinition.of(data),
            by=by,
            copied_from={"agent_id": str(source.id), "version": int(data["version"])},
        )

    def record_system(self, name: str, definition: AgentDefinition, *, by: Actor) -> Agent:
        """Records a server-defined agent, published: created the first time, a new
        version when its definition changed, nothing at all when it did not."""
        agent_id = system_agent_id(name)
        for attempt in range(SAVE_ATTEMPTS):
            try:
                agent = self.get(agent_id)
            except AgentNotFound:
                agent = Agent.create(
                    name=name,
                    owner=SYSTEM_OWNER,
                    definition=definition,
                    actor=by.actor,
                    correlation_id=by.correlation_id,
                    agent_id=agent_id,
                )
            else:
                agent.revise(definition, actor=by.actor, correlation_id=by.correlation_id)
            if agent.retired:
                return agent
            agent.publish(actor=by.actor, correlation_id=by.correlation_id)
            if not agent.pending_events:
                return agent
            try:
                self.save(agent)
            except IntegrityError:  # another process recorded it first
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                continue
            return agent
        raise AssertionError("unreachable")

    def _change(self, agent_id: UUID, change: Callable[[Agent], object]) -> Agent:
        for attempt in range(SAVE_ATTEMPTS):
            agent = self.get(agent_id)
            change(agent)
            if not agent.pending_events:
                return agent
            try:
                self.save(agent)
            except IntegrityError:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                continue
            return agent
        raise AssertionError("unreachable")
