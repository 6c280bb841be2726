"""The agents registry: the built-in agents, plus those of `THREADLOG_AGENTS_FILE`.

An agent is a name, a description, a model, a system prompt, built-in tools by name,
an output type (text, or structured output described by a JSON schema), model
settings, an optional price and a context budget in tokens (infra/agents/compaction.py).
A conversation is bound to one agent by name; its runs use that agent's model, prompt,
tools and output type.

The file is TOML, one `[[agents]]` table per agent (see README). An agent of the file
with a built-in agent's name replaces it.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic_ai import Agent, StructuredDict
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RunUsage

from threadlog.infra.agents.demo_model import demo_model
from threadlog.infra.agents.paced_model import PacedSpecError, is_paced, paced_model, parse_paced
from threadlog.infra.agents.tools import BUILTIN_TOOLS, RunDeps
from threadlog.infra.settings import Settings, SettingsError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_SETTING_KEYS = frozenset(ModelSettings.__optional_keys__ | ModelSettings.__required_keys__)
TOOLS_DEMO = "tools-demo"
OutputType = Literal["text", "structured"]


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1_000_000


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent's definition, as the file gives it (`model` unset: THREADLOG_MODEL)."""

    name: str
    description: str = ""
    model: str | None = None
    system_prompt: str = ""
    tools: list[str] = msgspec.field(default_factory=list)
    # A JSON schema of type object: the run's output is such an object. Unset: text.
    output_schema: dict[str, Any] | None = None
    model_settings: dict[str, Any] = msgspec.field(default_factory=dict)
    price: Price | None = None
    # Tokens a run's history may take before it is compacted (HistoryCompacted; 0: never).
    # Unset: THREADLOG_CONTEXT_BUDGET.
    context_budget: int | None = None

    @property
    def output_type(self) -> OutputType:
        return "text" if self.output_schema is None else "structured"


class AgentsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    agents: list[AgentSpec] = msgspec.field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RegisteredAgent:
    spec: AgentSpec
    agent: Agent[RunDeps, Any]
    # What RunStarted records: the agent's model string, or the injected model's name.
    model_name: str
    # The context budget the agent's definition gives (None: THREADLOG_CONTEXT_BUDGET);
    # `spec.context_budget` is the one in effect.
    declared_context_budget: int | None = None

    def cost_usd(self, usage: RunUsage) -> float | None:
        price = self.spec.price
        return price.cost(usage.input_tokens, usage.output_tokens) if price else None


def builtin_specs(settings: Settings) -> list[AgentSpec]:
    tools_demo = AgentSpec(
        name=TOOLS_DEMO,
        description=(
            "Shows the built-in tools: asks for arithmetic go to the calculator, "
            "for the time to current_time, and it reports its progress."
        ),
        model=settings.model,
        system_prompt=(
            "You are a helpful assistant. Use the calculator for arithmetic, current_time "
            "for the date or time, and report_progress while you work."
        ),
        tools=sorted(BUILTIN_TOOLS),
    )
    default = AgentSpec(
        name=settings.agent,
        description="The default agent: a helpful assistant.",
        model=settings.model,
        system_prompt=settings.system_prompt,
    )
    return [tools_demo, default]


def load_specs(path: Path) -> list[AgentSpec]:
    """The agents of a TOML file; any problem is a SettingsError naming the file."""
    where = f"THREADLOG_AGENTS_FILE={str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SettingsError(f"{where}: cannot read it ({error.strerror})") from None
    try:
        agents = msgspec.toml.decode(raw, type=AgentsFile).agents
    except msgspec.DecodeError as error:
        raise SettingsError(f"{where}: {error}") from None
    seen: set[str] = set()
    for spec in agents:
        if spec.name in seen:
            raise SettingsError(f"{where}: the agent {spec.name!r} is defined twice")
        seen.add(spec.name)
        _check(spec, where)
    return agents


def _check(spec: AgentSpec, where: str) -> None:
    agent = f"{where}: agent {spec.name!r}"
    if not NAME.match(spec.name):
        raise SettingsError(
            f"{where}: agent name {spec.name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    unknown_tools = sorted(set(spec.tools) - set(BUILTIN_TOOLS))
    if unknown_tools:
        raise SettingsError(
            f"{agent}: unknown tools {unknown_tools}; the built-in tools are "
            f"{sorted(BUILTIN_TOOLS)}"
        )
    unknown_settings = sorted(set(spec.model_settings) - MODEL_SETTING_KEYS)
    if unknown_settings:
        raise SettingsError(f"{agent}: unknown model_settings {unknown_settings}")
    if spec.output_schema is not None and spec.output_schema.get("type") != "object":
        raise SettingsError(f"{agent}: output_schema must be a JSON schema of type object")
    if (
        spec.price is not None
        and min(spec.price.input_per_million, spec.price.output_per_million) < 0
    ):
        raise SettingsError(f"{agent}: price must not be negative")
    if spec.context_budget is not None and spec.context_budget < 0:
        raise SettingsError(f"{agent}: context_budget must be 0 (never compact) or positive")


class AgentRegistry:
    """Every agent this process can run, by name."""

    def __init__(self, agents: dict[str, RegisteredAgent]) -> None:
        self._agents = agents

    @classmethod
    def build(cls, settings: Settings, model: Model | None = None) -> "AgentRegistry":
        """The built-in agents and the file's; `model` replaces every agent's (tests)."""
        specs = {spec.name: spec for spec in builtin_specs(settings)}
        if settings.agents_file is not None:
            specs.update((spec.name, spec) for spec in load_specs(settings.agents_file))
        return cls({name: register_spec(spec, settings, model) for name, spec in specs.items()})

    def get(self, name: str) -> RegisteredAgent | None:
        return self._agents.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[RegisteredAgent]:
        """In name order."""
        return iter(self._agents[name] for name in sorted(self._agents))

    def model_of(self, name: str) -> str:
        """The model a run of this agent records (empty for an unknown agent)."""
        registered = self._agents.get(name)
        return registered.model_name if registered else ""


def register_spec(spec: AgentSpec, settings: Settings, model: Model | None) -> RegisteredAgent:
    model_string = spec.model or settings.model
    chosen: Model | str = model or _builtin_model(model_string, settings) or model_string
    output_type: Any = str
    if spec.output_schema is not None:
        output_type = StructuredDict(spec.output_schema, name=spec.output_schema.get("title"))
    try:
        agent: Agent[RunDeps, Any] = Agent(
            chosen,
            output_type=output_type,
            instructions=spec.system_prompt or None,
            deps_type=RunDeps,
            name=spec.name,
            model_settings=ModelSettings(**spec.model_settings) if spec.model_settings else None,  # type: ignore[typeddict-item]
            tools=[BUILTIN_TOOLS[tool] for tool in spec.tools],
        )
    except Exception as error:
        # A model string pydantic-ai cannot resolve, a provider without its key …
        raise SettingsError(f"agent {spec.name!r} (model {model_string!r}): {error}") from None
    budget = settings.context_budget if spec.context_budget is None else spec.context_budget
    resolved = msgspec.structs.replace(spec, model=model_string, context_budget=budget)
    return RegisteredAgent(
        spec=resolved,
        agent=agent,
        model_name=model_string if model is None else model.model_name,
        declared_context_budget=spec.context_budget,
    )


def _builtin_model(model_string: str, settings: Settings) -> Model | None:
    """The offline models threadlog ships: `demo`, and `paced:R:T` (benchmarks)."""
    if model_string == "demo":
        return demo_model(settings.demo_token_delay_ms / 1000)
    if is_paced(model_string):
        try:
            return paced_model(*parse_paced(model_string))
        except PacedSpecError as error:
            raise SettingsError(str(error)) from None
    return None
