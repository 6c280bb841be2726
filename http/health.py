"""Liveness and readiness."""

import asyncio

from litestar import Controller, Response, get
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
    async def ready(self, runtime: NamedDependency[Runtime]) -> Response[HealthOut]:
        checks = {
            "store": await _check_store(runtime),
            "nats": await _check_nats(runtime),
        }
        if runtime.relay is not None:
            checks["relay_position"] = str(runtime.relay.published_position)
        for status in await asyncio.to_thread(runtime.read_models.status):
            checks[f"projection_{status.name}_lag"] = str(status.lag)
        ok = checks["store"] == "ok" and checks["nats"] == "ok"
        return Response(
            HealthOut(status="ok" if ok else "unavailable", checks=checks),
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": "1"},
        )


async def _check_store(runtime: NamedDependency[Runtime]) -> str:
    try:
        await asyncio.wait_for(
            asyncio.to_thread(runtime.event_log.max_global_position), CHECK_TIMEOUT_SECONDS
        )
    except Exception as error:
        return f"failed: {type(error).__name__}"
    return "ok"


async def _check_nats(runtime: NamedDependency[Runtime]) -> str:
    if not runtime.nc.is_connected:
        return "failed: disconnected"
    try:
        await runtime.nc.flush(timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        return f"failed: {type(error).__name__}"
    return "ok"
