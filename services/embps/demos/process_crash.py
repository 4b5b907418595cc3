"""A real process crash: a writer process streams persistent Assign batches into the store and is
SIGKILLed mid-stream; the reopened store must hold every acknowledged batch bit for bit."""

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from embps.store import Store

from .crash_writer import make_batch
from .verify import Check, RowImage, check_invariants, check_recovered_rows, check_row_count, table_digest
from .workload import random_keys

log = logging.getLogger(__name__)

WRITER_TIMEOUT_S = 60  # a writer that stalls this long is killed and the phase fails


@dataclass(frozen=True)
class WriterPlan:
    """Everything the writer's batches are a function of; the parent recomputes them from it."""

    store: Path
    table: str
    pool_file: Path
    seed: int
    batch_rows: int

    def command(self) -> list[str]:
        return [sys.executable, "-m", "embps.demos.crash_writer", "--store", str(self.store), "--table", self.table,
                "--pool", str(self.pool_file), "--seed", str(self.seed), "--batch-rows", str(self.batch_rows)]


@dataclass(frozen=True)
class ProcessCrashResult:
    acked_batches: int
    verified_rows: int      # pool keys compared value by value
    untouched_rows: int     # rows outside the pool, compared by checksum
    recovery_wall_s: float  # Store(path) as the caller sees it
    recovery_native_s: float
    checks: list[Check]


def run(store_path: Path, table_name: str, built_keys: np.ndarray, pool_file: Path, pool_size: int,
        batch_rows: int, kill_acks: int, rng: np.random.Generator, console: Console) -> ProcessCrashResult:
    """Kills a writer of pool_size keys (half of them rows of the table, half new) after about kill_acks
    acknowledged batches of up to batch_rows rows, reopens the store and verifies it."""
    pool, untouched = _choose_pool(built_keys, pool_size, rng)
    with Store(store_path) as store:
        table = store.table(table_name)
        before = RowImage.read(table, pool)
        digest_before = table_digest(table, untouched)
    np.save(pool_file, pool)
    plan = WriterPlan(store_path, table_name, pool_file, int(rng.integers(2**31)), batch_rows)
    kill_after = int(rng.integers(max(kill_acks // 2, 1), kill_acks * 3 // 2 + 1))
    with console.status(f"Writer streaming batches of {batch_rows:,} rows; SIGKILL after {kill_after} acks..."):
        acks, kill_check = _stream_and_kill(plan, kill_after, rng)

    start = time.perf_counter()
    with Store(store_path) as store:
        wall = time.perf_counter() - start
        table = store.table(table_name)
        got = RowImage.read(table, pool)
        acked, with_in_flight, in_flight_rows = _expected_images(plan, pool, before, acks, table.dim)
        rows_check, _ = check_recovered_rows(got, acked, with_in_flight, in_flight_rows)
        digest_after = table_digest(table, untouched)
        # New pool keys present after recovery were each just proven acknowledged or in flight.
        expected_rows = len(built_keys) + int((got.found & ~before.found).sum())
        checks = [kill_check, rows_check,
                  Check("untouched rows unchanged", digest_after == digest_before,
                        f"{len(untouched):,} rows, sha256 {digest_after[:16]}"),
                  check_row_count(table, expected_rows), check_invariants(table)]
        return ProcessCrashResult(len(acks), len(pool), len(untouched), wall, store.recovery_seconds(), checks)


def _choose_pool(built_keys: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pool, untouched): the writer overwrites existing rows and inserts new ones; the rest of the
    table must come through unchanged."""
    chosen = np.zeros(len(built_keys), bool)
    chosen[rng.choice(len(built_keys), size // 2, replace=False)] = True
    pool = np.concatenate([built_keys[chosen], random_keys(rng, size - size // 2, fresh=True)])
    return pool, built_keys[~chosen]


def _stream_and_kill(plan: WriterPlan, kill_after: int, rng: np.random.Generator) -> tuple[list[int], Check]:
    """Runs the writer and SIGKILLs it inside the first assign() it begins after kill_after acks, at a
    random point of it; returns every ack the writer sent."""
    proc = subprocess.Popen(plan.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None   # both are pipes
    log.info("writer pid %d: %s", proc.pid, " ".join(plan.command()))
    watchdog = threading.Timer(WRITER_TIMEOUT_S, proc.kill)
    watchdog.start()
    acks: list[int] = []
    write_seconds: list[float] = []
    begun = time.perf_counter()
    try:
        for line in proc.stdout:
            event, batch_id = line.split()
            if event == "ack":
                acks.append(int(batch_id))
                write_seconds.append(time.perf_counter() - begun)
            elif len(acks) < kill_after:
                begun = time.perf_counter()
            else:  # the writer has begun writing a batch: kill it somewhere inside, as long as writes take
                time.sleep(rng.uniform(0, float(np.median(write_seconds))))
                proc.send_signal(signal.SIGKILL)
                log.info("sent SIGKILL to writer pid %d in batch %s", proc.pid, batch_id)
                break
        # The batch may have finished before the kill: acks still in the pipe were sent, so they count.  A
        # line the kill cut short is no ack (its batch is the one in flight, checked as all or nothing).
        acks += [int(line.split()[1]) for line in proc.stdout
                 if line.endswith("\n") and line.startswith("ack ") and len(line.split()) == 2]
        proc.wait()
    finally:
        watchdog.cancel()
    killed = proc.returncode == -signal.SIGKILL and len(acks) >= kill_after
    detail = (f"writer pid {proc.pid} SIGKILLed after {len(acks)} acknowledged batches" if killed else
              f"writer exited with {proc.returncode} after {len(acks)} acks: {proc.stderr.read().strip()[-500:]}")
    proc.stderr.close()
    return acks, Check("writer killed mid-stream", killed, detail)


def _expected_images(plan: WriterPlan, pool: np.ndarray, before: RowImage, acks: list[int],
                     dim: int) -> tuple[RowImage, RowImage, int]:
    """(after the acked batches, after those and the batch in flight at the kill, keys in flight)."""
    acked = before.copy()
    for batch_id in acks:
        _write(acked, plan, len(pool), batch_id, dim)
    with_in_flight = acked.copy()
    return acked, with_in_flight, _write(with_in_flight, plan, len(pool), len(acks), dim)


def _write(image: RowImage, plan: WriterPlan, pool_size: int, batch_id: int, dim: int) -> int:
    """Applies the writer's batch batch_id to image, in place; returns how many keys it writes."""
    positions, values = make_batch(pool_size, plan.seed, batch_id, plan.batch_rows, dim + image.state.shape[1])
    image.rows[positions], image.state[positions], image.found[positions] = values[:, :dim], values[:, dim:], True
    image.versions[positions] += 1   # an assign advances a row's version by one (positions are distinct)
    return len(positions)
