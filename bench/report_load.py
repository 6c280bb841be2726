"""The report's sections on token latency under load (7) and held SSE connections (8)."""

from bench import before
from bench.load import (
    POST_SLACK_SECONDS,
    SEARCH_P99_MS,
    TARGET_CPU_MS_PER_TOKEN,
    TARGET_DELIVERED_RATIO,
    TARGET_LARGEST_N,
    TARGET_XACTS_PER_TOKEN,
    LoadResult,
    LoadStep,
    Search,
)
from bench.measure import Sample, percentile
from bench.profile import described
from bench.soak import SoakResult

DASH = "\N{EN DASH}"
MIB = 1024 * 1024


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _mib(value: int) -> str:
    return f"{value / MIB:,.0f} MiB"


def load_summary(result: LoadResult) -> list[str]:
    """The Targets table's rows of section 7: | target | before | after | verdict |."""
    config = result.config
    load = config.conversations
    ours, theirs = result.target, result.ceiling.target
    return [
        f"| Live path, {config.tokens_per_second:g} tokens/s per conversation, one "
        f"`threadlog serve`: the largest N with p99 model → client < {SEARCH_P99_MS:.0f} ms "
        f"and no error ≥ {TARGET_LARGEST_N} (stretch: the NATS-only ceiling's N, same run) "
        f"| {before.LOAD_LARGEST_N:,} (ceiling: {before.CEILING_LARGEST_N:,}) "
        f"| {_n(result.threadlog)} (ceiling: {_n(result.ceiling)}) "
        f"| {_verdict(result.target_met)}; stretch: {_verdict(result.stretch_met)} |",
        f"| At N = {load}, threadlog's delivered tokens/s ≥ {TARGET_DELIVERED_RATIO:g} of the "
        f"ceiling's, same run | {before.DELIVERED_RATIO_AT_TARGET_LOAD:.2f} "
        f"| {result.delivered_ratio:.2f} ({ours.delivered_per_second:,.0f} / "
        f"{theirs.delivered_per_second:,.0f} tokens/s) | {_verdict(result.delivered_met)} |",
        f"| Server CPU per token at N = 1 ≤ {TARGET_CPU_MS_PER_TOKEN:g} ms; PostgreSQL "
        f"transactions (`xact_commit`) per token event at N = 1 ≤ {TARGET_XACTS_PER_TOKEN:g} "
        f"(DESIGN.md) | server CPU {before.CPU_MS_PER_TOKEN_AT_ONE:.1f} ms per token "
        f"({before.CPU_SECONDS_AT_ONE:g} s for {before.TOKENS_AT_ONE:,} tokens); PostgreSQL "
        f"{before.XACTS_PER_TOKEN_AT_ONE:.1f} transactions per token event "
        f"| {_at_one(result.one)} | CPU: {_verdict(result.cpu_met)}; "
        f"transactions: {_verdict(result.transactions_met)} |",
    ]


def _n(search: Search) -> str:
    if search.largest_holding is not None:
        return f"{search.largest_holding:,}"
    return "none of " + ", ".join(str(step.conversations) for step in search.all_steps())


def _at_one(step: LoadStep | None) -> str:
    if step is None or step.cpu_ms_per_token is None:
        return "not measured"
    tokens = f"{step.token_events:,.0f}"
    per_token = step.transactions_per_token
    transactions = (
        f"PostgreSQL {per_token:.1f} transactions per token event ({step.transactions:,} "
        f"for {tokens})"
        if per_token is not None and step.transactions is not None
        else "PostgreSQL transactions not measured"
    )
    return (
        f"server CPU {step.cpu_ms_per_token:.2f} ms per token ({step.cpu_seconds:.1f} s for "
        f"{tokens} tokens); {transactions}"
    )


def _per_token(step: LoadStep) -> str:
    cpu = step.cpu_ms_per_token
    transactions = step.transactions_per_token
    return (
        f"{DASH if cpu is None else f'{cpu:.2f}'} | "
        f"{DASH if transactions is None else f'{transactions:.1f}'}"
    )


def _errors(step: LoadStep) -> str:
    parts = [
        f"{step.missing:,} missing" if step.missing else "",
        f"{step.duplicates:,} duplicated" if step.duplicates else "",
        f"{step.out_of_order:,} out of order" if step.out_of_order else "",
        f"{step.unfinished:,} runs unfinished" if step.unfinished else "",
        f"{len(step.http_errors):,} HTTP" if step.http_errors else "",
    ]
    return ", ".join(part for part in parts if part) or "0"


def _row(name: str, step: LoadStep) -> str:
    latency = (
        f"{step.p(50):,.1f} | {step.p(95):,.1f} | {step.p(99):,.1f} | {step.latency_ms.high:,.1f}"
        if step.latency_ms
        else f"{DASH} | {DASH} | {DASH} | {DASH}"
    )
    return (
        f"| {name} | {step.conversations:,} | {step.clients:,} | {latency} | "
        f"{step.offered_per_second:,.0f} | {step.delivered_per_second:,.0f} | "
        f"{step.cpu_seconds:,.1f} ({step.cpu_seconds / step.wall_seconds:.2f}) | "
        f"{_per_token(step)} | {_mib(step.peak_rss_bytes)} | {step.client_cpu_seconds:,.1f} | "
        f"{_errors(step)} | {_load(step.load_average)} |"
    )


def _pair(sample: Sample | None) -> str:
    if sample is None:
        return DASH
    return f"{percentile(sample.values, 50):,.1f} / {percentile(sample.values, 99):,.1f}"


def _stages(name: str, step: LoadStep) -> str:
    return (
        f"| {name} | {step.conversations:,} | {_pair(step.created_ms)} | "
        f"{_pair(step.on_nats_ms)} | {_pair(step.latency_ms)} |"
    )


def _largest(search: Search) -> str:
    if search.largest_holding is not None:
        n = search.largest_holding
        return f"**{n:,} conversation{'' if n == 1 else 's'}**"
    tried = ", ".join(str(step.conversations) for step in search.all_steps())
    return f"none of those tried ({tried})"


def load_section(result: LoadResult) -> str:
    config = result.config
    threadlog, ceiling = result.threadlog, result.ceiling
    rows = [
        ("**threadlog: target load**", threadlog.target),
        *(("threadlog: search", step) for step in threadlog.steps),
        *(("threadlog: N = 1", step) for step in threadlog.extra),
        ("ceiling: target load", ceiling.target),
        *(("ceiling: search", step) for step in ceiling.steps),
    ]
    lines = [
        "## 7. Model → client token latency under load\n",
        "- The server: `threadlog serve` in its own OS process on PostgreSQL and NATS (relay "
        "and read-model projections on; since 2026-12-01 `threadlog serve` runs them in the "
        "background process it starts, `THREADLOG_BACKGROUND_PROCESS`, where until then they "
        "shared the API process; and since that day its processes hand the GIL between "
        "threads every 1 ms, not 5, `infra/interpreter.py`; later that day a run hands each "
        "token to the group-commit writer at once, where it waited for the process's next "
        "5 ms flush tick, `infra/runs/flusher.py`, and the background process's projection "
        "runners are not woken for batches with nothing for them, `projections/runner.py`; "
        "since 2026-12-01 evening the group-commit writer runs on the event loop with a "
        "connection of its own, `infra/store/loop_writer.py`, a run that ends leaves its "
        "live aggregate in the repository's cache, where the next load replayed all its "
        "events, and pydantic-ai's model streams take their lock without a turn of the "
        "loop, `infra/agents/streams.py`), "
        "a new database and server for each "
        f"load step, with the paced model (`THREADLOG_MODEL=paced:{config.tokens_per_second:g}"
        f":{config.tokens}`, infra/agents/paced_model.py): each run streams "
        f"{config.tokens:,} tokens at {config.tokens_per_second:g} per second "
        f"({config.stream_seconds:g} s), each token's text carrying the wall-clock time it "
        "was due.",
        "- The live path does not go through the relay any more: once the group-commit "
        "writer has committed a batch, the server hands exactly those events to its own "
        "SSE streams (and, over core NATS, to other processes'). The relay still publishes "
        "every stored event to JetStream, which is now the durable path for consumers, not "
        "the path to SSE clients.",
        "- The clients: another OS process (`bench.sse_clients`, asyncio, a lean HTTP/1.1 "
        f"client) opens {config.clients_per_conversation} SSE stream(s) per conversation "
        "(`GET /v1/conversations/{id}/events`); once every stream follows, the benchmark "
        "posts one message to each conversation (16 at a time) and the clients record, per "
        "token, the time from its due time to its arrival (one clock on one machine), until "
        "each stream has seen its run's `RunCompleted` or the deadline "
        f"({config.stream_seconds + config.drain_seconds:g} s + {POST_SLACK_SECONDS:g} s to post) "
        "passed.",
        "- Errors: tokens never received (by the deadline), duplicated or out of order, runs "
        "not ended by the deadline, HTTP errors. Server CPU: seconds of CPU of the server "
        "process and the processes it started (its background process) while the step ran "
        "(in brackets: per wall second, i.e. cores); peak RSS: of those processes together, "
        "sampled every 100 ms from /proc. PostgreSQL, NATS and the clients run on the same "
        "2 CPUs, shared with whatever else the machine runs: the load average at each step's "
        "end is in the last column.",
        "- Per token: the server's CPU milliseconds and PostgreSQL's committed transactions "
        "per token event delivered (distinct tokens received per conversation: where tokens "
        "went missing, only those delivered count). Transactions: `xact_commit` of "
        "`pg_stat_database` for the step's database (every session, reads included), read "
        "just before the messages are posted and just after the clients finished. Each "
        "PostgreSQL session reports its counts at most about once a second, so the "
        "difference can miss about a second's transactions at either end.",
        f"- Target: the largest N with p99 < {SEARCH_P99_MS:.0f} ms and no error is at least "
        f"{TARGET_LARGEST_N} (stretch: the ceiling's N in the same run); at the target load "
        f"({config.conversations} conversations, always measured first) threadlog delivers at "
        f"least {TARGET_DELIVERED_RATIO:g} of the ceiling's tokens/s; at N = 1 the server "
        f"spends at most {TARGET_CPU_MS_PER_TOKEN:g} ms of CPU and PostgreSQL commits at most "
        f"{TARGET_XACTS_PER_TOKEN:g} transaction per token event.",
        f"- Search: the largest N of {', '.join(str(n) for n in sorted(config.steps))} whose "
        f"p99 stays under {SEARCH_P99_MS:.0f} ms with no error, going up from the target load "
        "when it holds, else from the smallest step, stopping at the first step that fails. "
        "A step of N = 1 is always measured: the search's own when it reaches it, else one "
        "more step.",
        "- Ceiling (same run, the same loads and search): a minimal SSE server on the same HTTP "
        "stack (Litestar under uvicorn, `bench/ceiling.py`, its own process, new for each "
        "step) that forwards each conversation's NATS subject, fed by a process publishing "
        "the same paced tokens (envelopes of the same shape and size) straight to NATS: no "
        "store, relay or run executor in the path. Its clients do not watch NATS (the "
        "least work for them).",
        "- Clients' CPU: the CPU seconds of the clients' process over its life (connecting "
        "included): when it nears the step's wall time, the clients, not the server, set "
        "the pace.",
        "",
        "| load | N | streams | p50 ms | p95 ms | p99 ms | max ms | offered tokens/s | "
        "delivered tokens/s | server CPU s (cores) | server CPU ms / token | "
        "PostgreSQL transactions / token | server peak RSS | clients' CPU s | "
        "errors | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(name, step) for name, step in rows),
        "",
        "Where the latency accrues: milliseconds from a token's due time until its event was "
        "made (the stored event's `timestamp`, set by the run executor when it took the "
        "token from the model), until the relay had published it to JetStream (seen by a "
        "subscriber to the relay's subjects in the clients' process: committed and relayed; "
        "not measured for the ceiling), and until the SSE client read it; p50 / p99 over the "
        "same tokens. The SSE client no longer waits for the relay: the middle column "
        "measures the durable path for consumers, and may exceed the last.",
        "",
        "| load | N | due → event made | due → on NATS (relay) | due → SSE client |",
        "|---|---|---|---|---|",
        *(_stages(name, step) for name, step in rows),
        "",
        "Percentiles cover the tokens received by the deadline only: where a load is too "
        "much for a server, compare the delivered tokens/s, not the percentiles. CPU seconds "
        "of the ceiling's publisher process: "
        + "; ".join(
            f"N={step.conversations}: {step.publisher_cpu_seconds:.1f}"
            for _, step in rows
            if step.publisher_cpu_seconds is not None
        )
        + ".",
        "",
        f"- Largest N holding p99 < {SEARCH_P99_MS:.0f} ms with no error: threadlog "
        f"{_largest(threadlog)}; the ceiling {_largest(ceiling)}. Target (≥ "
        f"{TARGET_LARGEST_N}): {_verdict(result.target_met)}; stretch (the ceiling's N): "
        f"{_verdict(result.stretch_met)}.",
        f"- threadlog / ceiling at the target load ({config.conversations} conversations): "
        f"p99 {_ratio(result.p99_ratio)}, "
        f"delivered tokens/s {result.delivered_ratio:.2f} (target ≥ "
        f"{TARGET_DELIVERED_RATIO:g}: {_verdict(result.delivered_met)}).",
        f"- At N = 1: {_at_one(result.one)} (server CPU ms per token ≤ "
        f"{TARGET_CPU_MS_PER_TOKEN:g}: {_verdict(result.cpu_met)}; transactions per token "
        f"event ≤ {TARGET_XACTS_PER_TOKEN:g}: {_verdict(result.transactions_met)}).",
        f"- threadlog / ceiling at the loads both served without error: {_pairs(result)}.",
    ]
    if result.profile is not None:
        heading = (
            f"**Where the server's time goes** at the target load ({config.conversations} "
            "conversations, one more step; the API process, where the live path runs: its "
            "background process is not sampled)"
        )
        lines += ["", *described(result.profile, heading)]
    if result.profile_one is not None:
        heading = (
            "**Where the server's CPU goes at N = 1** (one conversation, one more step: the "
            "CPU-per-token target; the API process only)"
        )
        lines += ["", *described(result.profile_one, heading)]
    return "\n".join(lines) + "\n"


def _load(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _pairs(result: LoadResult) -> str:
    pairs = result.pairs()
    if not pairs:
        return "none"
    return "; ".join(
        f"N={ours.conversations}: p50 {ours.p(50) / theirs.p(50):.1f}, "
        f"p99 {ours.p(99) / theirs.p(99):.1f}"
        for ours, theirs in pairs
    )


def _ratio(value: float) -> str:
    return f"{value:,.1f} times" if value != float("inf") else "∞ (no token arrived)"


def soak_section(result: SoakResult) -> str:
    config, outcome = result.config, result.outcome
    heartbeats = result.heartbeats
    beats = (
        f"{heartbeats.median:,.0f} ({heartbeats.low:,.0f}{DASH}{heartbeats.high:,.0f})"
        if heartbeats
        else DASH
    )
    expected = config.hold_seconds / config.heartbeat_seconds
    per_stream = (result.rss_open - result.rss_before) / max(outcome.opened, 1)
    errors = f"{len(outcome.errors):,}" + (
        f" (first: `{outcome.errors[0][:120]}`)" if outcome.errors else ""
    )
    lines = [
        f"## 8. {config.connections:,} idle SSE streams held for {config.hold_seconds:g} s\n",
        "- The server: `threadlog serve` in its own OS process on PostgreSQL and NATS, "
        f"`THREADLOG_SSE_HEARTBEAT_SECONDS={config.heartbeat_seconds:g}`. Per-conversation "
        "streams have no server-side cap (`THREADLOG_STREAM_MAX_CLIENTS` caps the firehose "
        "only) and the benchmark turns the rate limits off; file descriptors: "
        f"`ulimit -n` = {result.fd_limit:,} for the server and the clients.",
        f"- A separate process opens {config.connections:,} streams "
        f"(`GET /v1/conversations/{{id}}/events`, over {config.conversations:,} "
        "conversations, 50 connecting at a time), then holds them, counting heartbeat "
        "comments.",
        "- Other requests: one client, `GET /health/` and `GET /v1/conversations/{id}` "
        f"one after the other with a {50} ms pause, for {config.baseline_seconds:g} s with "
        "no stream open (baseline, just before, once the read models had caught up with the "
        "conversations' creation), then through the first 80% of the hold.",
        "",
        "| | |",
        "|---|---|",
        f"| streams opened / open at the end of the hold | {outcome.opened:,} / "
        f"{outcome.open_at_end:,} of {outcome.clients:,} |",
        f"| time to open them all | {result.open_seconds:.1f} s |",
        f"| heartbeats per stream, median (min{DASH}max) | {beats} (≈ {expected:.0f} expected) |",
        f"| errors | {errors} |",
        f"| server RSS: before → all open (per stream) | {_mib(result.rss_before)} → "
        f"{_mib(result.rss_open)} ({per_stream / 1024:,.0f} KiB) |",
        f"| server RSS: peak / end of the hold (growth during the hold) | "
        f"{_mib(result.rss_peak)} / {_mib(result.rss_end)} ({result.rss_growth / MIB:+,.1f} MiB) |",
        f"| server CPU over the hold | {result.cpu_seconds:.1f} s "
        f"({result.cpu_seconds / config.hold_seconds:.2f} cores) |",
        "",
        "| request | requests (baseline, during) | baseline p50 ms | baseline p99 ms | "
        "during p50 ms | during p99 ms | during / baseline: p50, p99 |",
        "|---|---|---|---|---|---|---|",
        f"| `GET /health/` | {len(result.baseline.health_ms.values):,}, "
        f"{len(result.during.health_ms.values):,} | {result.baseline.health(50):.1f} | "
        f"{result.baseline.health(99):.1f} | {result.during.health(50):.1f} | "
        f"{result.during.health(99):.1f} | {result.health_ratio:.2f}, "
        f"{result.during.health(99) / result.baseline.health(99):.2f} |",
        f"| `GET /v1/conversations/{{id}}` | {len(result.baseline.read_ms.values):,}, "
        f"{len(result.during.read_ms.values):,} | {result.baseline.read(50):.1f} | "
        f"{result.baseline.read(99):.1f} | {result.during.read(50):.1f} | "
        f"{result.during.read(99):.1f} | {result.read_ratio:.2f}, "
        f"{result.during.read(99) / result.baseline.read(99):.2f} |",
    ]
    return "\n".join(lines) + "\n"
