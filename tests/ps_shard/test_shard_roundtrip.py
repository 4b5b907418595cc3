"""Round trips through PSClient against three shard processes, on both data paths."""

import numpy as np
import pytest
from helpers.reference_optimizers import step, sum_repeated

from embps.api import InitializerSpec, OptimizerSpec, TableSpec, state_floats, wire
from embps.client import PSClient
from embps.common.local_cluster import LocalCluster
from embps.store import initial_rows

DIM = 16
HYPER = {"sgd": {"lr": 0.3}, "adagrad": {"lr": 0.1, "eps": 1e-8}, "rowwise_adagrad": {"lr": 0.1, "eps": 1e-8},
         "adam": {"lr": 0.01, "eps": 1e-8, "beta1": 0.9, "beta2": 0.999}}


def make_spec(kind="adagrad", dim=DIM, missing_keys="initialize"):
    return TableSpec(dim=dim, capacity=100_000, optimizer=OptimizerSpec(kind, **HYPER[kind]),
                     initializer=InitializerSpec("uniform", 0.05, seed=7), missing_keys=missing_keys)


@pytest.mark.parametrize("kind", sorted(HYPER))
def test_updates_match_numpy_reference_across_shards(cluster_client, kind):
    name = f"opt_{kind}_{cluster_client.config.data_path}"
    spec = make_spec(kind)
    cluster_client.create_table(name, spec)
    rng = np.random.default_rng(1)
    universe = rng.integers(0, 2**63, 300, dtype=np.uint64)
    expected = {int(k): (r, np.zeros(state_floats(kind, DIM), np.float32))
                for k, r in zip(universe, initial_rows(spec, universe))}
    updated = set()
    for _ in range(6):
        keys = rng.choice(universe, 500)   # repeats: gradients of a key are summed
        grads = rng.normal(0, 1, (500, DIM)).astype(np.float32)
        cluster_client.update(name, keys, grads)
        updated.update(int(k) for k in keys)
        uniq, summed = sum_repeated(keys, grads)
        for k, g in zip(uniq, summed):
            row, state = expected[int(k)]
            expected[int(k)] = step(kind, row, state, g, **HYPER[kind])
    order = rng.permutation(universe)
    rows, state, found = cluster_client.lookup(name, order, with_state=True)
    np.testing.assert_allclose(rows, [expected[int(k)][0] for k in order], atol=1e-6)
    np.testing.assert_allclose(state, [expected[int(k)][1] for k in order], atol=1e-6)
    assert found.tolist() == [int(k) in updated for k in order]
    np.testing.assert_array_equal(cluster_client.lookup(name, order), rows)
    cluster_client.drop_table(name)


def test_keys_spread_over_shards_and_order_is_kept(cluster_client):
    name = f"order_{cluster_client.config.data_path}"
    cluster_client.create_table(name, make_spec("sgd"))
    keys = np.arange(3000, dtype=np.uint64) * 7919
    rows = np.arange(3000 * DIM, dtype=np.float32).reshape(3000, DIM)
    cluster_client.assign(name, keys, rows)
    per_shard = [info.rows for stats in cluster_client.stats() for info in stats.tables if info.name == name]
    assert sum(per_shard) == 3000 and min(per_shard) > 800   # jump hash spreads evenly
    shuffled = np.random.default_rng(2).permutation(3000)
    np.testing.assert_array_equal(cluster_client.lookup(name, keys[shuffled]), rows[shuffled])
    assert cluster_client.describe_table(name).rows == 3000
    assert cluster_client.delete(name, keys[:100]) == 100
    assert cluster_client.describe_table(name).rows == 2900
    cluster_client.drop_table(name)


def test_missing_keys_initialize_or_report(cluster_client):
    path = cluster_client.config.data_path
    init_spec, report_spec = make_spec(), make_spec(missing_keys="report")
    cluster_client.create_table(f"init_{path}", init_spec)
    cluster_client.create_table(f"report_{path}", report_spec)
    keys = np.array([5, 2**64 - 2, 12345678901234], np.uint64)
    np.testing.assert_array_equal(cluster_client.lookup(f"init_{path}", keys), initial_rows(init_spec, keys))
    rows, state, found = cluster_client.lookup(f"report_{path}", keys, with_state=True)
    assert not found.any() and not rows.any() and not state.any()
    cluster_client.update(f"report_{path}", keys[:1], np.ones((1, DIM), np.float32))
    rows, _, found = cluster_client.lookup(f"report_{path}", keys, with_state=True)
    assert found.tolist() == [True, False, False] and rows[0].any()
    for name in (f"init_{path}", f"report_{path}"):
        cluster_client.drop_table(name)


def test_empty_batches(cluster_client):
    name = f"empty_{cluster_client.config.data_path}"
    cluster_client.create_table(name, make_spec())
    assert cluster_client.lookup(name, np.array([], np.uint64)).shape[0] == 0
    cluster_client.update(name, np.array([], np.uint64), np.empty((0, DIM), np.float32))
    cluster_client.drop_table(name)


def test_export_then_import_into_a_fresh_cluster_reproduces_every_row(cluster, tmp_path):
    spec = make_spec("adam")
    with PSClient(cluster.config) as source:
        source.create_table("moving", spec)
        rng = np.random.default_rng(3)
        keys = rng.integers(0, 2**62, 5000, dtype=np.uint64)
        for _ in range(3):
            source.update("moving", keys, rng.normal(0, 1, (5000, DIM)).astype(np.float32))
        before = source.lookup("moving", keys, with_state=True)
        chunks = list(source.export("moving", chunk_rows=700))
        assert sum(len(k) for k, _, _ in chunks) == len(np.unique(keys))
        # a fresh cluster with a different shard count: every key moves to its new owner
        with LocalCluster(tmp_path, 2) as fresh, PSClient(fresh.config) as target:
            target.create_table("moving", spec)
            assert target.import_rows("moving", iter(chunks)) == len(np.unique(keys))
            after = target.lookup("moving", keys, with_state=True)
            for a, b in zip(before, after):
                np.testing.assert_array_equal(a, b)
            assert target.describe_table("moving").rows == len(np.unique(keys))
        source.drop_table("moving")


def test_create_if_not_exists_is_idempotent_and_checks_the_spec(cluster):
    with PSClient(cluster.config) as client:
        client.create_table("idem", make_spec(), if_not_exists=True)
        client.create_table("idem", make_spec(), if_not_exists=True)
        assert "idem" in client.list_tables()
        assert client.table_spec("idem") == make_spec()
        with pytest.raises(Exception, match="different spec"):
            client.create_table("idem", make_spec(dim=8), if_not_exists=True)
        client.drop_table("idem")
        assert "idem" not in client.list_tables()


def test_refresh_stale_answers_only_rows_beyond_the_bound(cluster_client):
    """Versions count contributions across shards; a refresh answers only rows more than the bound ahead,
    with their versions, rows and state, at their positions in the request."""
    name = f"refresh_{cluster_client.config.data_path}"
    cluster_client.create_table(name, make_spec("adagrad"))
    keys = np.arange(40, dtype=np.uint64) * 7919   # spread over the three shards
    grads = np.ones((40, DIM), np.float32)
    cluster_client.update(name, keys, grads)                                    # every row: version 1
    cluster_client.update(name, keys[::2], grads[::2], counts=np.full(20, 3))   # even rows: 4
    everything = cluster_client.refresh_stale(name, keys, np.full(40, wire.NO_VERSION, np.uint64), 0,
                                              with_state=True)
    assert everything.positions.tolist() == list(range(40))
    assert everything.versions.tolist() == [4, 1] * 20
    rows, state, _ = cluster_client.lookup(name, keys, with_state=True)
    np.testing.assert_array_equal(everything.rows, rows)
    np.testing.assert_array_equal(everything.state, state)
    held = np.ones(40, np.uint64)   # a mirror at version 1 everywhere, bound 2: even rows are 3 ahead
    stale = cluster_client.refresh_stale(name, keys, held, 2)
    assert stale.positions.tolist() == list(range(0, 40, 2)) and stale.state is None
    np.testing.assert_array_equal(stale.rows, rows[::2])
    assert len(cluster_client.refresh_stale(name, keys, held, 3).positions) == 0
    assert len(cluster_client.refresh_stale(name, keys[:0], held[:0], 0).positions) == 0
    cluster_client.drop_table(name)
