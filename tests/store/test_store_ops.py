"""Round trips through a real store on real files: values, optimizers, recovery, export, gather."""

import threading

import numpy as np
import pytest

from embps.api import InitializerSpec, InvalidArgument, OptimizerSpec, TableSpec, state_floats
from embps.api.wire import NO_VERSION
from embps.store import Store, apply_optimizer, initial_rows
from helpers.reference_optimizers import step

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam"]


def make_table(store, kind="adagrad", dim=8, capacity=10_000, name="emb", seed=7):
    spec = TableSpec(dim, capacity, OptimizerSpec(kind, lr=0.1, eps=1e-8),
                     InitializerSpec("uniform", scale=0.05, seed=seed))
    return store.create_table(name, spec)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_assign_lookup_round_trip_survives_reopen(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 3000, dtype=np.int64)
    rows = rng.standard_normal((3000, 16)).astype(np.float32)
    with Store(tmp_path / "s") as s:
        t = make_table(s, "adagrad", dim=16)
        state = rng.random((3000, 16)).astype(np.float32)
        t.assign(keys, rows, state)
        np.testing.assert_array_equal(t.lookup(keys), rows)
    with Store(tmp_path / "s") as s:
        t = s.table("emb")
        got_rows, got_state, found = t.lookup_with_state(keys)
        np.testing.assert_array_equal(got_rows, rows)
        np.testing.assert_array_equal(got_state, state)
        assert found.all() and t.stats().rows == 3000
        t.check()


def test_store_creates_missing_parent_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store("data/shard0") as s:   # relative, from an empty directory, as the README's example
        make_table(s).assign([1], np.ones((1, 8)))
    assert (tmp_path / "data" / "shard0" / "emb.table").is_file()
    with Store(tmp_path / "data" / "shard0") as s:
        np.testing.assert_array_equal(s.table("emb").lookup([1]), np.ones((1, 8)))


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_fused_optimizer_matches_numpy_reference(store, kind):
    dim = 8
    t = make_table(store, kind, dim=dim)
    rng = np.random.default_rng(1)
    keys = np.arange(50, dtype=np.uint64)
    rows = {int(k): r for k, r in zip(keys, initial_rows(t.spec, keys))}
    states = {int(k): np.zeros(state_floats(kind, dim), np.float32) for k in keys}
    for _ in range(20):
        batch = rng.choice(keys, 64)    # repeats: gradients of a key are summed
        grads = rng.standard_normal((64, dim)).astype(np.float32)
        t.update(batch, grads)
        for k in np.unique(batch):
            g = grads[batch == k].sum(axis=0, dtype=np.float32)
            rows[int(k)], states[int(k)] = step(kind, rows[int(k)], states[int(k)], g)
    got_rows, got_state, _ = t.lookup_with_state(keys)
    np.testing.assert_allclose(got_rows, np.stack([rows[int(k)] for k in keys]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_state, np.stack([states[int(k)] for k in keys]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_plain_memory_kernel_equals_table_update(store, kind):
    t = make_table(store, kind, dim=4)
    keys = np.array([5, 6, 7], np.uint64)
    grads = np.full((3, 4), 0.5, np.float32)
    rows, state = initial_rows(t.spec, keys), np.zeros((3, t.state_floats), np.float32)
    apply_optimizer(t.spec, rows, state, grads)
    t.update(keys, grads)
    got_rows, got_state, _ = t.lookup_with_state(keys)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_state, state)


def test_missing_keys_read_as_deterministic_initial_rows(tmp_path):
    keys = np.array([1, 2, 2**64 - 2], np.uint64)
    with Store(tmp_path / "a") as a, Store(tmp_path / "b") as b:
        ta, tb = make_table(a, seed=3), make_table(b, seed=3)
        rows, _, found = ta.lookup_with_state(keys)
        assert not found.any() and ta.stats().rows == 0     # reads never insert
        np.testing.assert_array_equal(rows, tb.lookup(keys))
        assert np.abs(rows).max() <= 0.05 and len(np.unique(rows)) == rows.size
        other = make_table(b, seed=4, name="other")
        assert not np.array_equal(rows, other.lookup(keys))


def test_delete_export_and_drop(store):
    t = make_table(store)
    keys = np.arange(1000, dtype=np.uint64) * 7919
    rows = np.tile(np.arange(1000, dtype=np.float32)[:, None], (1, 8))
    t.assign(keys, rows)
    assert t.delete(keys[:400]) == 400
    assert t.delete(keys[:400]) == 0
    got = {int(k): r for ks, rs, _ in t.export(batch=100) for k, r in zip(ks, rs)}
    assert set(got) == set(int(k) for k in keys[400:])
    assert all(got[int(k)][0] == i + 400 for i, k in enumerate(keys[400:]))
    t.check()
    assert store.tables() == ["emb"]
    store.drop_table("emb")
    assert store.tables() == []
    assert not list(store.path.glob("*.table"))


def test_empty_batches_are_no_ops(store):
    t = make_table(store)
    assert t.lookup([]).shape == (0, 8)
    t.update([], np.empty((0, 8)))
    t.assign([], np.empty((0, 8)))
    assert t.delete([]) == 0 and t.stats().rows == 0


def test_gather_list_points_at_pool_rows(store):
    t = make_table(store, "rowwise_adagrad", dim=4)
    t.assign([11, 12], np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32))
    base, length = t.pool_region()
    with t.gather([12, 99, 11], with_state=True) as g:
        e = g.entries
        assert list(e["found"]) == [1, 0, 1] and e["len"][0] == 5 * 4
        assert all(base <= a < base + length for a in e["addr"][[0, 2]])
        row = np.frombuffer((np.ctypeslib.as_ctypes_type(np.float32) * 5).from_address(int(e["addr"][0])),
                            np.float32)
        np.testing.assert_array_equal(row, [5, 6, 7, 8, 0])


def test_concurrent_readers_and_writer_see_whole_rows(store):
    t = make_table(store, "sgd", dim=32, capacity=4096)
    keys = np.arange(4096, dtype=np.uint64)
    t.assign(keys, np.zeros((4096, 32), np.float32))
    stop, torn = threading.Event(), []

    def read():
        while not stop.is_set():
            rows = t.lookup(keys)
            torn.append(int((rows != rows[:, :1]).any(axis=1).sum()))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    for v in range(200):
        t.assign(keys[v % 8::8], np.full((512, 32), v, np.float32))
    stop.set()
    for r in readers:
        r.join()
    assert torn and sum(torn) == 0
    t.check()


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_the_api_state_width_is_the_cores(store, kind):
    """embps.api computes it without the native core; every table the core makes has that width."""
    for dim in (1, 2, 31, 256):
        table = store.create_table(f"{kind}-{dim}", TableSpec(dim, 16, OptimizerSpec(kind)))
        assert table.stats().state_floats == state_floats(kind, dim)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 300])
def test_batched_reads_agree_with_the_rows_written_at_every_batch_length(store, n):
    """The reads run keys through a pipeline some dozens of keys deep: batches shorter and longer than its
    stages, present and missing keys mixed, return each key's own row, state, version and slab."""
    t = make_table(store, "adagrad", dim=5)
    rng = np.random.default_rng(n)
    present = rng.permutation(10_000)[:400].astype(np.uint64) + 1
    rows = rng.standard_normal((400, 5), dtype=np.float32)
    state = rng.random((400, 5), dtype=np.float32)
    t.assign(present, rows, state)
    pick = rng.integers(0, 800, n)                     # >= 400: a missing key
    keys = np.where(pick < 400, present[pick % 400], 20_000 + pick).astype(np.uint64)
    hit = pick < 400
    want_rows = np.where(hit[:, None], rows[pick % 400], initial_rows(t.spec, keys))
    want_state = np.where(hit[:, None], state[pick % 400], 0)
    got_rows, got_state, found = t.lookup_with_state(keys)
    np.testing.assert_array_equal(found, hit)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_state, want_state)
    v_rows, v_state, versions = t.lookup_versioned(keys, with_state=True)
    np.testing.assert_array_equal(v_rows, want_rows)
    np.testing.assert_array_equal(v_state, want_state)
    np.testing.assert_array_equal(versions, hit.astype(np.uint64))   # an assign is version 1
    held = np.where(rng.random(n) < 0.5, NO_VERSION, 0).astype(np.uint64)
    stale = t.lookup_stale(keys, held, bound=0, with_state=True)
    selected = np.flatnonzero((held == NO_VERSION) | hit)
    np.testing.assert_array_equal(stale.positions, selected)
    np.testing.assert_array_equal(stale.rows, want_rows[selected])
    np.testing.assert_array_equal(stale.state, want_state[selected])
    with t.gather(keys, with_state=True) as g:
        np.testing.assert_array_equal(g.entries["found"], hit)
        for i in np.flatnonzero(hit):
            slab = (np.ctypeslib.as_ctypes_type(np.float32) * 10).from_address(int(g.entries["addr"][i]))
            np.testing.assert_array_equal(np.frombuffer(slab, np.float32), np.concatenate([want_rows[i], want_state[i]]))


@pytest.mark.parametrize("dim", [8, 16, 32, 64, 5])
@pytest.mark.parametrize("n", [1, 79, 80, 81, 300])
def test_lookups_of_every_row_size_agree_with_the_rows_written(store, dim, n):
    """A lookup without state or found mask copies rows of 8, 16, 32 or 64 floats by loops of their own:
    around the pipeline's depth (80 keys), present and missing keys mixed, each returns the key's row."""
    t = make_table(store, "rowwise_adagrad", dim=dim)
    rng = np.random.default_rng(dim * 1000 + n)
    present = rng.permutation(10_000)[:400].astype(np.uint64) + 1
    rows = rng.standard_normal((400, dim), dtype=np.float32)
    t.assign(present, rows)
    pick = rng.integers(0, 800, n)                     # >= 400: a missing key
    keys = np.where(pick < 400, present[pick % 400], 20_000 + pick).astype(np.uint64)
    want = np.where((pick < 400)[:, None], rows[pick % 400], initial_rows(t.spec, keys))
    np.testing.assert_array_equal(t.lookup(keys), want)
    out = np.full((n, dim), np.nan, np.float32)
    assert t.lookup(keys, out=out) is out
    np.testing.assert_array_equal(out, want)
    found = np.zeros(n, np.bool_)
    np.testing.assert_array_equal(t.lookup(keys, found=found), want)
    np.testing.assert_array_equal(found, pick < 400)


def test_versions_count_contributions_and_select_stale_rows(tmp_path):
    keys = np.array([10, 20, 30], np.uint64)
    with Store(tmp_path / "s") as s:
        t = make_table(s, "adagrad", dim=4)
        t.update([10, 10, 20], np.ones((3, 4), np.float32))        # a key given twice: 2 contributions
        t.update([10, 20], np.ones((2, 4), np.float32), counts=[4, 1])
        rows, state, versions = t.lookup_versioned(keys, with_state=True)
        assert versions.tolist() == [6, 2, 0]
        plain_rows, plain_state, _ = t.lookup_with_state(keys)
        np.testing.assert_array_equal(rows, plain_rows)
        np.testing.assert_array_equal(state, plain_state)
        with pytest.raises(InvalidArgument, match="counts 0 contributions"):
            t.update([10], np.ones((1, 4), np.float32), counts=[0])
        with pytest.raises(InvalidArgument, match="counts must have shape"):
            t.update([10], np.ones((1, 4), np.float32), counts=[1, 1])
        # held at 3, 2 and no copy, bound 2: 10 is 3 ahead, 20 is current, 30 has no copy
        stale = t.lookup_stale(keys, [3, 2, NO_VERSION], bound=2, with_state=True)
        assert stale.positions.tolist() == [0, 2] and stale.versions.tolist() == [6, 0]
        np.testing.assert_array_equal(stale.rows, rows[[0, 2]])
        np.testing.assert_array_equal(stale.state, state[[0, 2]])
        assert len(t.lookup_stale(keys, [3, 2, 0], bound=3).positions) == 0
        t.assign([20], np.zeros((1, 4), np.float32))              # an assign is one more write
    with Store(tmp_path / "s") as s:                              # versions persist with their rows
        assert s.table("emb").lookup_versioned(keys)[2].tolist() == [6, 3, 0]
