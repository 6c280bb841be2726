"""The `threadlog` command."""

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID
from wsgiref.simple_server import WSGIServer

import structlog
import uvicorn

from threadlog.domain.errors import DomainError
from threadlog.domain.identity import ROLES
from threadlog.domain.identity_service import Actor
from threadlog.http.app import create_app
from threadlog.infra import metrics
from threadlog.infra.auth import Passwords, open_identities
from threadlog.infra.interpreter import tune_interpreter
from threadlog.infra.logging import configure_logging
from threadlog.infra.metrics import serve_metrics
from threadlog.infra.runs.worker import RunWorker
from threadlog.infra.runtime import Runtime
from threadlog.infra.settings import Settings, SettingsError
from threadlog.infra.store.audit import ChainAuditor, describe
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.infra.tracing import Tracing, install, tracing_from_env
from threadlog.projections.read_models import RateReport, ReadModels, read_model_classes

log = structlog.get_logger(__name__)

READ_MODEL_NAMES = [model.name for model in read_model_classes()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadlog", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (embedded defaults)")
    serve.add_argument("--host", help="bind address (THREADLOG_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (THREADLOG_PORT, default 8000)")
    serve.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR (default ./.threadlog)")
    worker = commands.add_parser(
        "worker",
        help="execute runs taken from the JetStream work queue (the API sets THREADLOG_WORKERS)",
    )
    worker.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    projections = commands.add_parser("projections", help="operate the read models")
    projections.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    actions = projections.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="each read model's position and lag behind the store")
    rebuild = actions.add_parser(
        "rebuild",
        help="delete a read model's rows and checkpoint and replay the whole log "
        "(stop the processes that run it first)",
    )
    rebuild.add_argument("name", nargs="?", choices=READ_MODEL_NAMES, help="default: all")
    actions.add_parser(
        "run",
        help="follow the log and keep the read models current (THREADLOG_PROJECTIONS=false "
        "on the API nodes)",
    )
    users = commands.add_parser("users", help="manage users")
    users.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    user_actions = users.add_subparsers(dest="action", required=True)
    create = user_actions.add_parser("create", help="create a user (prints its id)")
    create.add_argument("username")
    create.add_argument(
        "--role", action="append", choices=ROLES, help="repeat for several (default: user)"
    )
    create.add_argument(
        "--password-stdin", action="store_true", help="read a password from standard input"
    )
    keys = commands.add_parser("keys", help="manage API keys")
    keys.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    key_actions = keys.add_subparsers(dest="action", required=True)
    issue = key_actions.add_parser("issue", help="issue an API key for a user (printed once)")
    issue.add_argument("username")
    issue.add_argument("--name", default="cli", help="a label for the key")
    audit = commands.add_parser("audit", help="tamper evidence")
    audit.add_argument("--data-dir", type=Path, help="THREADLOG_DATA_DIR")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser(
        "verify", help="recompute hash chains; exit status 1 when one is broken"
    )
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("conversation_id", nargs="?", type=UUID, help="one conversation")
    which.add_argument("--all", action="store_true", help="every conversation in the store")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(os.environ)
    changes = {
        name: value
        for name in ("host", "port", "data_dir")
        if (value := getattr(args, name, None)) is not None
    }
    return settings.replace(**changes)


def _tracing() -> Tracing | None:
    try:
        return tracing_from_env(os.environ)
    except ValueError as error:
        raise SettingsError(str(error)) from None


def serve(settings: Settings) -> None:
    if settings.background_process is None:
        # On SQLite another process would hear of commits only by polling (every
        # CROSS_PROCESS_POLL_SECONDS), and reads that wait for their writes would wait that.
        settings = settings.replace(background_process=settings.database_url is not None)
    app = create_app(settings, tracing=_tracing())
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
    if settings.nats_url is None:
        raise SettingsError(
            "threadlog worker takes runs from a shared NATS: set THREADLOG_NATS_URL"
        )
    traced = _tracing()
    if traced is not None:
        install(traced)
    # The API (or `threadlog projections run`) runs the relay and the projections.
    worker_settings = settings.replace(workers=True, relay=False, projections=False)
    # Workers serve no reads: no read models, no connections for them.
    async with Runtime.open(worker_settings, read_model_names=()) as runtime:
        tune_interpreter()
        worker = RunWorker(
            service=runtime.service,
            executor=runtime.executor,
            js=runtime.js,
            names=runtime.names,
            lease_seconds=settings.worker_lease_seconds,
            max_retries=settings.run_max_retries,
            concurrency=settings.worker_concurrency,
        )
        await worker.start()
        log.info("worker.running", lease_seconds=settings.worker_lease_seconds)
        metrics_server = _serve_metrics(settings)
        await stop.wait()
        if metrics_server is not None:
            metrics_server.shutdown()
        await worker.stop(drain_seconds=settings.worker_drain_seconds)
    log.info("worker.stopped")


def projections(settings: Settings, action: str, name: str | None) -> None:
    service = open_service(settings)
    try:
        read_models = ReadModels.open(
            service,
            store_environment(settings),
            settings.read_models_dir,
            batch_size=settings.projection_batch_size,
            names=(name,) if name else None,
        )
        try:
            if action == "status":
                for status in read_models.status():
                    print(
                        f"{status.name}\tposition {status.position}\t"
                        f"store {status.store_position}\tlag {status.lag}"
                    )
            elif action == "rebuild":
                for runner in read_models.runners.values():
                    report = RateReport(runner.name, sys.stderr.write)
                    runner.rebuild(progress=report)
                    report.finish()
            else:
                _follow_until_signalled(settings, read_models)
        finally:
            read_models.close()
    finally:
        service.close()


def identities(settings: Settings, args: argparse.Namespace) -> int:
    """`users create` and `keys issue`, straight on the identity store."""
    store = open_identities(settings)
    by = Actor(actor="cli", correlation_id="cli")
    try:
        if args.command == "users":
            password_hash = None
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
                if len(password) < settings.min_password_length:
                    print(f"the password is shorter than {settings.min_password_length}")
                    return 2
                password_hash = Passwords().hash(password)
            user = store.register(
                username=args.username,
                password_hash=password_hash,
                roles=args.role or ["user"],
                by=by,
            )
            print(user.id)
            return 0
        owner = store.find_user(args.username)
        if owner is None:
            print(f"no user {args.username!r}", file=sys.stderr)
            return 2
        print(store.issue_key(owner.id, name=args.name, by=by).key)
        return 0
    except DomainError as error:
        print(f"threadlog: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()


def audit_verify(settings: Settings, conversation_id: UUID | None) -> int:
    """Prints each broken chain (and, for one conversation, its verdict); 1 if any broke."""
    service = open_service(settings)
    try:
        auditor = ChainAuditor(service)
        if conversation_id is not None:
            verification = auditor.verify(conversation_id)
            if verification is None:
                print(f"conversation {conversation_id} has no events", file=sys.stderr)
                return 2
            print(describe(verification))
            return 0 if verification.intact else 1
        report = RateReport("verify", sys.stderr.write)
        checked = broken = 0
        for verification in auditor.verify_all(progress=report):
            checked += 1
            if not verification.intact:
                broken += 1
                print(describe(verification))
        report.finish()
        print(f"{checked} conversations verified, {broken} broken")
        return 1 if broken else 0
    finally:
        service.close()


def _serve_metrics(settings: Settings) -> WSGIServer | None:
    """A process without the HTTP API serves its metrics on a port of its own, if set."""
    if not settings.metrics_port:
        return None
    return serve_metrics(settings.metrics_host, settings.metrics_port, settings.metrics_token)


def _follow_until_signalled(settings: Settings, read_models: ReadModels) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    read_models.start()
    log.info("projections.running", names=list(read_models.runners))
    metrics_server = _serve_metrics(settings)
    if metrics_server is not None:
        # Lags are read when scraped: the store's head against each read model.
        metrics.RUNTIME.sources = metrics.RuntimeSources(
            store_head=lambda: read_models.service.recorder.max_notification_id() or 0,
            relay_position=None,
            projection_positions=lambda: [(s.name, s.position) for s in read_models.status()],
            runs_by_status=None,
        )
    stop.wait()
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("projections.stopped")


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
        elif args.command in ("users", "keys"):
            sys.exit(identities(settings, args))
        elif args.command == "audit":
            sys.exit(audit_verify(settings, args.conversation_id))
        elif args.command == "projections":
            projections(settings, args.action, getattr(args, "name", None))
        else:
            asyncio.run(_work(settings))
    except SettingsError as error:
        sys.exit(f"threadlog: {error}")
