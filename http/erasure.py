"""Erasing a user's content: their content keys destroyed (docs/erasure.md)."""

import asyncio
import datetime
from uuid import UUID

import msgspec
import structlog
from litestar import delete
from litestar.di import NamedDependency
from litestar.params import FromPath

from threadlog.http.auth import ADMIN
from threadlog.infra.runtime import Runtime

log = structlog.get_logger(__name__)


class ContentErasedOut(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    keys_erased: int  # 0 when the user had no content, or it was erased already
    erased_at: str


@delete(
    "/v1/users/{user_id:uuid}/content",
    status_code=200,
    guards=ADMIN,
    tags=["admin"],
    summary="Erase a user's content: every message, token and tool call they own",
    description=(
        "Destroys the user's content keys. Every event stays (the hash chains still "
        "verify) but the content of their conversations becomes unreadable everywhere: "
        "the API serves it as null with `erased`, read models too, and the copies on "
        "JetStream were sealed all along. Irreversible. New messages get a new key."
    ),
)
async def erase_user_content(
    runtime: NamedDependency[Runtime], user_id: FromPath[UUID]
) -> ContentErasedOut:
    await asyncio.to_thread(runtime.identities.get_user, user_id)  # 404 for an unknown user
    owner = str(user_id)
    erased = await asyncio.to_thread(runtime.content.erase, owner)
    # Other processes drop their cached keys now rather than when the cache expires.
    await runtime.nc.publish(runtime.names.content_erased_subject, owner.encode())
    log.info("content.erased", user_id=owner, keys=erased)
    return ContentErasedOut(
        user_id=owner,
        keys_erased=erased,
        erased_at=datetime.datetime.now(datetime.UTC).isoformat(),
    )
