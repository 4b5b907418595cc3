"""Simulated power failures: the store's crash simulator keeps PM stores volatile until persisted and
cuts the power at a random persist point, letting each dirty cache line reach the file with
probability 1/2.  Acknowledged updates must survive exactly, recomputed with the same optimizer kernel."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embps.api import OptimizerKind, OptimizerSpec, SimulatedCrash, TableSpec
from embps.store import CrashSimulation, Store, apply_optimizer

from .verify import Check, RowImage, check_invariants, check_recovered_rows, check_row_count
from .workload import random_keys

TABLE = "small"
EVICT_PROB = 0.5
UPDATE_KEYS = 512
MAX_UPDATES = 200  # per trial; an update of <= 1024 keys reaches 2 persist points


@dataclass(frozen=True)
class PowerTrial:
    crash_at: int
    acked_updates: int
    in_flight_landed: int
    in_flight_rows: int
    checks: list[Check]


def run(path: Path, rows: int, dim: int, trials: int, rng: np.random.Generator) -> list[PowerTrial]:
    """trials power failures in a row on one table of rows rows (plus 10% new keys the updates insert)."""
    pool = np.concatenate([random_keys(rng, rows), random_keys(rng, rows // 10 + 1, fresh=True)])
    spec = TableSpec(dim=dim, capacity=len(pool), optimizer=OptimizerSpec(OptimizerKind.ROWWISE_ADAGRAD, lr=0.05))
    with Store(path) as store:
        table = store.create_table(TABLE, spec)
        table.assign(pool[:rows], rng.random((rows, dim), dtype=np.float32))
        image = RowImage.read(table, pool)
    results = []
    for _ in range(trials):
        trial, image = _trial(path, spec, pool, image, rng)
        results.append(trial)
    return results


def _trial(path: Path, spec: TableSpec, pool: np.ndarray, image: RowImage,
           rng: np.random.Generator) -> tuple[PowerTrial, RowImage]:
    """Updates until the simulated power failure, reopens, verifies; returns the recovered image."""
    crash_at = int(rng.integers(1, 2 * MAX_UPDATES + 1))
    sim = CrashSimulation(crash_at=crash_at, evict_prob=EVICT_PROB, seed=int(rng.integers(2**63)))
    acked, in_flight, acked_updates = image, None, 0
    with Store(path, crash_simulation=sim) as store:
        table = store.table(TABLE)
        for _ in range(crash_at):  # every update reaches at least one persist point, so this crashes
            idx = np.unique(rng.integers(0, len(pool), UPDATE_KEYS))
            grads = rng.standard_normal((len(idx), spec.dim), dtype=np.float32)
            after = _updated(spec, acked, idx, grads)
            try:
                table.update(pool[idx], grads)
            except SimulatedCrash:
                in_flight = (after, len(idx))
                break
            acked, acked_updates = after, acked_updates + 1
    if in_flight is None:
        return PowerTrial(crash_at, acked_updates, 0, 0, [Check("simulated power failure", False,
                                                                "the crash point was never reached")]), acked
    with Store(path) as store:
        table = store.table(TABLE)
        got = RowImage.read(table, pool)
        rows_check, landed = check_recovered_rows(got, acked, *in_flight)
        checks = [rows_check, check_row_count(table, int(got.found.sum())), check_invariants(table)]
    return PowerTrial(crash_at, acked_updates, landed, in_flight[1], checks), got


def _updated(spec: TableSpec, image: RowImage, idx: np.ndarray, grads: np.ndarray) -> RowImage:
    """image after the table's optimizer applied grads to the (distinct) keys at idx, each row's version one
    further."""
    out = image.copy()
    rows, state = out.rows[idx], out.state[idx]
    apply_optimizer(spec, rows, state, grads)
    out.rows[idx], out.state[idx], out.found[idx] = rows, state, True
    out.versions[idx] += 1   # one contribution per distinct key
    return out
