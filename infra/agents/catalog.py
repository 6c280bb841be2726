"""The agents a server can run: every version in the agents store, and an index of them.

- Recording: on start, the built-in agents and those of `THREADLOG_AGENTS_FILE` are
  recorded as system-owned agents (`AgentService.record_system`: an unchanged
  definition writes nothing).
- Checking: what an agent may name (built-in tools, a model of a known provider, an
  output schema of type object, pydantic-ai's model settings, a price ≥ 0).
- Running: a run's pinned agent id and version become a pydantic-ai agent, built once
  per process and version.
- Listing: an in-memory index of every agent (owner, name, category, visibility, latest
  version), built from the agents store's notification log and brought up to date
  from it before each read, so every process sees what any process recorded.
"""

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from pydantic_ai.models import Model

from threadlog.domain.agent import (
    SYSTEM_OWNER,
    Agent,
    AgentCreated,
    AgentDefinition,
    AgentNotFound,
    AgentPublished,
    AgentRetired,
    AgentRevised,
    AgentUnpublished,
    InvalidAgent,
    system_agent_id,
)
from threadlog.domain.agent_service import AgentService
from threadlog.domain.conversation import Pin
from threadlog.domain.identity_service import Actor
from threadlog.infra.agents.registry import (
    MODEL_SETTING_KEYS,
    NAME,
    AgentRegistry,
    AgentSpec,
    Price,
    RegisteredAgent,
    register_spec,
)
from threadlog.infra.agents.tools import BUILTIN_TOOLS
from threadlog.infra.settings import Settings, SettingsError

PROVIDERS = (
    "anthropic",
    "bedrock",
    "cerebras",
    "cohere",
    "deepseek",
    "google",
    "google-gla",
    "google-vertex",
    "grok",
    "groq",
    "heroku",
    "huggingface",
    "mistral",
    "moonshotai",
    "openai",
    "openai-chat",
    "openai-responses",
    "openrouter",
    "xai",
)
MODEL_PATTERN = (
    "^(demo|test|("
    + "|".join(re.escape(p) for p in PROVIDERS)
    + "):[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127})$"
)
"""A model an agent created through the API may name: the offline `demo`, pydantic-ai's
`test`, or `<provider>:<model>` of a provider pydantic-ai knows."""
_MODEL = re.compile(MODEL_PATTERN)
_REFRESH_BATCH = 500
_SYSTEM = Actor(actor="system", correlation_id="startup")


class AgentUnrunnable(RuntimeError):
    """An agent version whose model cannot be set up (a provider without its key …)."""


def check_definition(definition: AgentDefinition, *, file_models: bool = False) -> None:
    """Raises InvalidAgent naming the field a server could not run.

    `file_models`: a model of the agents file may be any string pydantic-ai or threadlog
    resolves (`paced:R:T` …); through the API it must match MODEL_PATTERN."""
    unknown_tools = sorted(set(definition.tools) - set(BUILTIN_TOOLS))
    if unknown_tools:
        raise InvalidAgent(
            f"unknown tools {unknown_tools}; the built-in tools are {sorted(BUILTIN_TOOLS)}",
            field="tools",
        )
    if definition.model is not None and not file_models and not _MODEL.match(definition.model):
        raise InvalidAgent(
            f"unknown model {definition.model!r}: give `demo`, `test` or `<provider>:<model>` "
            f"with a provider of {', '.join(PROVIDERS)}",
            field="model",
        )
    unknown_settings = sorted(set(definition.model_settings) - MODEL_SETTING_KEYS)
    if unknown_settings:
        raise InvalidAgent(f"unknown model_settings {unknown_settings}", field="model_settings")
    schema = definition.output_schema
    if schema is not None:
        _check_output_schema(schema)
    price = definition.price
    if price is not None and min(price.values(), default=0) < 0:
        raise InvalidAgent("price must not be negative", field="price")


def _check_output_schema(schema: dict[str, Any]) -> None:
    if schema.get("type") != "object":
        raise InvalidAgent(
            "output_schema must be a JSON schema of type object", field="output_schema"
        )
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(value, dict) for value in properties.values()
    ):
        raise InvalidAgent(
            "output_schema.properties must map names to schemas", field="output_schema"
        )
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise InvalidAgent(
            "output_schema.required must be a list of property names", field="output_schema"
        )


def definition_of(spec: AgentSpec) -> AgentDefinition:
    price = spec.price
    return AgentDefinition(
        description=spec.description,
        model=spec.model,
        system_prompt=spec.system_prompt,
        tools=list(spec.tools),
        output_schema=spec.output_schema,
        model_settings=dict(spec.model_settings),
        price=msgspec.structs.asdict(price) if price is not None else None,
        context_budget=spec.context_budget,
    )


def spec_of(name: str, definition: AgentDefinition) -> AgentSpec:
    price = definition.price
    return AgentSpec(
        name=name,
        description=definition.description,
        model=definition.model,
        system_prompt=definition.system_prompt,
        tools=list(definition.tools),
        output_schema=definition.output_schema,
        model_settings=dict(definition.model_settings),
        price=Price(**price) if price is not None else None,
        context_budget=definition.context_budget,
    )


@dataclass(kw_only=True)
class Entry:
    """What the index knows of one agent."""

    id: UUID
    name: str
    owner: str
    copied_from: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    version: int = 0
    definition: AgentDefinition = field(default_factory=AgentDefinition)
    public: bool = False
    retired: bool = False
    published_at: datetime | None = None

    @property
    def system(self) -> bool:
        return self.owner == SYSTEM_OWNER


@dataclass
class _Index:
    position: int = 0
    entries: dict[UUID, Entry] = field(default_factory=dict)


class AgentCatalog:
    def __init__(
        self,
        service: AgentService,
        registry: AgentRegistry,
        settings: Settings,
        model: Model | None = None,
    ) -> None:
        self.service = service
        self.registry = registry
        self._settings = settings
        self._model = model
        self._built: dict[tuple[UUID, int], RegisteredAgent] = {}
        self._index = _Index()
        self._lock = threading.Lock()

    # --- recording ------------------------------------------------------------------

    def record_system_agents(self) -> None:
        """Records every agent the registry defines (built in and the file's)."""
        for registered in self.registry:
            # What the file says of the budget (unset: the server's), not the one in effect.
            spec = msgspec.structs.replace(
                registered.spec, context_budget=registered.declared_context_budget
            )
            self.service.record_system(spec.name, definition_of(spec), by=_SYSTEM)

    # --- resolving and running --------------------------------------------------------

    def find(self, reference: str) -> Agent | None:
        """The agent a conversation names: a system agent's name, or an agent's id."""
        try:
            agent_id = UUID(reference)
        except ValueError:
            if reference not in self.registry:
                return None
            agent_id = system_agent_id(reference)
        try:
            return self.service.get(agent_id)
        except AgentNotFound:
            return None

    def pin_of(self, reference: str) -> Pin:
        """What a new run of the conversation's agent records: its latest version."""
        agent = self.find(reference)
        if agent is None:
            return Pin(self.registry.model_of(reference))
        return Pin(self.model_name(agent.name, agent.definition()), str(agent.id), agent.latest)

    def model_name(self, name: str, definition: AgentDefinition) -> str:
        if self._model is not None:
            return self._model.model_name
        if definition.model is None:
            return self.registry.model_of(name) or self._settings.model
        return definition.model

    def context_budget(self, definition: AgentDefinition) -> int:
        """The budget in effect for `definition` (0: never compacted)."""
        budget = definition.context_budget
        return self._settings.context_budget if budget is None else budget

    def runnable(self, reference: str, agent_id: str, version: int) -> RegisteredAgent | None:
        """The pydantic-ai agent of a run: its pinned version, else (runs recorded before
        agents were versioned) the registry's agent of that name."""
        if not agent_id:
            return self.registry.get(reference)
        key = (UUID(agent_id), version)
        built = self._built.get(key)
        if built is not None:
            return built
        agent = self.service.get(key[0])
        definition = agent.definition(version)
        try:
            built = register_spec(spec_of(agent.name, definition), self._settings, self._model)
        except SettingsError as error:
            raise AgentUnrunnable(str(error)) from None
        self._built[key] = built
        return built

    # --- the index --------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every agent, brought up to date with the store first (blocking)."""
        with self._lock:
            self._follow()
            return list(self._index.entries.values())

    def entry(self, agent_id: UUID) -> Entry | None:
        with self._lock:
            self._follow()
            return self._index.entries.get(agent_id)

    def _follow(self) -> None:
        recorder = self.service.recorder
        mapper = self.service.mapper
        while True:
            notifications = recorder.select_notifications(self._index.position + 1, _REFRESH_BATCH)
            for notification in notifications:
                self._apply(mapper.to_domain_event(notification))
                self._index.position = notification.id
            if len(notifications) < _REFRESH_BATCH:
                return

    def _apply(self, event: Any) -> None:
        entries = self._index.entries
        if isinstance(event, AgentCreated):
            entries[event.originator_id] = Entry(
                id=event.originator_id,
                name=event.name,
                owner=event.owner,
                copied_from=event.copied_from,
                created_at=event.timestamp,
                updated_at=event.timestamp,
            )
            return
        entry = entries.get(event.originator_id)
        if entry is None:
            return
        entry.updated_at = event.timestamp
        if isinstance(event, AgentRevised):
            entry.version = event.version
            entry.definition = event.definition()
        elif isinstance(event, AgentPublished):
            entry.public = True
            entry.published_at = event.timestamp
        elif isinstance(event, AgentUnpublished):
            entry.public = False
        elif isinstance(event, AgentRetired):
            entry.retired = True


def names(entries: Iterable[Entry]) -> Iterator[str]:
    return (entry.name for entry in entries)


def valid_name(name: str) -> bool:
    return bool(NAME.match(name))
