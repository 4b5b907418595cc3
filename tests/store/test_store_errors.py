"""Bad input gets a precise exception and changes nothing; the store keeps serving."""

import subprocess
import sys

import numpy as np
import pytest

from embps.api import (CapacityExhausted, InitializerSpec, InvalidArgument, NonFiniteValues, OptimizerSpec,
                       StoreCorrupted, StoreError, StoreIOError, TableExists, TableNotFound, TableSpec)
from embps.store import Store, apply_optimizer


@pytest.fixture
def table(tmp_path):
    with Store(tmp_path / "s") as store:
        t = store.create_table("emb", TableSpec(4, 10, OptimizerSpec("adagrad", lr=0.1)))
        t.assign(np.arange(5), np.ones((5, 4)))
        yield store, t


def assert_intact(t):
    rows, state, found = t.lookup_with_state(np.arange(5))
    np.testing.assert_array_equal(rows, np.ones((5, 4)))
    np.testing.assert_array_equal(state, np.zeros((5, 4)))
    assert found.all() and t.stats().rows == 5
    t.check()


@pytest.mark.parametrize("call, error, message", [
    (lambda t: t.update(np.arange(5), np.ones((5, 3))), InvalidArgument, r"shape \(5, 4\)"),
    (lambda t: t.update(np.arange(5), np.ones(20)), InvalidArgument, r"shape \(5, 4\)"),
    (lambda t: t.assign(np.arange(5), np.ones((5, 4)), state=np.ones((5, 2))), InvalidArgument, "state"),
    (lambda t: t.update(np.arange(5), np.full((5, 4), np.nan)), NonFiniteValues, "NaN or Inf"),
    (lambda t: t.update([0, 1], [[1, 1, 1, 1], [1, np.inf, 1, 1]]), NonFiniteValues, "nothing was applied"),
    (lambda t: t.assign([0], [[np.nan, 0, 0, 0]]), NonFiniteValues, "nothing was written"),
    (lambda t: t.assign(np.arange(5, 20), np.ones((15, 4))), CapacityExhausted, "capacity 10"),
    (lambda t: t.update([0], np.full((1, 4), 1e20)), NonFiniteValues, "would store NaN or Inf in row 0"),  # 1e20**2
    (lambda t: t.update([3, 0, 0], [[1] * 4, [3e38] * 4, [3e38] * 4]), NonFiniteValues, "nothing was applied"),
    (lambda t: t.update([2**64 - 1], np.ones((1, 4))), InvalidArgument, "reserved"),
    (lambda t: t.lookup([[1, 2]]), InvalidArgument, "one-dimensional"),
    (lambda t: t.lookup([0.5, 1.5]), InvalidArgument, "integers"),
    (lambda t: t.lookup([1, 2], out=np.empty((2, 5), np.float32)), InvalidArgument, "out must be"),
])
def test_bad_call_raises_and_leaves_table_intact(table, call, error, message):
    _, t = table
    with pytest.raises(error, match=message):
        call(t)
    assert_intact(t)


def test_table_level_errors(table):
    store, t = table
    with pytest.raises(TableNotFound, match="no table named 'nope'"):
        store.table("nope")
    with pytest.raises(TableNotFound):
        store.drop_table("nope")
    with pytest.raises(TableExists, match="already exists"):
        store.create_table("emb", TableSpec(4, 10))
    for name in ["", "../x", ".hidden", "a/b", "x" * 64]:
        with pytest.raises(InvalidArgument, match="table name"):
            store.create_table(name, TableSpec(4, 10))
    for spec in [lambda: TableSpec(0, 10), lambda: TableSpec(4, 0), lambda: TableSpec(4, 10, OptimizerSpec("lion")),
                 lambda: TableSpec(4, 10, OptimizerSpec("adam", beta1=1.5)),
                 lambda: TableSpec(4, 10, OptimizerSpec(lr=float("nan")))]:
        with pytest.raises(InvalidArgument):   # an unknown kind already when the spec is made
            store.create_table("other", spec())
    assert store.tables() == ["emb"]
    assert_intact(t)


@pytest.mark.parametrize("spec, message", [
    (TableSpec(4, 10, OptimizerSpec(lr=1e39)), r"lr, eps and init_scale must be finite and in \[0, 1e\+06\], got 1e\+39"),
    (TableSpec(4, 10, OptimizerSpec(eps=-1e-8)), "must be finite and in"),
    (TableSpec(4, 10, initializer=InitializerSpec(scale=1e39)), "must be finite and in"),
    (TableSpec(4, 10, OptimizerSpec("sgd", beta1=float("nan"))), r"betas must be in \[0, 1\)"),
    (TableSpec(4, 10, OptimizerSpec("adam", beta2=1.0)), r"betas must be in \[0, 1\), got 0.9 and 1"),
])
def test_hyper_parameters_are_finite_and_sane(tmp_path, spec, message):
    """Issue 10 item 9: lr=1e39 (Inf as a float) was accepted and gave rows of NaN and -Inf."""
    with Store(tmp_path / "s") as store:
        with pytest.raises(InvalidArgument, match=message):
            store.create_table("emb", spec)
        assert store.tables() == []


@pytest.mark.parametrize("persist, n", [("cache_line", 3000), ("cache_line", 5000), ("none", 3000)])
def test_an_update_that_would_overflow_changes_nothing(tmp_path, persist, n):
    """Issue 10 item 9: finite gradients whose result is not finite fail the whole update, also when it
    is computed in several rounds (n rows, the overflow in the last), published in several (5000 rows
    on a full table: the pool cannot hold every new slab at once), or applied in place (a cache)."""
    with Store(tmp_path / "s", persist=persist) as store:
        t = store.create_table("emb", TableSpec(4, 5000, OptimizerSpec("sgd", lr=1.0)))
        keys = np.arange(n)
        rows = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
        t.assign(keys, rows)
        grads = np.ones((n + 1, 4), np.float32)
        grads[-2:] = 3e38   # the last key twice: its summed gradient overflows
        with pytest.raises(NonFiniteValues, match=f"row {n - 1}"):
            t.update(np.append(keys, n - 1), grads)
        got, state, found = t.lookup_with_state(keys)
        np.testing.assert_array_equal(got, rows)
        assert found.all() and t.stats().rows == n
        t.check()
        t.update(keys, np.ones((n, 4)))   # what is finite still applies
        np.testing.assert_allclose(t.lookup(keys), rows - 1, rtol=1e-6)
        t.check()


def test_apply_optimizer_refuses_an_overflowing_step_and_changes_nothing():
    spec = TableSpec(4, 10, OptimizerSpec("adagrad", lr=0.1))
    rows, state = np.ones((2, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(NonFiniteValues, match="row 1"):
        apply_optimizer(spec, rows, state, np.array([[1] * 4, [1e20] * 4], np.float32))
    assert (rows == 1).all() and (state == 0).all()


def test_dropped_table_handle_refuses_calls(table):
    store, t = table
    store.drop_table("emb")
    with pytest.raises(StoreError, match="dropped"):
        t.lookup([1])


def test_second_process_cannot_open_a_store_in_use(table, tmp_path):
    code = "import sys; from embps.store import Store; Store(sys.argv[1])"
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert child.returncode != 0 and "in use by another process" in child.stderr
    assert_intact(table[1])


def test_persist_mode_is_one_per_process(table, tmp_path):
    with pytest.raises(InvalidArgument, match="one per process"):
        Store(tmp_path / "other", persist="native")
    with pytest.raises(InvalidArgument, match="persist must be"):
        Store(tmp_path / "other", persist="fast")


def test_store_below_a_file_is_an_io_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreIOError, match="cannot create .*/file/store: Not a directory"):
        Store(tmp_path / "file" / "store")


def test_corrupt_table_file_is_refused_and_the_others_served(tmp_path):
    """The store opens; the corrupt table is reported, refused with the reason, and keeps its name."""
    with Store(tmp_path / "s") as store:
        store.create_table("emb", TableSpec(4, 10))
        store.create_table("good", TableSpec(4, 10)).assign([1], np.ones((1, 4)))
    path = tmp_path / "s" / "emb.table"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF    # inside the header: the checksum catches it
    path.write_bytes(bytes(data))
    with Store(tmp_path / "s") as store:
        with pytest.raises(StoreCorrupted, match="checksum"):
            store.table("emb")
        assert list(store.unopenable) == ["emb"] and "checksum" in store.unopenable["emb"]
        assert str(tmp_path) not in store.unopenable["emb"]   # it reaches clients: no server paths
        assert store.tables() == ["good"]
        np.testing.assert_array_equal(store.table("good").lookup([1]), np.ones((1, 4)))
        with pytest.raises(TableExists, match="could not be opened"):
            store.create_table("emb", TableSpec(4, 10))
        assert path.read_bytes() == data   # a create never replaces the file
    path.write_bytes(bytes(data[:5000]))
    with Store(tmp_path / "s") as store:
        with pytest.raises(StoreCorrupted):
            store.table("emb")
        store.drop_table("emb")   # what an operator does with it: the file goes
        assert not path.exists() and store.unopenable == {}
        store.create_table("emb", TableSpec(4, 10))
