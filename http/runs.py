"""Runs: control of a run in flight."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import PathParameter

from threadlog.http.access import owner_of
from threadlog.http.auth import USER
from threadlog.http.conversations import cause_of
from threadlog.infra.runtime import Runtime

RunId = Annotated[str, PathParameter(max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


class RunCancelled(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str


class RunController(Controller):
    path = "/v1/runs"
    tags = ["runs"]

    @post(
        "/{run_id:str}/cancel",
        status_code=202,
        summary="Stop a run in flight",
        description=(
            "Stops the model stream. The tokens already streamed stay as events; the run "
            "ends with `RunCancelled` (carrying the partial reply) and the conversation is "
            "ready for the next message. 404 when no process runs it, or it is not "
            "yours."
        ),
        guards=USER,
    )
    async def cancel(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], run_id: RunId
    ) -> RunCancelled:
        await runtime.control.cancel(run_id, cause_of(request), owner=owner_of(request))
        return RunCancelled(run_id=run_id, status="cancelled")
