"""Tables created, dropped and used at once: every interleaving gives a status some order of the calls
gives, a table exists only once it opened, and a drop waits only for its own table."""

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from embps.api import StoreError, TableExists, TableNotFound, TableSpec
from embps.store import Store

SPEC = TableSpec(4, 100)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s") as s:
        yield s


def race(*targets, enough, max_rounds=20_000):
    """Runs each target in its own thread again and again, until enough() holds (each at most max_rounds
    times); returns the exceptions they raised."""
    errors = []

    def loop(target):
        for _ in range(max_rounds):
            if enough():
                return
            try:
                target()
            except Exception as error:   # what the test inspects
                errors.append(error)
            time.sleep(0)   # let the others in

    threads = [threading.Thread(target=loop, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def use(store):
    with store.acquire("pair") as table:
        table.update([1, 2], np.ones((2, 4)))
        assert table.lookup([1, 2]).shape == (2, 4)
        assert table.stats().rows >= 2
        list(table.export())


def create_and_read(store):
    """What a server's CreateTable does: the reply is read under the create's reference."""
    with store.create_acquired("pair", SPEC, exist_ok=True) as (table, _):
        assert table.stats().state_floats == 4 and table.spec == SPEC


def test_create_drop_and_calls_of_one_name_race_safely(store):
    drops = []

    def drop():
        store.drop_table("pair")
        drops.append(1)

    errors = race(lambda: store.create_table("pair", SPEC), lambda: create_and_read(store), drop, drop,
                  lambda: use(store), enough=lambda: len(drops) >= 50)
    assert len(drops) >= 50   # the race was run
    unexpected = [e for e in errors if type(e) not in (TableExists, TableNotFound)]
    assert not unexpected, unexpected[:3]
    # the wrappers follow the native store: what is listed can be used, and nothing else
    if "pair" in store.tables():
        use(store)
    else:
        with pytest.raises(TableNotFound):
            store.table("pair")


def test_two_drops_of_one_table_one_succeeds(store):
    for _ in range(20):
        store.create_table("pair", SPEC)
        barrier = threading.Barrier(2)
        outcomes = []

        def drop():
            barrier.wait()
            try:
                store.drop_table("pair")
                outcomes.append("OK")
            except StoreError as error:
                outcomes.append(error.status)

        threads = [threading.Thread(target=drop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["NOT_FOUND", "OK"]
        assert store.tables() == []


def test_create_acquired_holds_the_table_against_a_drop(store):
    dropped = threading.Event()
    with store.create_acquired("pair", SPEC) as (table, created):
        assert created
        dropper = threading.Thread(target=lambda: (store.drop_table("pair"), dropped.set()))
        dropper.start()
        assert not dropped.wait(0.2)   # the drop waits for this block's reference ...
        table.assign([1], np.ones((1, 4)))   # ... which keeps the table usable
        assert table.stats().rows == 1
    dropper.join(60)
    assert dropped.is_set() and store.tables() == []
    with store.create_acquired("pair", SPEC) as (table, created):
        with store.create_acquired("pair", SPEC, exist_ok=True) as (same, created_again):
            assert same is table and created and not created_again
    with pytest.raises(TableExists):
        with store.create_acquired("pair", SPEC):
            pass


def test_drop_does_not_wait_for_another_tables_reader(store):
    store.create_table("held", SPEC)
    store.create_table("other", SPEC)
    with store.acquire("held"):
        dropper = threading.Thread(target=store.drop_table, args=("other",))
        dropper.start()
        dropper.join(60)
        assert not dropper.is_alive()
    assert store.tables() == ["held"]


def test_a_table_that_cannot_open_is_never_created(tmp_path):
    """The file is opened before its rename makes the table exist: here the mapping fails for want of
    address space, and the create leaves no file for the next start to trip on."""
    child = textwrap.dedent("""
        import resource, sys
        from embps.api import TableSpec
        from embps.store import Store
        store = Store(sys.argv[1])
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), resource.RLIM_INFINITY))
        try:
            store.create_table("big", TableSpec(1, 1 << 25))   # a 1.6 GB file
        except MemoryError as error:
            print("refused:", error)
    """)
    run = subprocess.run([sys.executable, "-c", child, str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "refused: " in run.stdout, run.stdout + run.stderr
    assert str(tmp_path) not in run.stdout   # messages reach clients: no server paths
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["LOCK"]
    with Store(tmp_path / "s") as store:
        assert store.tables() == [] and store.unopenable == {}
