"""The victim of the store demo's real crash: streams Assign batches until it is killed.

Batch b writes a pseudo-random subset of a key pool with pseudo-random rows and optimizer state,
all drawn from a generator seeded with (seed, b): the parent recomputes exactly what any batch wrote.
Around each assign() it prints "begin <id>" and, only after assign() returned, i.e. once the batch
is persistent, "ack <id>": the acknowledgement the parent holds the store to after the SIGKILL.

Run by the demo as `python -m embps.demos.crash_writer --store DIR --table NAME --pool FILE ...`.
"""

import argparse
import itertools

import numpy as np

from embps.store import Store


def make_batch(pool_size: int, seed: int, batch_id: int, batch_rows: int,
               width: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct pool positions, float32 values (n, width) for their rows then state).

    Positions are distinct so no 'last one wins' within a batch; values are in [0, 1) (non-negative, as
    Adagrad state must be) with 24 random bits, so every float is exact and comparable with ==.
    """
    rng = np.random.default_rng([seed, batch_id])
    taken = np.zeros(pool_size, bool)
    taken[rng.integers(0, pool_size, batch_rows)] = True
    positions = np.flatnonzero(taken)
    return positions, rng.random((len(positions), width), dtype=np.float32)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store directory")
    parser.add_argument("--table", required=True)
    parser.add_argument("--pool", required=True, help=".npy file of uint64 keys the batches draw from")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--batch-rows", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    pool = np.load(args.pool)
    with Store(args.store) as store:
        table = store.table(args.table)
        # No end: the parent kills us mid-stream (or we die of a broken pipe if the parent is gone).
        for batch_id in itertools.count():
            positions, values = make_batch(len(pool), args.seed, batch_id, args.batch_rows,
                                           table.dim + table.state_floats)
            print("begin", batch_id, flush=True)
            table.assign(pool[positions], values[:, :table.dim], values[:, table.dim:])
            print("ack", batch_id, flush=True)


if __name__ == "__main__":
    main()
