"""`python -m bench [--quick] [--output PATH]`: run the benchmarks, write the report."""

import argparse
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.cancel import CancelConfig, run_cancel
from bench.export import ExportConfig
from bench.machine import load_average, read_machine
from bench.measure import elapsed_seconds, progress
from bench.population import PopulationConfig
from bench.read_latency import ReadLatencyConfig
from bench.rebuild import RebuildConfig
from bench.report import Report, render
from bench.servers import bench_servers
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


FULL = Plan(
    token_write=TokenWriteConfig(
        concurrency=(1, 10, 50), tokens_per_conversation=2000, repetitions=5
    ),
    replay=ReplayConfig(events=10_000, repetitions=5),
    store_reads=StoreReadsConfig(
        population=PopulationConfig(conversations=100_000, events=1_000_000, deep_exchanges=250),
        rebuild=RebuildConfig(repetitions=2),
        reads=ReadLatencyConfig(list_pages=10, rounds=20),
        export=ExportConfig(repetitions=2),
    ),
    cancel=CancelConfig(runs=50),
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
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (prints the report unless --output)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the Markdown report (default: {DEFAULT_OUTPUT}; "
        "with --quick, standard output)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    output: Path | None = args.output or (None if args.quick else DEFAULT_OUTPUT)
    configure_logging(Settings(log_level="ERROR", log_format="json"))
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = load_average()
    progress("starting PostgreSQL and NATS")
    with bench_servers() as servers:
        token_write = run_token_write(servers, plan.token_write)
        replay = run_replay(servers, plan.replay)
        store_reads = run_store_reads(servers, plan.store_reads)
        cancel = run_cancel(servers, plan.cancel)
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
