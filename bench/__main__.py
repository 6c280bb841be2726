"""`python -m bench [--quick] [--only NAME]... [--output PATH]`: run benchmarks, write a report."""

import argparse
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.cancel import CancelConfig, run_cancel
from bench.export import ExportConfig
from bench.load import LoadConfig, run_load
from bench.machine import load_average, read_machine
from bench.measure import elapsed_seconds, progress
from bench.population import PopulationConfig
from bench.read_latency import ReadLatencyConfig
from bench.rebuild import RebuildConfig
from bench.report import BENCHMARKS, Report, render
from bench.servers import bench_servers
from bench.soak import SoakConfig, run_soak
from bench.sse_replay import ReplayConfig, run_replay
from bench.store_reads import StoreReadsConfig, run_store_reads
from bench.token_write import TokenWriteConfig, run_token_write
from threadlog.infra.logging import configure_logging
from threadlog.infra.settings import Settings

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclass(frozen=True, kw_only=True)
class Plan:
    token_write: TokenWriteConfig
    replay: ReplayConfig
    store_reads: StoreReadsConfig
    cancel: CancelConfig
    load: LoadConfig
    soak: SoakConfig


FULL = Plan(
    token_write=TokenWriteConfig(
        concurrency=(1, 10, 50), tokens_per_conversation=2000, repetitions=5, profile_seconds=8
    ),
    replay=ReplayConfig(events=10_000, repetitions=5, profile_seconds=6),
    store_reads=StoreReadsConfig(
        population=PopulationConfig(conversations=100_000, events=1_000_000, deep_exchanges=250),
        rebuild=RebuildConfig(repetitions=2),
        reads=ReadLatencyConfig(list_pages=10, rounds=20),
        export=ExportConfig(repetitions=2),
    ),
    cancel=CancelConfig(runs=50),
    load=LoadConfig(
        conversations=200,  # the target load, measured first; the target is the search's N
        tokens_per_second=50,
        clients_per_conversation=1,
        stream_seconds=10,
        drain_seconds=5,
        steps=(1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 150, 300, 400, 600),
        profile_seconds=8,
    ),
    soak=SoakConfig(
        connections=1000,
        conversations=1000,
        hold_seconds=60,
        heartbeat_seconds=2,
        baseline_seconds=10,
    ),
)
# Small enough to finish in well under a minute; its figures are a smoke test only.
QUICK = Plan(
    token_write=TokenWriteConfig(concurrency=(1, 4), tokens_per_conversation=200, repetitions=2),
    replay=ReplayConfig(events=2_000, repetitions=2),
    store_reads=StoreReadsConfig(
        population=PopulationConfig(
            conversations=1_000, events=10_000, deep_exchanges=60, workers=1
        ),
        rebuild=RebuildConfig(repetitions=1),
        reads=ReadLatencyConfig(list_pages=3, rounds=2),
        export=ExportConfig(repetitions=2),
    ),
    cancel=CancelConfig(runs=3),
    load=LoadConfig(
        conversations=10,
        tokens_per_second=50,
        clients_per_conversation=1,
        stream_seconds=3,
        drain_seconds=3,
        steps=(2, 20),
        profile_seconds=0,
    ),
    soak=SoakConfig(
        connections=100,
        conversations=20,
        hold_seconds=5,
        heartbeat_seconds=1,
        baseline_seconds=2,
    ),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (prints the report unless --output)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable; one of {', '.join(BENCHMARKS)}); "
        "the report has only their sections and goes to standard output unless --output",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the Markdown report (default: {DEFAULT_OUTPUT}; "
        "with --quick or --only, standard output)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    chosen = set(args.only or BENCHMARKS)
    # A partial run never overwrites the full report by default.
    partial = args.quick or args.only
    output: Path | None = args.output or (None if partial else DEFAULT_OUTPUT)
    configure_logging(Settings(log_level="ERROR", log_format="json"))
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = load_average()
    progress("starting PostgreSQL and NATS")
    with bench_servers() as servers:
        token_write = (
            run_token_write(servers, plan.token_write) if "token_write" in chosen else None
        )
        replay = run_replay(servers, plan.replay) if "sse_replay" in chosen else None
        store_reads = (
            run_store_reads(servers, plan.store_reads) if "store_reads" in chosen else None
        )
        cancel = run_cancel(servers, plan.cancel) if "cancel" in chosen else None
        token_load = run_load(servers, plan.load) if "load" in chosen else None
        soak = run_soak(servers, plan.soak) if "soak" in chosen else None
        postgres = servers.postgres
    report = Report(
        started=started,
        seconds=elapsed_seconds(),
        quick=args.quick,
        machine=read_machine(),
        postgres=postgres,
        nats_embedded=servers.nats_embedded,
        token_write_config=plan.token_write,
        token_write=token_write,
        replay_config=plan.replay,
        replay=replay,
        store_reads=store_reads,
        cancel=cancel,
        token_load=token_load,
        soak=soak,
        load=(load_at_start, load_average()),
    )
    text = render(report)
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        progress(f"wrote {output}")


if __name__ == "__main__":
    main()
