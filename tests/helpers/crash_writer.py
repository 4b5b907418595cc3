"""Child process of the kill -9 test: streams deterministic updates, printing each batch id once acknowledged."""

import sys

import numpy as np

from embps.store import Store

N_KEYS, DIM, BATCH = 5000, 16, 256


def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + b)
    return rng.integers(0, N_KEYS, BATCH).astype(np.uint64), rng.standard_normal((BATCH, DIM)).astype(np.float32)


def main(path: str) -> None:
    table = Store(path).table("emb")
    for b in range(1_000_000):
        table.update(*batch(b))
        print(b, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
