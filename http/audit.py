"""The auditors' routes: re-verifying a conversation's hash chain from the store.

Auditors may verify any conversation; an owner may verify their own.
"""

import asyncio
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from threadlog.domain.errors import ConversationNotFound
from threadlog.http.access import owned_conversation
from threadlog.http.auth import identity, requires
from threadlog.infra.audit import ChainAuditor, Verification
from threadlog.infra.runtime import Runtime


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
