"""SIGKILL a shard during a stream of acknowledged updates, restart it: every acknowledged update is
there (an update is acknowledged only once persistent)."""

import threading

import numpy as np
import pytest
from helpers.reference_optimizers import step, sum_repeated

from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.client import ClusterConfig, PSClient, ShardError
from embps.common.local_cluster import LocalShard
from embps.store import initial_rows

DIM = 8
HYPER = {"lr": 0.05, "eps": 1e-8}
SPEC = TableSpec(dim=DIM, capacity=50_000, optimizer=OptimizerSpec("adagrad", **HYPER),
                 initializer=InitializerSpec("uniform", 0.1, seed=3))


@pytest.mark.parametrize("data_path", ["tcp", "grpc"])
def test_acknowledged_updates_survive_kill9(tmp_path, data_path):
    shard = LocalShard(tmp_path / data_path)
    rng = np.random.default_rng(11)
    universe = np.arange(1, 2001, dtype=np.uint64) * 104729
    acked: list[tuple[np.ndarray, np.ndarray]] = []
    in_flight: list = []
    stop = threading.Event()
    try:
        client = PSClient(ClusterConfig.from_addresses([shard.address], data_path=data_path, deadline_seconds=5))
        client.create_table("t", SPEC)

        def writer():
            while not stop.is_set():
                keys = rng.choice(universe, 256)
                grads = rng.normal(0, 1, (256, DIM)).astype(np.float32)
                in_flight[:] = [(keys, grads)]
                try:
                    client.update("t", keys, grads)
                except ShardError:
                    return   # the shard died: this update was not acknowledged
                acked.append((keys, grads))
                in_flight.clear()

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acked) < 40:
            thread.join(0.01)
        shard.kill()
        thread.join(30)
        assert not thread.is_alive()
        stop.set()
        shard.start()   # same ports and data directory
        rows, state, _ = client.lookup("t", universe, with_state=True)
        client.close()
    finally:
        shard.stop()
    assert len(acked) >= 40
    expected = {int(k): (r, np.zeros(DIM, np.float32)) for k, r in zip(universe, initial_rows(SPEC, universe))}
    for keys, grads in acked:
        uniq, summed = sum_repeated(keys, grads)
        for k, g in zip(uniq, summed):
            expected[int(k)] = step("adagrad", *expected[int(k)], g, **HYPER)
    exact = np.array([expected[int(k)][0] for k in universe])
    if not in_flight:
        np.testing.assert_allclose(rows, exact, atol=1e-6)
        return
    # The update in flight when the shard died may be applied (per row), or not.
    after = dict(expected)
    keys, grads = in_flight[0]
    uniq, summed = sum_repeated(keys, grads)
    for k, g in zip(uniq, summed):
        after[int(k)] = step("adagrad", *expected[int(k)], g, **HYPER)
    for i, k in enumerate(universe):
        ok_before = np.allclose(rows[i], expected[int(k)][0], atol=1e-6)
        ok_after = np.allclose(rows[i], after[int(k)][0], atol=1e-6)
        assert ok_before or ok_after, f"key {k}: neither its acknowledged nor its in-flight value"
