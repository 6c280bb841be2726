"""The `threadlog` command."""

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
import uvicorn

from threadlog.http.app import create_app
from threadlog.infra.logging import configure_logging
from threadlog.infra.runtime import Runtime
from threadlog.infra.settings import Settings, SettingsError

log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadlog", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (embedded defaults)")
    serve.add_argument("--host", help="bind address (THREADLOG_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (THREADLOG_PORT, default 8000)")
    serve.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR (default ./.threadlog)")
    worker = commands.add_parser(
        "worker", help="run the background pipeline (the relay to NATS) without the API"
    )
    worker.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(os.environ)
    changes = {
        name: value
        for name in ("host", "port", "data_dir")
        if (value := getattr(args, name, None)) is not None
    }
    return settings.replace(**changes)


def serve(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    log.info("serve.listening", url=f"http://{settings.host}:{settings.port}")
    uvicorn.Server(config).run()


async def _work(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Runtime.open(settings.replace(relay=True)):
        log.info("worker.running")
        await stop.wait()
    log.info("worker.stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as error:
        sys.exit(f"threadlog: {error}")
    configure_logging(settings)
    try:
        if args.command == "serve":
            serve(settings)
        else:
            asyncio.run(_work(settings))
    except SettingsError as error:
        sys.exit(f"threadlog: {error}")
