"""Posting a user message under the conversation's busy policy.

`reject` and `enqueue` are the aggregate's to decide. `interrupt` needs the active
run stopped first, wherever it runs, so it is orchestrated here: cancel, then post
again (a few times, as another message may slip in between).
"""

import asyncio
import contextlib
from uuid import UUID

from threadlog.domain.application import ConversationService, Written
from threadlog.domain.conversation import ModelOf, PostedMessage
from threadlog.domain.errors import RunAlreadyActive, RunNotFound
from threadlog.domain.events import Cause
from threadlog.infra.runs.control import RunControl

INTERRUPT_ATTEMPTS = 3


async def post_message(
    service: ConversationService,
    control: RunControl,
    conversation_id: UUID,
    *,
    content: str,
    client_message_id: str | None,
    model: ModelOf,
    cause: Cause,
) -> Written[PostedMessage]:
    for attempt in range(INTERRUPT_ATTEMPTS):
        try:
            return await asyncio.to_thread(
                service.post_message,
                conversation_id,
                content=content,
                client_message_id=client_message_id,
                model=model,
                cause=cause,
            )
        except RunAlreadyActive as busy:
            if busy.policy != "interrupt" or attempt == INTERRUPT_ATTEMPTS - 1:
                raise
            # A run no process runs cannot be cancelled: the retry then answers 409.
            with contextlib.suppress(RunNotFound):
                await control.cancel(busy.run_id, cause)
    raise AssertionError("unreachable")
