"""Agents: create, read, revise, publish, copy, retire and try them; the marketplace.

Who sees what: your own agents, every published agent (the server's own agents are
published), and, for admins, every agent. Another user's private agent answers 404,
exactly like one that does not exist. Changing an agent is its owner's (or an
admin's): a visible agent that is not yours answers 403.
"""

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol, TypeVar
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from threadlog.domain.agent import (
    MAX_CATEGORY,
    MAX_CONTEXT_BUDGET,
    MAX_DESCRIPTION,
    MAX_SYSTEM_PROMPT,
    TRIAL_METADATA,
    Agent,
    AgentDefinition,
    AgentGone,
    AgentIsRetired,
    AgentNotFound,
    NotAgentOwner,
)
from threadlog.domain.identity_service import Actor
from threadlog.http.auth import ANYONE, USER, identity
from threadlog.http.context import request_id_of
from threadlog.http.conversations import accept_message, cause_of, event_stream, run_frames
from threadlog.http.conversations import result_of as run_result
from threadlog.http.reads import Limit, MinPosition, read_view, reject_unknown_parameters
from threadlog.http.schemas import Content, RunResult
from threadlog.infra.agents.catalog import MODEL_PATTERN, Entry, check_definition
from threadlog.infra.auth import Identity
from threadlog.infra.runtime import Runtime
from threadlog.projections.agent_usage import AgentUsage, usage_counts
from threadlog.projections.views import Sql

T = TypeVar("T")
AgentNameIn = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
ModelIn = Annotated[str, msgspec.Meta(pattern=MODEL_PATTERN)]
# The agent's texts hold no NUL (domain/agent.py): the schema says so.
NO_NUL = r"^[^\x00]*$"
Category = Annotated[str, msgspec.Meta(max_length=MAX_CATEGORY, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION, pattern=NO_NUL)]
SystemPrompt = Annotated[str, msgspec.Meta(max_length=MAX_SYSTEM_PROMPT, pattern=NO_NUL)]
ToolName = Literal["calculator", "current_time", "report_progress"]
PerMillion = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
ContextBudget = Annotated[int, msgspec.Meta(ge=0, le=MAX_CONTEXT_BUDGET)]


class OutputSchemaIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A JSON schema of type object: the run's output is such an object."""

    type: Literal["object"]
    properties: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    required: list[str] = msgspec.field(default_factory=list)
    title: Annotated[str, msgspec.Meta(max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class ModelSettingsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | msgspec.UnsetType = msgspec.UNSET
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | msgspec.UnsetType = msgspec.UNSET
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | msgspec.UnsetType = msgspec.UNSET
    parallel_tool_calls: bool | msgspec.UnsetType = msgspec.UNSET


class PriceIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens."""

    input_per_million: PerMillion
    output_per_million: PerMillion


class CreateAgent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: AgentNameIn
    description: Description = ""
    category: Category = ""
    # Unset: the server's default model (THREADLOG_MODEL).
    model: ModelIn | msgspec.UnsetType = msgspec.UNSET
    system_prompt: SystemPrompt = ""
    tools: list[ToolName] = msgspec.field(default_factory=list)
    # Unset: the agent answers in text.
    output_schema: OutputSchemaIn | msgspec.UnsetType = msgspec.UNSET
    model_settings: ModelSettingsIn | msgspec.UnsetType = msgspec.UNSET
    price: PriceIn | msgspec.UnsetType = msgspec.UNSET
    # Tokens a run's history may take before it is compacted (HistoryCompacted); 0: never.
    # Unset: the server's default (THREADLOG_CONTEXT_BUDGET).
    context_budget: ContextBudget | msgspec.UnsetType = msgspec.UNSET


class ReviseAgent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields to change; the others keep the latest version's value. `null` resets
    `model` (the server's default), `output_schema` (text), `price` (none) and
    `context_budget` (the server's default)."""

    description: Description | msgspec.UnsetType = msgspec.UNSET
    category: Category | msgspec.UnsetType = msgspec.UNSET
    model: ModelIn | msgspec.UnsetType | None = msgspec.UNSET
    system_prompt: SystemPrompt | msgspec.UnsetType = msgspec.UNSET
    tools: list[ToolName] | msgspec.UnsetType = msgspec.UNSET
    output_schema: OutputSchemaIn | msgspec.UnsetType | None = msgspec.UNSET
    model_settings: ModelSettingsIn | msgspec.UnsetType = msgspec.UNSET
    price: PriceIn | msgspec.UnsetType | None = msgspec.UNSET
    context_budget: ContextBudget | msgspec.UnsetType | None = msgspec.UNSET


class TryAgent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    content: Content


class ProvenanceOut(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    version: int


class AgentOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    owner: str
    system: bool
    public: bool
    retired: bool
    version: int
    latest_version: int
    description: str
    category: str
    model: str
    system_prompt: str
    tools: list[str]
    output_type: str
    output_schema: dict[str, Any] | None
    model_settings: dict[str, Any]
    price: dict[str, float] | None
    copied_from: ProvenanceOut | None
    created_at: str
    updated_at: str
    published_at: str | None
    # What `POST /v1/conversations` takes as `agent` for this agent.
    reference: str
    # Tokens a run's history may take before it is compacted (HistoryCompacted); 0: never.
    context_budget: int


class AgentPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AgentOut]
    next: str | None


class AgentVersionOut(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    created_at: str
    description: str
    category: str
    model: str | None
    system_prompt: str
    tools: list[str]
    output_schema: dict[str, Any] | None
    model_settings: dict[str, Any]
    price: dict[str, float] | None
    # The budget in effect (the server's default when the version gives none); 0: never.
    context_budget: int


class AgentVersions(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    items: list[AgentVersionOut]


class MarketplaceItem(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    owner: str
    system: bool
    category: str
    description: str
    version: int
    conversations: int
    published_at: str | None
    reference: str


class MarketplacePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[MarketplaceItem]
    next: str | None


def reference_of(agent_id: UUID, name: str, system: bool) -> str:
    """What a conversation records as its agent: a system agent's name, else the id."""
    return name if system else str(agent_id)


def _definition(data: CreateAgent | ReviseAgent, base: AgentDefinition) -> AgentDefinition:
    """`base` with the fields `data` gives."""
    changes: dict[str, Any] = {}
    for name in ("description", "category", "system_prompt"):
        value = getattr(data, name)
        if value is not msgspec.UNSET:
            changes[name] = value
    for name in ("model", "context_budget"):
        value = getattr(data, name)
        if value is not msgspec.UNSET:
            changes[name] = value
    if data.tools is not msgspec.UNSET:
        changes["tools"] = sorted(set(data.tools))
    for name in ("output_schema", "model_settings", "price"):
        value = getattr(data, name)
        if value is not msgspec.UNSET:
            changes[name] = None if value is None else msgspec.to_builtins(value)
    if changes.get("model_settings") is None and "model_settings" in changes:
        changes["model_settings"] = {}
    definition = AgentDefinition.of({**base.as_data(), **changes})
    check_definition(definition)
    return definition


async def _strict(request: Request[Any, Any, Any], data: T) -> T:
    """`data` once the body is checked as strictly as the schema says: Litestar converts
    leniently (`"1"` for 1, 0 for false); JSON Schema's integers include 5.0."""
    body = msgspec.json.decode(await request.body())
    msgspec.convert(_integral(body), type(data), strict=True)
    return data


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor(
        actor=f"user:{identity(request).user_id}", correlation_id=request_id_of(request) or ""
    )


def _may_see(caller: Identity, owner: str, public: bool) -> bool:
    return public or owner == caller.user_id or caller.has("admin")


def _may_change(caller: Identity, owner: str) -> bool:
    return owner == caller.user_id or caller.has("admin")


async def _visible(
    runtime: Runtime, request: Request[Any, Any, Any], agent_id: UUID, *, live: bool = False
) -> Agent:
    """The agent, when the caller may see it; AgentNotFound (404) otherwise. With `live`,
    a retired agent is AgentGone (410)."""
    agent = await asyncio.to_thread(runtime.catalog.service.get, agent_id)
    if not _may_see(identity(request), agent.owner, agent.public):
        raise AgentNotFound(f"no agent {agent_id}")
    if live and agent.retired:
        raise AgentGone(f"the agent {agent_id} is retired")
    return agent


async def _changeable(
    runtime: Runtime, request: Request[Any, Any, Any], agent_id: UUID, *, live: bool = False
) -> Agent:
    agent = await _visible(runtime, request, agent_id, live=live)
    if not _may_change(identity(request), agent.owner):
        raise NotAgentOwner(f"the agent {agent_id} is not yours to change")
    return agent


class _Change(Protocol):
    def __call__(self, agent_id: UUID, *, by: Actor) -> Agent: ...


async def _change(
    runtime: Runtime, request: Request[Any, Any, Any], agent_id: UUID, change: _Change
) -> AgentOut:
    """Publishes, unpublishes or retires the agent, if the caller may change it."""
    await _changeable(runtime, request, agent_id)
    agent = await asyncio.to_thread(change, agent_id, by=_actor(request))
    return agent_out(runtime, agent)


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def agent_out(runtime: Runtime, agent: Agent, version: int | None = None) -> AgentOut:
    data = agent.version_data(version)
    definition = AgentDefinition.of(data)
    copied = agent.copied_from
    return AgentOut(
        id=str(agent.id),
        name=agent.name,
        owner=agent.owner,
        system=agent.system,
        public=agent.public,
        retired=agent.retired,
        version=int(data["version"]),
        latest_version=agent.latest,
        description=definition.description,
        category=definition.category,
        model=runtime.catalog.model_name(agent.name, definition),
        system_prompt=definition.system_prompt,
        tools=list(definition.tools),
        output_type="text" if definition.output_schema is None else "structured",
        output_schema=definition.output_schema,
        model_settings=definition.model_settings,
        price=definition.price,
        context_budget=runtime.catalog.context_budget(definition),
        copied_from=ProvenanceOut(agent_id=str(copied["agent_id"]), version=int(copied["version"]))
        if copied
        else None,
        created_at=agent.created_on.isoformat(),
        updated_at=agent.modified_on.isoformat(),
        published_at=_iso(agent.published_at),
        reference=reference_of(agent.id, agent.name, agent.system),
    )


def _version_out(runtime: Runtime, data: dict[str, Any]) -> AgentVersionOut:
    definition = AgentDefinition.of(data)
    return AgentVersionOut(
        version=int(data["version"]),
        created_at=data["at"].isoformat(),
        **{
            **definition.as_data(),
            "context_budget": runtime.catalog.context_budget(definition),
        },
    )


def _entry_out(runtime: Runtime, entry: Entry) -> AgentOut:
    definition = entry.definition
    copied = entry.copied_from
    return AgentOut(
        id=str(entry.id),
        name=entry.name,
        owner=entry.owner,
        system=entry.system,
        public=entry.public,
        retired=entry.retired,
        version=entry.version,
        latest_version=entry.version,
        description=definition.description,
        category=definition.category,
        model=runtime.catalog.model_name(entry.name, definition),
        system_prompt=definition.system_prompt,
        tools=list(definition.tools),
        output_type="text" if definition.output_schema is None else "structured",
        output_schema=definition.output_schema,
        model_settings=definition.model_settings,
        price=definition.price,
        context_budget=runtime.catalog.context_budget(definition),
        copied_from=ProvenanceOut(agent_id=str(copied["agent_id"]), version=int(copied["version"]))
        if copied
        else None,
        created_at=entry.created_at.isoformat(),
        updated_at=entry.updated_at.isoformat(),
        published_at=_iso(entry.published_at),
        reference=reference_of(entry.id, entry.name, entry.system),
    )


def _after(cursor: str | None) -> tuple[str, str] | None:
    """A list cursor: `<name>` or `<name>/<id>` of the last agent listed."""
    if cursor is None:
        return None
    name, _, rest = cursor.rpartition("/")
    try:
        return (name, str(UUID(rest))) if name else (cursor, "")
    except ValueError:
        return (cursor, "")


_LIST_PARAMETERS = frozenset({"cursor", "limit", "category", "q", "owner"})
_MARKET_PARAMETERS = frozenset({"cursor", "limit", "category", "q", "sort", "min_position"})


class AgentController(Controller):
    path = "/v1/agents"
    tags = ["agents"]

    @post("/", status_code=201, summary="Create an agent (private, version 1)", guards=USER)
    async def create(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[CreateAgent],
    ) -> AgentOut:
        data = await _strict(request, data)
        definition = _definition(data, AgentDefinition())
        agent = await asyncio.to_thread(
            runtime.catalog.service.create,
            name=data.name,
            owner=identity(request).user_id,
            definition=definition,
            by=_actor(request),
        )
        return agent_out(runtime, agent)

    @get(
        "/",
        summary="Your agents and the published ones (admins: every agent)",
        description=(
            "Ordered by name. Retired agents are left out. Filters: `category` (exact), "
            "`q` (in the name or description, any case), `owner` (a user id, or `system`)."
        ),
        guards=ANYONE,
    )
    async def list(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        cursor: Annotated[
            str | None,
            QueryParameter(description="`next` of a page (`<name>/<id>` of its last agent)"),
        ] = None,
        limit: Limit = None,
        category: Annotated[
            str | None, QueryParameter(max_length=200, description="Only this category")
        ] = None,
        q: Annotated[
            str | None, QueryParameter(max_length=200, description="Text in name or description")
        ] = None,
        owner: Annotated[
            str | None,
            QueryParameter(
                max_length=200, description="Only this owner's (`system`: the server's)"
            ),
        ] = None,
    ) -> AgentPage:
        reject_unknown_parameters(request, _LIST_PARAMETERS)
        caller = identity(request)
        settings = runtime.settings
        page_size = min(limit or settings.page_size, settings.max_page_size)
        after = _after(cursor)
        needle = q.casefold() if q else None
        entries = await asyncio.to_thread(runtime.catalog.entries)
        chosen = sorted(
            (
                entry
                for entry in entries
                if not entry.retired
                and _may_see(caller, entry.owner, entry.public)
                and (category is None or entry.definition.category == category)
                and (owner is None or entry.owner == owner)
                and (
                    needle is None
                    or needle in entry.name.casefold()
                    or needle in entry.definition.description.casefold()
                )
                and (after is None or (entry.name, str(entry.id)) > after)
            ),
            key=lambda entry: (entry.name, str(entry.id)),
        )
        page = chosen[:page_size]
        more = len(chosen) > page_size
        return AgentPage(
            items=[_entry_out(runtime, entry) for entry in page],
            next=f"{page[-1].name}/{page[-1].id}" if more else None,
        )

    @get(
        "/{agent_id:uuid}",
        summary="An agent: its latest version, or `?version=N`",
        guards=ANYONE,
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
        version: Annotated[
            int | None, QueryParameter(ge=1, le=2**31, description="A version of the agent")
        ] = None,
    ) -> AgentOut:
        reject_unknown_parameters(request, frozenset({"version"}))
        agent = await _visible(runtime, request, agent_id, live=True)
        return agent_out(runtime, agent, version)

    @get("/{agent_id:uuid}/versions", summary="Every version of an agent", guards=ANYONE)
    async def versions(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
    ) -> AgentVersions:
        reject_unknown_parameters(request, frozenset())
        agent = await _visible(runtime, request, agent_id, live=True)
        return AgentVersions(
            agent_id=str(agent.id),
            items=[_version_out(runtime, data) for data in agent.versions],
        )

    @patch(
        "/{agent_id:uuid}",
        summary="Revise an agent: a new version, used from the next run on",
        description="An unchanged definition records no new version.",
        guards=USER,
    )
    async def revise(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
        data: JSONBody[ReviseAgent],
    ) -> AgentOut:
        agent = await _changeable(runtime, request, agent_id, live=True)
        definition = _definition(await _strict(request, data), agent.definition())
        revised = await asyncio.to_thread(
            runtime.catalog.service.revise, agent_id, definition, by=_actor(request)
        )
        return agent_out(runtime, revised)

    @post(
        "/{agent_id:uuid}/publish",
        status_code=200,
        summary="Publish an agent: every user sees it, the marketplace lists it",
        guards=USER,
    )
    async def publish(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
    ) -> AgentOut:
        return await _change(runtime, request, agent_id, runtime.catalog.service.publish)

    @post(
        "/{agent_id:uuid}/unpublish",
        status_code=200,
        summary="Make an agent private again (conversations using it keep working)",
        guards=USER,
    )
    async def unpublish(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
    ) -> AgentOut:
        return await _change(runtime, request, agent_id, runtime.catalog.service.unpublish)

    @delete(
        "/{agent_id:uuid}",
        status_code=200,
        summary="Retire an agent: no new conversations; existing ones keep working",
        guards=USER,
    )
    async def retire(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
    ) -> AgentOut:
        return await _change(runtime, request, agent_id, runtime.catalog.service.retire)

    @post(
        "/{agent_id:uuid}/copy",
        status_code=201,
        summary="Copy an agent into your agents (private; `copied_from` says from where)",
        guards=USER,
    )
    async def copy(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
        version: Annotated[
            int | None, QueryParameter(ge=1, le=2**31, description="The version to copy")
        ] = None,
    ) -> AgentOut:
        reject_unknown_parameters(request, frozenset({"version"}))
        source = await _visible(runtime, request, agent_id)
        source.version_data(version)  # 404 for a version it does not have
        copied = await asyncio.to_thread(
            runtime.catalog.service.copy,
            source,
            version=version,
            owner=identity(request).user_id,
            by=_actor(request),
        )
        return agent_out(runtime, copied)

    @post(
        "/{agent_id:uuid}/try",
        status_code=200,
        summary="Try an agent with one message: its reply, awaited or streamed",
        description=(
            "Starts a trial conversation (its owner is you; its `metadata` has "
            "`threadlog.trial: true`; it stays out of your conversation list and of the "
            "marketplace's counts) and posts `content` to it. Answers 200 with the run's "
            "result when it ends (202 with status `running` after "
            "`THREADLOG_RUN_WAIT_SECONDS`), or, with `Accept: text/event-stream`, streams "
            "the run's events. The run's events are stored like any other run's: read "
            "them at `/v1/conversations/{conversation_id}/events`."
        ),
        responses={202: ResponseSpec(data_container=RunResult, description="Still running")},
        guards=USER,
    )
    async def try_agent(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        agent_id: FromPath[UUID],
        data: JSONBody[TryAgent],
    ) -> Response[Any]:
        agent = await _visible(runtime, request, agent_id)
        if agent.retired:
            raise AgentIsRetired(f"the agent {agent_id} is retired")
        cause = cause_of(request)
        runtime.runs.check_available()
        written = await asyncio.to_thread(
            runtime.service.start_conversation,
            owner=identity(request).user_id,
            agent=reference_of(agent.id, agent.name, agent.system),
            title=f"Trial of {agent.name}",
            metadata={TRIAL_METADATA: True},
            cause=cause,
        )
        conversation_id = written.value.id
        posted = await accept_message(
            runtime, conversation_id, content=data.content, client_message_id=None, cause=cause
        )
        if "text/event-stream" in request.headers.get("accept", ""):
            return event_stream(
                run_frames(runtime, conversation_id, posted.value.position - 1, posted.value.run_id)
            )
        return await run_result(runtime, conversation_id, posted.value)


def _market_order(sort: str, counts: dict[str, int]) -> Any:
    if sort == "recent":
        return lambda entry: (-(entry.published_at or entry.created_at).timestamp(), entry.name)
    return lambda entry: (-counts[_ref(entry)], entry.name, str(entry.id))


def _ref(entry: Entry) -> str:
    return reference_of(entry.id, entry.name, entry.system)


@get(
    "/v1/marketplace",
    summary="Published agents with their category, owner and popularity",
    description=(
        "Every published, unretired agent with the number of conversations started with "
        "it (trials not counted; from the `agent_usage` read model). `sort=popular` "
        "(the default: most conversations first) or `recent` (latest published first)."
    ),
    tags=["agents"],
    guards=ANYONE,
)
async def marketplace(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    sort: Annotated[
        Literal["popular", "recent"], QueryParameter(description="The order")
    ] = "popular",
    category: Annotated[
        str | None, QueryParameter(max_length=200, description="Only this category")
    ] = None,
    q: Annotated[
        str | None, QueryParameter(max_length=200, description="Text in name or description")
    ] = None,
    cursor: Annotated[
        str | None,
        QueryParameter(pattern=r"^[0-9]{1,9}$", description="`next` of a page (an offset)"),
    ] = None,
    limit: Limit = None,
    min_position: MinPosition = None,
) -> MarketplacePage:
    reject_unknown_parameters(request, _MARKET_PARAMETERS)
    settings = runtime.settings
    page_size = min(limit or settings.page_size, settings.max_page_size)
    offset = int(cursor) if cursor else 0
    needle = q.casefold() if q else None
    entries = [
        entry
        for entry in await asyncio.to_thread(runtime.catalog.entries)
        if entry.public
        and not entry.retired
        and (category is None or entry.definition.category == category)
        and (
            needle is None
            or needle in entry.name.casefold()
            or needle in entry.definition.description.casefold()
        )
    ]
    references = [_ref(entry) for entry in entries]

    def read(sql: Sql) -> dict[str, int]:
        return usage_counts(sql, references)

    counts = await read_view(runtime, AgentUsage.name, min_position, read)
    ranked: Sequence[Entry] = sorted(entries, key=_market_order(sort, counts))
    page = ranked[offset : offset + page_size]
    more = len(ranked) > offset + page_size
    return MarketplacePage(
        items=[
            MarketplaceItem(
                id=str(entry.id),
                name=entry.name,
                owner=entry.owner,
                system=entry.system,
                category=entry.definition.category,
                description=entry.definition.description,
                version=entry.version,
                conversations=counts[_ref(entry)],
                published_at=_iso(entry.published_at),
                reference=_ref(entry),
            )
            for entry in page
        ],
        next=str(offset + page_size) if more else None,
    )
