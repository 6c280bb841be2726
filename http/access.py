"""Who may see what: a conversation is its owner's; auditors may read any one's events.

Another user's conversation answers 404, exactly like one that does not exist, so its
existence is not disclosed.
"""

import asyncio
from typing import Any
from uuid import UUID

from litestar import Request

from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import ConversationNotFound
from threadlog.http.auth import identity
from threadlog.infra.runtime import Runtime


def owner_of(request: Request[Any, Any, Any]) -> str:
    """The owner whose conversations a caller sees and creates: the caller."""
    return identity(request).user_id


async def owned_conversation(
    runtime: Runtime,
    request: Request[Any, Any, Any],
    conversation_id: UUID,
    *,
    auditors: bool = False,
) -> Conversation:
    """The conversation, when the caller owns it (or, with `auditors`, is an auditor)."""
    caller = identity(request)
    conversation = await asyncio.to_thread(runtime.service.get_conversation, conversation_id)
    if conversation.owner != caller.user_id and not (auditors and caller.has("auditor")):
        raise ConversationNotFound(conversation_id)
    return conversation
