"""The Agent aggregate: an agent's owner, its visibility and every version of it.

An agent's definition (description, category, model, system prompt, tools, output
schema, model settings, price, context budget) is versioned: `AgentRevised` records version N, and
every version is kept, so a run can say exactly which one answered it (RunStarted
records the agent's id and version). Publishing makes an agent visible to every user;
retiring it closes it to new conversations (existing ones keep working).

The agents a server defines itself (built in, or in `THREADLOG_AGENTS_FILE`) are
system-owned: their id is derived from their name, so recording them on every start
is idempotent.
"""

from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

from threadlog.domain.errors import DomainError

SYSTEM_OWNER = "system"
TRIAL_METADATA = "threadlog.trial"
"""The metadata key (true) of a trial conversation (`POST /v1/agents/{id}/try`): stored
like any other, left out of the conversation list and of the agents' popularity."""
_SYSTEM_AGENTS = UUID("3d6f1c2a-9b8e-4f7d-a1c3-5e2b7d9f0a14")
MAX_NAME = 64
MAX_CATEGORY = 64
MAX_DESCRIPTION = 2_000
MAX_SYSTEM_PROMPT = 100_000
MAX_CONTEXT_BUDGET = 100_000_000


class AgentNotFound(DomainError):
    code = "agent_not_found"


class InvalidAgent(DomainError):
    """A definition the server cannot run; `field` names the part that is wrong."""

    code = "invalid_agent"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AgentIsRetired(DomainError):
    code = "agent_retired"


class AgentGone(DomainError):
    """A retired agent read or changed: it is gone for clients (its events stay)."""

    code = "agent_retired"


class NotAgentOwner(DomainError):
    code = "forbidden"


def system_agent_id(name: str) -> UUID:
    return uuid5(_SYSTEM_AGENTS, name)


@dataclass(frozen=True, kw_only=True)
class AgentDefinition:
    """What one version of an agent says (`model` None: the server's default model;
    `context_budget`, the tokens a run's history may take before it is compacted:
    None, the server's default, THREADLOG_CONTEXT_BUDGET; 0, never compacted)."""

    description: str = ""
    category: str = ""
    model: str | None = None
    system_prompt: str = ""
    tools: list[str] = field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    model_settings: dict[str, Any] = field(default_factory=dict)
    price: dict[str, float] | None = None
    context_budget: int | None = None

    def as_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any]) -> "AgentDefinition":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _text(name: str, value: str, limit: int) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAgent(f"{name} is not valid Unicode text", field=name) from None
    if "\x00" in value:
        raise InvalidAgent(f"{name} must not hold NUL characters", field=name)
    if len(value) > limit:
        raise InvalidAgent(f"{name} is longer than {limit} characters", field=name)


def check_definition(definition: AgentDefinition) -> AgentDefinition:
    """Checks what the domain knows of a definition: its texts. The tools, models and
    schemas a server can run are the adapters' to check."""
    _text("description", definition.description, MAX_DESCRIPTION)
    _text("category", definition.category, MAX_CATEGORY)
    _text("system_prompt", definition.system_prompt, MAX_SYSTEM_PROMPT)
    budget = definition.context_budget
    if budget is not None and (
        isinstance(budget, bool)
        or not isinstance(budget, int)
        or not 0 <= budget <= MAX_CONTEXT_BUDGET
    ):
        raise InvalidAgent(
            f"context_budget must be an integer from 0 (never compact) to {MAX_CONTEXT_BUDGET}",
            field="context_budget",
        )
    return definition


class AgentEvent(Aggregate.Event):
    """Who changed an agent, and in which request."""

    actor: str
    correlation_id: str

    def apply(self, aggregate: Any) -> None:
        self.evolve(aggregate)

    def evolve(self, aggregate: Any) -> None:
        """Changes the aggregate's state."""


class AgentCreated(AgentEvent, Aggregate.Created):
    name: str
    owner: str
    # The agent and version this one was copied from: {"agent_id", "version"}.
    copied_from: dict[str, Any] | None


class AgentRevised(AgentEvent):
    """Version `version` of the agent (1 for its first).

    Schema version 2 added `context_budget`; a version 1 event reads as None (the
    server's default budget)."""

    class_version = 2

    version: int
    description: str
    category: str
    model: str | None
    system_prompt: str
    tools: list[str]
    output_schema: dict[str, Any] | None
    model_settings: dict[str, Any]
    price: dict[str, float] | None
    context_budget: int | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["context_budget"] = None

    def definition(self) -> AgentDefinition:
        return AgentDefinition(
            description=self.description,
            category=self.category,
            model=self.model,
            system_prompt=self.system_prompt,
            tools=list(self.tools),
            output_schema=self.output_schema,
            model_settings=dict(self.model_settings),
            price=self.price,
            context_budget=self.context_budget,
        )

    def evolve(self, aggregate: Any) -> None:
        aggregate.versions.append(
            {**self.definition().as_data(), "version": self.version, "at": self.timestamp}
        )


class AgentPublished(AgentEvent):
    def evolve(self, aggregate: Any) -> None:
        aggregate.public = True
        aggregate.published_at = self.timestamp


class AgentUnpublished(AgentEvent):
    def evolve(self, aggregate: Any) -> None:
        aggregate.public = False


class AgentRetired(AgentEvent):
    def evolve(self, aggregate: Any) -> None:
        aggregate.retired = True


class Agent(Aggregate):
    def __init__(self, name: str, owner: str, copied_from: dict[str, Any] | None) -> None:
        self.name = name
        self.owner = owner
        self.copied_from = copied_from
        self.public = False
        self.retired = False
        self.published_at: Any = None
        # Every version, oldest first: the definition's fields plus "version" and "at".
        self.versions: list[dict[str, Any]] = []

    @classmethod
    def create(
        cls,
        *,
        name: str,
        owner: str,
        definition: AgentDefinition,
        actor: str,
        correlation_id: str,
        copied_from: dict[str, Any] | None = None,
        agent_id: UUID | None = None,
    ) -> "Agent":
        _text("name", name, MAX_NAME)
        agent: Agent = cls._create(
            AgentCreated,
            id=agent_id or uuid4(),
            name=name,
            owner=owner,
            copied_from=copied_from,
            actor=actor,
            correlation_id=correlation_id,
        )
        agent.revise(definition, actor=actor, correlation_id=correlation_id)
        return agent

    @property
    def system(self) -> bool:
        return self.owner == SYSTEM_OWNER

    @property
    def latest(self) -> int:
        return len(self.versions)

    def definition(self, version: int | None = None) -> AgentDefinition:
        return AgentDefinition.of(self.version_data(version))

    def version_data(self, version: int | None = None) -> dict[str, Any]:
        """Version `version` (default: the latest); AgentNotFound when there is none."""
        number = self.latest if version is None else version
        if not 1 <= number <= self.latest:
            raise AgentNotFound(f"agent {self.id} has no version {number}")
        return self.versions[number - 1]

    def revise(self, definition: AgentDefinition, *, actor: str, correlation_id: str) -> bool:
        """Records a new version unless `definition` is the latest one; True if it did."""
        check_definition(definition)
        if self.versions and self.definition() == definition:
            return False
        self.trigger_event(
            AgentRevised,
            version=self.latest + 1,
            actor=actor,
            correlation_id=correlation_id,
            **definition.as_data(),
        )
        return True

    def publish(self, *, actor: str, correlation_id: str) -> None:
        self._require_active()
        if not self.public:
            self.trigger_event(AgentPublished, actor=actor, correlation_id=correlation_id)

    def unpublish(self, *, actor: str, correlation_id: str) -> None:
        if self.public:
            self.trigger_event(AgentUnpublished, actor=actor, correlation_id=correlation_id)

    def retire(self, *, actor: str, correlation_id: str) -> None:
        if not self.retired:
            self.trigger_event(AgentRetired, actor=actor, correlation_id=correlation_id)

    def _require_active(self) -> None:
        if self.retired:
            raise AgentIsRetired(f"the agent {self.id} is retired")
