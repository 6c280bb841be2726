"""The console: a browser front end served at `/`, same origin as the API.

Plain files from `http/static/` (ES modules, a stylesheet and vendored libraries; no
build step, no CDN): `/` answers the page, `/console/...` its assets. Both are public
(the page holds no data; every call it makes authenticates like any client's) and
served under a CSP of their own (`http/context.py`): scripts, styles and connections
from this origin only, nothing inline.
"""

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from threadlog.http.auth import PUBLIC

STATIC = Path(__file__).parent / "static"
ASSETS_PATH = "/console"


@get("/", opt=PUBLIC, include_in_schema=False, sync_to_thread=False)
def console_page() -> Response[bytes]:
    """The console's one page (its views are client-side: `/#/chat`, `/#/timeline` …)."""
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


console_assets = create_static_files_router(
    path=ASSETS_PATH,
    directories=[STATIC],
    opt=PUBLIC,
    include_in_schema=False,
    name="console",
    cache_control=CacheControlHeader(no_cache=True),
)

CONSOLE_HANDLERS: list[ControllerRouterHandler] = [console_page, console_assets]
