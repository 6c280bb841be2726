"""Run control across processes: a cancel reaches whichever process runs the run.

Every process answers, on NATS request/reply, for the runs its executor holds; a
process that does not hold the run stays silent. No answer within the wait means
no process runs it (the run ended, or never existed).
"""

import asyncio
import contextlib

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from threadlog.domain.application import ConversationService
from threadlog.domain.errors import RunNotFound
from threadlog.domain.events import Cause
from threadlog.infra.runs.executor import RunExecutor
from threadlog.infra.stream.nats import StreamNames

log = structlog.get_logger(__name__)

CANCEL = "cancel"
PING = "ping"
REMOTE_WAIT_SECONDS = 2.0


class _CancelRequest(msgspec.Struct, frozen=True):
    actor: str
    correlation_id: str
    # Only the conversation's owner may cancel its runs; None skips the check (system).
    owner: str | None = None


class RunControl:
    def __init__(
        self,
        nc: NatsClient,
        names: StreamNames,
        executor: RunExecutor,
        service: ConversationService,
    ) -> None:
        self._service = service
        self._nc = nc
        self._names = names
        self._executor = executor
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self._subscriptions = [
            await self._nc.subscribe(self._names.run_control_wildcard(CANCEL), cb=self._on_cancel),
            await self._nc.subscribe(self._names.run_control_wildcard(PING), cb=self._on_ping),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            if not self._nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()

    async def is_running_anywhere(self, run_id: str) -> bool:
        """Whether this process or another one answers for the run now."""
        if self._executor.is_running(run_id):
            return True
        try:
            await self._nc.request(
                self._names.run_control_subject(run_id, PING), b"", timeout=REMOTE_WAIT_SECONDS
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return True

    async def _on_ping(self, message: Msg) -> None:
        if self._executor.is_running(message.subject.split(".")[-2]):
            await message.respond(b"running")

    async def cancel(self, run_id: str, cause: Cause, owner: str | None = None) -> None:
        """Cancels the run wherever it runs; raises RunNotFound when no process runs it,
        or when `owner` is given and does not own the run's conversation."""
        if await self._owned_here(run_id, owner) and await self._executor.cancel(run_id, cause):
            return
        request = _CancelRequest(
            actor=cause.actor, correlation_id=cause.correlation_id, owner=owner
        )
        try:
            await self._nc.request(
                self._names.run_control_subject(run_id, CANCEL),
                msgspec.json.encode(request),
                timeout=REMOTE_WAIT_SECONDS,
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise RunNotFound(run_id) from None

    async def _owned_here(self, run_id: str, owner: str | None) -> bool:
        """This process runs the run, and `owner` (when given) owns its conversation."""
        conversation_id = self._executor.conversation_of(run_id)
        if conversation_id is None:
            return False
        if owner is None:
            return True
        conversation = await asyncio.to_thread(self._service.get_conversation, conversation_id)
        return conversation.owner == owner

    async def _on_cancel(self, message: Msg) -> None:
        run_id = message.subject.split(".")[-2]
        if not self._executor.is_running(run_id):
            return
        try:
            request = msgspec.json.decode(message.data, type=_CancelRequest)
        except msgspec.DecodeError:
            log.warning("control.bad_cancel_request", run_id=run_id)
            return
        if not await self._owned_here(run_id, request.owner):
            return
        cause = Cause(actor=request.actor, correlation_id=request.correlation_id)
        if await self._executor.cancel(run_id, cause):
            await message.respond(b'{"status":"cancelled"}')
