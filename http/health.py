"""Liveness and readiness."""

import asyncio
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from threadlog.http.auth import PUBLIC
from threadlog.http.schemas import HealthOut
from threadlog.infra.runtime import Runtime

CHECK_TIMEOUT_SECONDS = 2


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = PUBLIC  # probes carry no credentials

    @get("/", summary="The process is up")
    async def live(self) -> HealthOut:
        return HealthOut(status="ok")

    @get("/ready", summary="The store and NATS answer")
    async def ready(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> Response[HealthOut]:
        checks = {
            "store": await _check_store(runtime, request.app.state),
            "nats": await _check_nats(runtime),
        }
        if runtime.relay is not None:
            checks["relay_position"] = str(runtime.relay.published_position)
        if runtime.background_process is not None:
            checks["background_process"] = runtime.background_process.state()
        ok = all(
            checks[name] == "ok"
            for name in ("store", "nats", "background_process")
            if name in checks
        )
        if checks["store"] == "ok":
            checks.update(await _projection_lags(runtime))
        return Response(
            HealthOut(status="ok" if ok else "unavailable", checks=checks),
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": "1"},
        )


async def _check_store(runtime: NamedDependency[Runtime], state: State) -> str:
    # One query in flight at a time: while the store hangs, a query outlives the probe
    # (it waits for the pool), and probes repeated every second must not pile up threads.
    check = state.get("store_check")
    if not isinstance(check, asyncio.Future) or check.done():
        check = asyncio.ensure_future(asyncio.to_thread(runtime.event_log.max_global_position))
        check.add_done_callback(_retrieve)
        state["store_check"] = check
    try:
        await asyncio.wait_for(asyncio.shield(check), CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        return f"failed: {type(error).__name__}"
    return "ok"


def _retrieve(check: "asyncio.Future[int]") -> None:
    """Marks a failure as seen: a probe that timed out does not await it any more."""
    if not check.cancelled():
        check.exception()


async def _check_nats(runtime: NamedDependency[Runtime]) -> str:
    if not runtime.nc.is_connected:
        return "failed: disconnected"
    try:
        await runtime.nc.flush(timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        return f"failed: {type(error).__name__}"
    return "ok"


async def _projection_lags(runtime: NamedDependency[Runtime]) -> dict[str, str]:
    """Each read model's lag; none when the store stops answering meanwhile (the probe
    must answer in bounded time, not wait on the pool)."""
    try:
        statuses = await asyncio.wait_for(
            asyncio.to_thread(runtime.read_models.status), CHECK_TIMEOUT_SECONDS
        )
    except Exception:
        return {}
    return {f"projection_{status.name}_lag": str(status.lag) for status in statuses}
