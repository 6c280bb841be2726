"""Runs: read a run (background runs' status and result), list them, cancel one.

Reads come from the `runs` read model. A run the read model does not know yet may
have been posted a moment ago: before answering 404 the read model is waited for
up to the store's current position, so a GET right after the POST finds the run.
"""

import asyncio
import time
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException
from litestar.params import PathParameter, QueryParameter

from threadlog.domain.errors import RunAlreadyEnded, RunNotActive, RunNotFound
from threadlog.domain.events import Cause
from threadlog.http.access import owner_of
from threadlog.http.auth import USER
from threadlog.http.conversations import cause_of
from threadlog.http.errors import error_response
from threadlog.http.reads import (
    Cursor,
    Limit,
    MinPosition,
    decode_cursor,
    encode_cursor,
    read_view,
    reject_unknown_parameters,
)
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.content import ContentKeys
from threadlog.projections.runs import Run, RunQuery, Runs, RunStatus, get_run
from threadlog.projections.runs import list_runs as list_run_rows
from threadlog.projections.views import to_micros

RunId = Annotated[str, PathParameter(max_length=64, pattern=r"^[A-Za-z0-9-]+$")]

RESULT_WAIT_DEFAULT_SECONDS = 30.0
RESULT_WAIT_MAX_SECONDS = 60.0
# While a run is elsewhere (another process, or queued), its row is read this often.
RESULT_POLL_SECONDS = 0.2


class RunCancelled(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str


class RunOut(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    conversation_id: str
    agent: str
    # The agent version the run used (its latest attempt): "" and 0 for runs recorded
    # before agents had versions.
    agent_id: str
    agent_version: int
    model: str | None
    status: str
    attempt: int
    progress: float | None
    note: str | None
    message_id: str
    created_at: str
    started_at: str | None
    ended_at: str | None
    reply_message_id: str | None
    usage: dict[str, Any] | None
    cost_usd: float | None
    duration_ms: float | None
    error: str | None
    error_message: str | None
    cancel_reason: str | None
    position: int
    result_url: str


class RunResultOut(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    conversation_id: str
    status: str
    message_id: str
    reply_message_id: str | None
    content: str | None
    output: Any
    usage: dict[str, Any] | None
    cost_usd: float | None
    error: str | None
    error_message: str | None
    cancel_reason: str | None
    ended_at: str | None


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[RunOut]
    next: str | None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def opened_run(run: Run, keys: ContentKeys) -> Run:
    """The run with its sealed note, reply and output opened (None where erased)."""
    return replace(
        run,
        note=keys.open(run.note).value,
        content=keys.open(run.content).value,
        output=keys.open(run.output).value,
    )


def run_out(run: Run) -> RunOut:
    return RunOut(
        run_id=run.run_id,
        conversation_id=run.conversation_id,
        agent=run.agent,
        agent_id=run.agent_id,
        agent_version=run.agent_version,
        model=run.model,
        status=run.status,
        attempt=run.attempt,
        progress=run.progress,
        note=run.note,
        message_id=run.message_id,
        created_at=run.created_at.isoformat(),
        started_at=_iso(run.started_at),
        ended_at=_iso(run.ended_at),
        reply_message_id=run.reply_message_id,
        usage=run.usage,
        cost_usd=run.cost_usd,
        duration_ms=run.duration_ms,
        error=run.error,
        error_message=run.error_message,
        cancel_reason=run.cancel_reason,
        position=run.position,
        result_url=f"/v1/runs/{run.run_id}/result",
    )


def result_out(run: Run) -> RunResultOut:
    return RunResultOut(
        run_id=run.run_id,
        conversation_id=run.conversation_id,
        status=run.status,
        message_id=run.message_id,
        reply_message_id=run.reply_message_id,
        content=run.content,
        output=run.output,
        usage=run.usage,
        cost_usd=run.cost_usd,
        error=run.error,
        error_message=run.error_message,
        cancel_reason=run.cancel_reason,
        ended_at=_iso(run.ended_at),
    )


def encode_run_cursor(run: Run) -> str:
    return encode_cursor(to_micros(run.created_at), run.run_id)


async def _read(runtime: Runtime, run_id: str) -> Run | None:
    view = runtime.read_models.view(Runs.name)

    def read() -> Run | None:
        with view.read() as sql:
            run = get_run(sql, run_id)
        return None if run is None else opened_run(run, runtime.content)

    return await asyncio.to_thread(read)


async def find_run(runtime: Runtime, run_id: str, owner: str, min_position: int | None) -> Run:
    """The caller's run, reflecting at least `min_position`; RunNotFound otherwise."""
    read_models, wait_seconds = runtime.read_models, runtime.settings.read_wait_seconds
    await read_models.wait(Runs.name, min_position, wait_seconds)
    run = await _read(runtime, run_id)
    if run is None:
        # Posted a moment ago? Catch up with the store as it is now, then look again.
        latest = await asyncio.to_thread(runtime.service.recorder.max_notification_id)
        await read_models.wait(Runs.name, latest, wait_seconds)
        run = await _read(runtime, run_id)
    # Another owner's run is as unknown to the caller as a run that never was.
    if run is None or run.owner != owner:
        raise RunNotFound(run_id, f"run {run_id} does not exist")
    return run


async def _cancel_elsewhere(runtime: Runtime, run: Run, cause: Cause) -> None:
    """A run this process does not run: queued, ended, or in another process."""
    if run.status == "queued":
        try:
            await asyncio.to_thread(
                runtime.service.cancel_queued_run,
                UUID(run.conversation_id),
                run_id=run.run_id,
                cause=cause,
            )
            return
        except RunNotActive:
            pass  # it started meanwhile: cancel it where it runs
    if run.ended:
        raise RunAlreadyEnded(run.run_id, run.status)
    try:
        await runtime.control.cancel(run.run_id, cause, owner=run.owner)
    except RunNotFound:
        latest = await find_run(runtime, run.run_id, run.owner, None)
        if latest.ended:
            raise RunAlreadyEnded(run.run_id, latest.status) from None
        raise ClientException(
            status_code=409,
            detail=f"run {run.run_id} is not running in any process at the moment (a "
            "worker has not taken it yet); retry shortly",
        ) from None


async def cancel_run(runtime: Runtime, run_id: str, owner: str, cause: Cause) -> None:
    """Stops the owner's run wherever it is (RunNotFound when it is not theirs,
    RunAlreadyEnded when it ended, 409 while no process has it)."""
    if runtime.executor.is_running(run_id):
        # In this process: cancel at once (the owner is checked on the way).
        await runtime.control.cancel(run_id, cause, owner=owner)
    else:
        await _cancel_elsewhere(runtime, await find_run(runtime, run_id, owner, None), cause)


async def _until_ended(runtime: Runtime, run: Run, deadline: float) -> Run:
    """The run once it ended, or as it is at `deadline`."""
    executor = runtime.executor
    runner = runtime.read_models.runners[Runs.name]
    while not run.ended:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if executor.is_running(run.run_id):
            # Runs here: wait for its task, not by polling; then for its last events' row.
            await executor.wait(run.run_id, remaining)
            if executor.is_running(run.run_id):
                break
            latest = await asyncio.to_thread(runtime.service.recorder.max_notification_id)
            await runner.wait_async(latest or 0, max(deadline - time.monotonic(), 0.0))
        else:
            await asyncio.sleep(min(RESULT_POLL_SECONDS, remaining))
        run = await _read(runtime, run.run_id) or run
    return run


_RUN_PARAMETERS = frozenset({"min_position"})
_RESULT_PARAMETERS = frozenset({"timeout"})
_LIST_PARAMETERS = frozenset({"status", "conversation_id", "cursor", "limit", "min_position"})


class RunController(Controller):
    path = "/v1/runs"
    tags = ["runs"]
    dependencies = {"owner": Provide(owner_of, sync_to_thread=False)}
    guards = USER

    @get("/", summary="The caller's runs, newest first")
    async def list_runs(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        owner: NamedDependency[str],
        status: Annotated[
            RunStatus | None, QueryParameter(description="Only runs in this status")
        ] = None,
        conversation_id: Annotated[
            UUID | None, QueryParameter(description="Only this conversation's")
        ] = None,
        cursor: Cursor = None,
        limit: Limit = None,
        min_position: MinPosition = None,
    ) -> RunPage:
        reject_unknown_parameters(request, _LIST_PARAMETERS)
        settings = runtime.settings
        page_size = min(limit or settings.page_size, settings.max_page_size)
        query = RunQuery(
            owner=owner,
            limit=page_size + 1,
            status=status,
            conversation_id=str(conversation_id) if conversation_id is not None else None,
            after=decode_cursor(cursor) if cursor is not None else None,
        )
        rows = await read_view(
            runtime,
            Runs.name,
            min_position,
            lambda sql: [opened_run(run, runtime.content) for run in list_run_rows(sql, query)],
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        return RunPage(
            items=[run_out(row) for row in rows],
            next=encode_run_cursor(rows[-1]) if more else None,
        )

    @get(
        "/{run_id:str}",
        summary="A run: status, attempt, progress, times, usage, cost, error",
        description=(
            "From the `runs` read model. A run posted a moment ago is found even "
            "without `min_position`; 404 for a run that does not exist or is not yours."
        ),
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        owner: NamedDependency[str],
        run_id: RunId,
        min_position: MinPosition = None,
    ) -> RunOut:
        reject_unknown_parameters(request, _RUN_PARAMETERS)
        return run_out(await find_run(runtime, run_id, owner, min_position))

    @get(
        "/{run_id:str}/result",
        summary="Wait for a run's result",
        description=(
            f"Waits up to `timeout` seconds (0 to {RESULT_WAIT_MAX_SECONDS:g}, default "
            f"{RESULT_WAIT_DEFAULT_SECONDS:g}) for the run to end. 200 with the reply, "
            "structured output and usage when it completed, or with how it ended "
            "otherwise (failed, cancelled, interrupted, with its error); 408 when it has "
            "not ended in time (ask again)."
        ),
    )
    async def result(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        owner: NamedDependency[str],
        run_id: RunId,
        seconds: Annotated[
            float,
            QueryParameter(
                name="timeout", ge=0, le=RESULT_WAIT_MAX_SECONDS, description="Seconds to wait"
            ),
        ] = RESULT_WAIT_DEFAULT_SECONDS,
    ) -> Response[Any]:
        reject_unknown_parameters(request, _RESULT_PARAMETERS)
        deadline = time.monotonic() + seconds
        run = await find_run(runtime, run_id, owner, None)
        run = await _until_ended(runtime, run, deadline)
        if run.ended:
            return Response(result_out(run), status_code=200)
        return error_response(
            request,
            408,
            "run_not_ended",
            f"run {run_id} has not ended within {seconds:g} s (it is {run.status}); ask again",
            {"run_id": run_id, "status": run.status, "progress": run.progress},
        )

    @post(
        "/{run_id:str}/cancel",
        status_code=202,
        summary="Stop a run in flight",
        description=(
            "Stops the model stream. The tokens already streamed stay as events; the run "
            "ends with `RunCancelled` (carrying the partial reply) and the conversation is "
            "ready for the next message. A queued run (the `enqueue` policy) is cancelled "
            "before it starts. 409 for a run that already ended; 404 for an unknown run, "
            "or one that is not yours."
        ),
    )
    async def cancel(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], run_id: RunId
    ) -> RunCancelled:
        await cancel_run(runtime, run_id, owner_of(request), cause_of(request))
        return RunCancelled(run_id=run_id, status="cancelled")
