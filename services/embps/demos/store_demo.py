"""The persistent store end to end: build a table of millions of rows on PM, measure lookups and
updates, kill a writer process mid-stream and prove recovery, then simulate power failures."""

import argparse
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from embps.api import OptimizerKind, OptimizerSpec, TableSpec
from embps.store import Store, Table

from . import power_failure, process_crash
from .process_crash import ProcessCrashResult
from .power_failure import PowerTrial
from .verify import Check
from .workload import random_keys, zipf_indices

COMMAND = "store-demo"
HELP = "build, benchmark, crash and recover a persistent embedding table"
TABLE = "embeddings"
BUILD_BATCH = 65536
KEY_STREAM = 1 << 20  # Zipf keys drawn up front so the timed loops measure the store, not the sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("data/store-demo"),
                        help="where the demo stores live (its previous stores there are removed)")
    parser.add_argument("--rows", type=_positive, default=2_000_000, help="rows of the big table")
    parser.add_argument("--dim", type=_positive, default=32, help="embedding dimension")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput measurement")
    parser.add_argument("--batch", type=_positive, default=512, help="keys per lookup / update call")
    parser.add_argument("--zipf", type=_above_one, default=1.1, help="Zipf exponent of the key popularity (> 1)")
    parser.add_argument("--crash-pool", type=_positive, default=200_000,
                        help="keys the crash writer draws from: half existing rows, half new (at most --rows)")
    parser.add_argument("--crash-batch-rows", type=_positive, default=16384, help="rows per writer batch")
    parser.add_argument("--crash-acks", type=_positive, default=40,
                        help="kill the writer after a random 50-150%% of this many acknowledged batches")
    parser.add_argument("--power-rows", type=_positive, default=20_000, help="rows of the power-failure table")
    parser.add_argument("--power-trials", type=_positive, default=5, help="simulated power failures")
    parser.add_argument("--seed", type=int, help="random seed (default: fresh; printed for reruns)")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _above_one(text: str) -> float:
    value = float(text)
    if not value > 1:  # the Zipf distribution is not normalizable at or below 1
        raise argparse.ArgumentTypeError(f"must be greater than 1, got {text}")
    return value


@dataclass(frozen=True)
class Paths:
    store: Path
    crash_pool: Path
    power_store: Path

    @classmethod
    def fresh(cls, data_dir: Path) -> "Paths":
        """Removes what a previous run left.  Only the demo's own entries: --data-dir may hold other files."""
        paths = cls(data_dir / "store", data_dir / "crash-pool.npy", data_dir / "power-failure")
        shutil.rmtree(paths.store, ignore_errors=True)
        shutil.rmtree(paths.power_store, ignore_errors=True)
        paths.crash_pool.unlink(missing_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        return paths


@dataclass(frozen=True)
class Throughput:
    build_rows_per_s: float
    lookup_keys_per_s: float
    update_keys_per_s: float


def run(args: argparse.Namespace) -> int:
    console = Console()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = np.random.default_rng(seed)
    paths = Paths.fresh(args.data_dir)
    pool_size = min(args.crash_pool, args.rows)
    console.rule("[bold]embps store demo")
    console.print(f"{args.rows:,} rows x dim {args.dim}, row-wise Adagrad, in {paths.store}  (seed {seed})")

    console.rule("1. Build")
    # Capacity leaves room for the new keys the crash writer inserts.
    spec = TableSpec(dim=args.dim, capacity=args.rows + pool_size,
                     optimizer=OptimizerSpec(OptimizerKind.ROWWISE_ADAGRAD, lr=0.05))
    with Store(paths.store) as store:
        table = store.create_table(TABLE, spec)
        keys, build_rate = _build(table, args.rows, rng, console)
        console.rule("2. Lookups and updates")
        lookup_rate, update_rate = _benchmark(table, keys, args, rng, console)

    console.rule("3. Real crash: SIGKILL a writer process mid-stream")
    crash = process_crash.run(paths.store, TABLE, keys, paths.crash_pool, pool_size,
                              min(args.crash_batch_rows, pool_size), args.crash_acks, rng, console)
    _print_crash(console, crash)

    console.rule("4. Simulated power failures")
    trials = power_failure.run(paths.power_store, args.power_rows, args.dim, args.power_trials, rng)
    _print_power(console, trials, args.power_rows)

    checks = crash.checks + [check for trial in trials for check in trial.checks]
    _print_summary(console, args.rows, Throughput(build_rate, lookup_rate, update_rate), crash, trials, checks)
    return 0 if all(check.passed for check in checks) else 1


def _build(table: Table, rows: int, rng: np.random.Generator, console: Console) -> tuple[np.ndarray, float]:
    """Assigns rows random rows in batches; returns the keys and rows/s spent in assign()."""
    keys = random_keys(rng, rows)
    in_store = 0.0
    columns = (TextColumn("Assigning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("build", total=rows)
        for lo in range(0, rows, BUILD_BATCH):
            batch = keys[lo:lo + BUILD_BATCH]
            values = rng.random((len(batch), table.dim), dtype=np.float32)
            start = time.perf_counter()
            table.assign(batch, values)
            in_store += time.perf_counter() - start
            progress.advance(task, len(batch))
    stats = table.stats()
    console.print(f"  {stats.rows:,} rows in {in_store:.2f} s of assign: "
                  f"[bold]{rows / in_store / 1e6:.2f} M rows/s[/]  "
                  f"(file {stats.file_bytes / 2**20:,.0f} MiB, {stats.slab_bytes} B per row with state)")
    return keys, rows / in_store


def _benchmark(table: Table, keys: np.ndarray, args: argparse.Namespace, rng: np.random.Generator,
               console: Console) -> tuple[float, float]:
    stream = keys[zipf_indices(rng, len(keys), max(KEY_STREAM, args.batch), args.zipf)]
    hot = len(np.unique(stream[:args.batch]))
    console.print(f"  batches of {args.batch} keys, Zipf a={args.zipf} ({hot} distinct keys in a batch)")
    out = np.empty((args.batch, table.dim), np.float32)
    with console.status("Looking up..."):
        lookup = _keys_per_second(lambda batch: table.lookup(batch, out=out), stream, args.batch, args.seconds)
    console.print(f"  lookup: [bold]{lookup / 1e6:.2f} M keys/s[/]")
    grads = rng.standard_normal((args.batch, table.dim), dtype=np.float32) * np.float32(0.01)
    with console.status("Updating..."):
        update = _keys_per_second(lambda batch: table.update(batch, grads), stream, args.batch, args.seconds)
    console.print(f"  update (row-wise Adagrad, persistent on return): [bold]{update / 1e6:.2f} M keys/s[/]")
    return lookup, update


def _keys_per_second(op, stream: np.ndarray, batch: int, seconds: float) -> float:
    """Calls op on consecutive batches of stream (wrapping around) for about `seconds`."""
    n_batches = len(stream) // batch
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        lo = (done % n_batches) * batch
        op(stream[lo:lo + batch])
        done += 1
    return done * batch / elapsed


def _print_checks(console: Console, checks: list[Check]) -> None:
    for check in checks:
        verdict = "[bold green]PASS[/]" if check.passed else "[bold red]FAIL[/]"
        console.print(f"  {verdict} {check.name}: {check.detail}")


def _print_crash(console: Console, crash: ProcessCrashResult) -> None:
    console.print(f"  reopened in {crash.recovery_wall_s * 1e3:.1f} ms "
                  f"(index and allocator rebuilt in {crash.recovery_native_s * 1e3:.1f} ms)")
    _print_checks(console, crash.checks)


def _print_power(console: Console, trials: list[PowerTrial], rows: int) -> None:
    console.print(f"  {rows:,}-row table, power cut at a random persist point, "
                  f"each dirty cache line survives with p={power_failure.EVICT_PROB}")
    table = RichTable("trial", "crash point", "acked updates", "in-flight landed", "verified")
    for i, trial in enumerate(trials, 1):
        passed = all(check.passed for check in trial.checks)
        table.add_row(str(i), str(trial.crash_at), str(trial.acked_updates),
                      f"{trial.in_flight_landed} / {trial.in_flight_rows}",
                      "[green]PASS[/]" if passed else "[red]FAIL[/]")
    console.print(table)
    _print_checks(console, [check for trial in trials for check in trial.checks if not check.passed])


def _print_summary(console: Console, rows: int, rates: Throughput, crash: ProcessCrashResult,
                   trials: list[PowerTrial], checks: list[Check]) -> None:
    def verdict(items: list[Check]) -> str:
        return "[bold green]PASS[/]" if all(c.passed for c in items) else "[bold red]FAIL[/]"

    power_checks = [check for trial in trials for check in trial.checks]
    table = RichTable(title="Summary", show_header=False)
    table.add_row("rows", f"{rows:,}")
    table.add_row("build", f"{rates.build_rows_per_s / 1e6:.2f} M rows/s")
    table.add_row("lookup", f"{rates.lookup_keys_per_s / 1e6:.2f} M keys/s")
    table.add_row("update", f"{rates.update_keys_per_s / 1e6:.2f} M keys/s")
    table.add_row("recovery after SIGKILL",
                  f"{crash.recovery_wall_s:.3f} s open, {crash.recovery_native_s:.3f} s rebuild")
    table.add_row("SIGKILL verification", f"{verdict(crash.checks)}: {crash.acked_batches} acked batches, "
                  f"{crash.verified_rows:,} rows exact, {crash.untouched_rows:,} untouched by checksum")
    table.add_row("power-failure verification", f"{verdict(power_checks)}: {len(trials)} trials, "
                  f"{sum(t.acked_updates for t in trials):,} acked updates")
    console.print(table)
    failed = [check.name for check in checks if not check.passed]
    if failed:
        console.print(f"[bold red]VERIFICATION FAILED: {', '.join(failed)}")
    else:
        console.print("[bold green]All verifications passed.")
