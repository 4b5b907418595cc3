"""Shared by the RDMA tests: made-up memory keys and addresses, and a table with a request whose keys
come in runs of adjacent slabs with missing keys between them."""

from __future__ import annotations

import numpy as np

from embps.api import OptimizerSpec, TableSpec

POOL_LKEY, SCRATCH_LKEY, RKEY = 0x1111, 0x2222, 0x3333
REMOTE_BASE = 0x7F00_0000_0000


def sgd_table(store, name="t", dim=32, rows=400, missing_keys="initialize"):
    table = store.create_table(name, TableSpec(dim=dim, capacity=4096, optimizer=OptimizerSpec("sgd"),
                                               missing_keys=missing_keys))
    keys = np.arange(rows, dtype=np.uint64)
    table.assign(keys, np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32))
    return table


def request_keys(rng) -> np.ndarray:
    """512 keys: runs of consecutive present keys (adjacent slabs), shuffled runs, 112 missing keys."""
    present = np.arange(400, dtype=np.uint64)
    runs = np.split(present, np.sort(rng.choice(np.arange(1, 400), 60, replace=False)))
    rng.shuffle(runs)
    missing = np.arange(10_000, 10_112, dtype=np.uint64)
    pieces = []
    for i, run in enumerate(runs):
        pieces.append(run)
        pieces.append(missing[i * 2:i * 2 + 2])
    keys = np.concatenate(pieces)
    assert len(keys) == 512 and len(np.unique(keys)) == 512
    return keys
