"""The agents this server runs: `GET /v1/agents`."""

from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from threadlog.http.auth import ANYONE
from threadlog.http.reads import Limit, reject_unknown_parameters
from threadlog.infra.agents.registry import RegisteredAgent
from threadlog.infra.runtime import Runtime


class PriceOut(msgspec.Struct, frozen=True, kw_only=True):
    input_per_million: float
    output_per_million: float


class AgentOut(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    model: str
    tools: list[str]
    output_type: str
    output_schema: dict[str, Any] | None
    model_settings: dict[str, Any]
    price: PriceOut | None
    # Tokens a run's history may take before it is compacted (HistoryCompacted); 0: never.
    context_budget: int


class AgentPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AgentOut]
    next: str | None


def agent_out(registered: RegisteredAgent) -> AgentOut:
    spec = registered.spec
    price = spec.price
    return AgentOut(
        name=spec.name,
        description=spec.description,
        model=registered.model_name,
        tools=list(spec.tools),
        output_type=spec.output_type,
        output_schema=spec.output_schema,
        model_settings=spec.model_settings,
        price=PriceOut(
            input_per_million=price.input_per_million,
            output_per_million=price.output_per_million,
        )
        if price
        else None,
        context_budget=spec.context_budget or 0,
    )


_PARAMETERS = frozenset({"cursor", "limit"})


@get(
    "/v1/agents",
    summary="The agents a conversation can be bound to, by name",
    tags=["agents"],
    guards=ANYONE,
)
async def list_agents(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    cursor: Annotated[
        str | None, QueryParameter(description="`next` of a page (the last name it listed)")
    ] = None,
    limit: Limit = None,
) -> AgentPage:
    reject_unknown_parameters(request, _PARAMETERS)
    settings = runtime.settings
    page_size = min(limit or settings.page_size, settings.max_page_size)
    after = [agent for agent in runtime.agents if cursor is None or agent.spec.name > cursor]
    page = after[:page_size]
    more = len(after) > page_size
    return AgentPage(
        items=[agent_out(agent) for agent in page], next=page[-1].spec.name if more else None
    )
