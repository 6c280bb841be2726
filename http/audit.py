"""The auditors' routes: the global audit log, and re-verifying a conversation's chain.

Auditors read the global log and verify any conversation; an owner may verify their
own (and read their own conversation's events at `/v1/conversations/{id}/events`).
"""

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from threadlog.domain.errors import ConversationNotFound
from threadlog.http.access import owned_conversation
from threadlog.http.auth import AUDITOR, identity, requires
from threadlog.http.conversations import MAX_POSITION
from threadlog.http.errors import BadRequest, error_response
from threadlog.http.params import DATE_TIME_SCHEMA, parse_instant
from threadlog.http.reads import reject_unknown_parameters
from threadlog.http.schemas import EventPage
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.audit import ChainAuditor, Verification
from threadlog.infra.store.auditlog import (
    AuditLog,
    AuditQuery,
    UnreadableEvent,
    event_types,
    topics_for,
)
from threadlog.infra.store.envelope import encode_envelope

log = structlog.get_logger(__name__)

NDJSON = "application/x-ndjson"
_LOG_PARAMETERS = frozenset(
    {"after", "limit", "conversation_id", "user", "agent", "type", "from", "to"}
)


def _type_list_pattern() -> str:
    names = "|".join(sorted(event_types()))
    return rf"^(?:{names})(?:,(?:{names}))*$"


TYPE_LIST = re.compile(_type_list_pattern())
TYPE_LIST_SCHEMA: dict[str, Any] = {
    "items": Schema(type=OpenAPIType.STRING, pattern=TYPE_LIST.pattern)
}
"""Event type names, each value one or several separated by commas (no spaces)."""


def parse_types(name: str, values: Iterable[str] | None) -> tuple[str, ...]:
    """Event type names, repeated and/or comma-separated, each one known."""
    for value in values or ():
        if not TYPE_LIST.fullmatch(value):
            raise BadRequest(
                f"{name}: {value!r} is not event type names separated by commas; known: "
                f"{', '.join(sorted(event_types()))}",
                extra={"field": name},
            )
    return topics_for([part for value in values or () for part in value.split(",")])


def audit_query(
    conversation_id: UUID | None,
    user: str | None,
    agent: str | None,
    types: list[str] | None,
    since: str | None,
    until: str | None,
) -> AuditQuery:
    # A `from` after `to` is an empty window (JSON Schema cannot say "from <= to").
    return AuditQuery(
        conversation_id=conversation_id,
        owner=user,
        agent=agent,
        topics=parse_types("type", types),
        since=parse_instant("from", since) if since is not None else None,
        until=parse_instant("to", until) if until is not None else None,
    )


async def _ndjson(
    audit_log: AuditLog, query: AuditQuery, after: int, stop: int
) -> AsyncIterator[bytes]:
    """One event per line; pages are read in a thread, one at a time, as the client reads."""
    pages = audit_log.export(query, after=after, stop=stop)
    done = object()
    last = after
    try:
        while (items := await asyncio.to_thread(next, pages, done)) is not done:
            assert isinstance(items, list)
            yield b"".join(encode_envelope(item) + b"\n" for item in items)
            last = items[-1].global_position
    except UnreadableEvent as error:
        log.warning("audit.unreadable_event", error=str(error))
        yield msgspec.json.encode({"error": "unreadable_event", "message": str(error)}) + b"\n"
    except Exception as error:
        # The status line is sent: end with a line that says why and where to resume.
        log.warning("audit.export_interrupted", error=repr(error))
        message = f"the export was interrupted; resume with after={last}"
        yield msgspec.json.encode({"error": "unavailable", "message": message}) + b"\n"


class BrokenLinkOut(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    problem: str
    detail: str


class VerificationOut(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    intact: bool
    events: int
    last_position: int
    first_broken: BrokenLinkOut | None


def verification_out(verification: Verification) -> VerificationOut:
    broken = verification.broken
    return VerificationOut(
        conversation_id=str(verification.conversation_id),
        intact=verification.intact,
        events=verification.events,
        last_position=verification.last_position,
        first_broken=(
            BrokenLinkOut(position=broken.position, problem=broken.problem, detail=broken.detail)
            if broken
            else None
        ),
    )


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]

    @get(
        "/conversations/{conversation_id:uuid}/verify",
        summary="Recompute a conversation's hash chain",
        description=(
            "Reads the conversation's stored records as written and recomputes each "
            "event's SHA-256 and its link to the one before (docs/audit.md). "
            "`intact` is false when an event was edited, deleted, replaced or no longer "
            "decodes; `first_broken` locates the first problem."
        ),
        guards=[requires("auditor", "user")],
    )
    async def verify(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
    ) -> VerificationOut:
        if not identity(request).has("auditor"):
            await owned_conversation(runtime, request, conversation_id)
        auditor = ChainAuditor(runtime.service)
        verification = await asyncio.to_thread(auditor.verify, conversation_id)
        if verification is None:
            raise ConversationNotFound(conversation_id)
        return verification_out(verification)

    @get(
        "/events",
        summary="The global audit log: every event as written, in global order",
        description=(
            "Every conversation's events ordered by `global_position` (the cursor: pass a "
            "page's `next` as `after`), served as written (stored schema version and data) "
            "so each re-hashes to its `hash` (docs/audit.md). Filters: `conversation_id`, "
            "`user` (the owner's user id), `agent`, `type` (repeat it or separate with "
            "commas), `from` (inclusive) and `to` (exclusive) as RFC 3339 times (`from` "
            "after `to`: nothing). A page "
            "examines a bounded span of global positions: filtered pages may be short or "
            "empty with a `next` to go on from; `next` is null at the end of the log. "
            "`Accept: application/x-ndjson` streams every matching event, one per line."
        ),
        response_description="An EventPage as JSON, or application/x-ndjson",
        responses={200: ResponseSpec(data_container=EventPage, description="A page, or NDJSON")},
        guards=AUDITOR,
    )
    async def log(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        after: Annotated[
            int | None,
            QueryParameter(ge=0, le=MAX_POSITION, description="Global position to start after"),
        ] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, description="JSON page size")] = None,
        conversation_id: Annotated[
            UUID | None, QueryParameter(description="Only this conversation's events")
        ] = None,
        user: Annotated[
            str | None, QueryParameter(description="Only conversations this user owns (user id)")
        ] = None,
        agent: Annotated[str | None, QueryParameter(description="Only this agent's")] = None,
        types: Annotated[
            list[str] | None,
            QueryParameter(
                name="type", description="Only these event types", schema_extra=TYPE_LIST_SCHEMA
            ),
        ] = None,
        since: Annotated[
            str | None,
            QueryParameter(name="from", description="At or after", schema_extra=DATE_TIME_SCHEMA),
        ] = None,
        until: Annotated[
            str | None,
            QueryParameter(name="to", description="Before", schema_extra=DATE_TIME_SCHEMA),
        ] = None,
    ) -> Response[Any]:
        reject_unknown_parameters(request, _LOG_PARAMETERS)
        start = after or 0
        query = audit_query(conversation_id, user, agent, types, since, until)
        audit_log = AuditLog(runtime.service, runtime.content)
        stop = await asyncio.to_thread(audit_log.last_position)
        if NDJSON in request.headers.get("accept", ""):
            return Stream(
                _ndjson(audit_log, query, start, stop),
                media_type=NDJSON,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        settings = runtime.settings
        page_size = min(limit or settings.page_size, settings.max_page_size)
        try:
            page = await asyncio.to_thread(
                audit_log.page, query, after=start, limit=page_size, stop=stop
            )
        except UnreadableEvent as error:
            return error_response(
                request,
                409,
                "unreadable_event",
                f"{error}; GET /v1/audit/conversations/{{id}}/verify locates the damage",
                {
                    "conversation_id": str(error.conversation_id),
                    "global_position": error.global_position,
                },
            )
        return Response(EventPage(items=page.items, next=page.next))
