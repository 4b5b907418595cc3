"""persist="none", the gateways' caches: no flushes, updates of present rows in place.  Results must be
bit-identical to a persistent store's, and the index and allocator must stay consistent."""

import numpy as np
import pytest

from embps.api import OptimizerSpec, TableSpec
from embps.store import Store


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_volatile_updates_equal_persistent_ones(tmp_path, kind):
    spec = TableSpec(dim=8, capacity=5000, optimizer=OptimizerSpec(kind, lr=0.05, eps=1e-8))
    rng = np.random.default_rng(4)
    with Store(tmp_path / "cache", persist="none") as cache, Store(tmp_path / "pm") as pm:
        tables = [cache.create_table("t", spec), pm.create_table("t", spec)]
        for step in range(30):
            keys = rng.integers(0, 3000, 700)
            grads = rng.normal(0, 1, (700, 8)).astype(np.float32)
            for table in tables:
                table.update(keys, grads)
                if step % 7 == 3:   # deletes and re-inserts mix copy-on-write slabs with in-place ones
                    table.delete(keys[:50])
        everything = np.arange(3000)
        volatile, persistent = (t.lookup_with_state(everything) for t in tables)
        for a, b in zip(volatile, persistent):
            np.testing.assert_array_equal(a, b)
        for table in tables:
            table.check()
        assert tables[0].stats().rows == tables[1].stats().rows
        assert tables[0].stats().slabs_used == tables[0].stats().rows   # in place: no slab left behind
