"""`embps reshard` against three real shard processes on loopback: grow 2 -> 3 in place, shrink back,
copy to a disjoint layout, from hash placement to a placement file and back, and the verification
catching misplaced, duplicated and changed rows."""

import argparse
import dataclasses

import numpy as np
import pytest

from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.client import ClusterConfig, PSClient, jump_hash, router_for
from embps.common.local_cluster import LocalShard
from embps.deploy import reshard_command
from embps.deploy.reshard import ReshardError, checksum, reshard, row_hashes
from embps.placement import Placement
from embps.placement.placement_file import save_placement

TABLES = {
    "user": TableSpec(dim=8, capacity=50_000, optimizer=OptimizerSpec("adagrad", lr=0.1, eps=1e-8),
                      initializer=InitializerSpec("uniform", 0.05, seed=3)),
    "item": TableSpec(dim=5, capacity=50_000, optimizer=OptimizerSpec("rowwise_adagrad", lr=0.05, eps=1e-8),
                      initializer=InitializerSpec("normal", 0.02, seed=4)),
}
N_KEYS = {"user": 9000, "item": 4000}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    started = []
    try:
        for i in range(3):   # small batches and messages, so every phase runs in many batches
            started.append(LocalShard(root / f"shard-{i}", f"shard-{i}", max_batch_keys=2048,
                                      max_message_bytes=1 << 20))
        yield started
    finally:
        for shard in started:
            shard.stop()


def layout(shards, *indexes, **settings) -> ClusterConfig:
    return ClusterConfig.from_addresses([shards[i].address for i in indexes], deadline_seconds=20, **settings)


def write(path, config: ClusterConfig):
    path.write_text(config.to_toml())
    return str(path)


def run_cli(tmp_path, old: ClusterConfig, new: ClusterConfig, *flags: str) -> int:
    """The subcommand as `embps reshard` runs it (argparse included)."""
    parser = argparse.ArgumentParser()
    reshard_command.add_arguments(parser)
    args = parser.parse_args(["--from", write(tmp_path / "old.toml", old), "--to", write(tmp_path / "new.toml", new),
                              *flags])
    return reshard_command.run(args)


@pytest.fixture(scope="module")
def reference(shards):
    """Both tables filled through the 2-shard layout with Adagrad updates (so there is optimizer state);
    the expected rows and state of every key."""
    rng = np.random.default_rng(11)
    expected = {}
    with PSClient(layout(shards, 0, 1)) as client:
        for name, spec in TABLES.items():
            client.create_table(name, spec)
            keys = np.unique(rng.integers(0, 2**64, N_KEYS[name], dtype=np.uint64))
            for batch in [rng.choice(keys, 3000) for _ in range(3)] + np.array_split(keys, 4):   # then every key
                client.update(name, batch, rng.normal(0, 1, (len(batch), spec.dim)).astype(np.float32))
            rows, state, found = lookup(client, name, keys)
            assert found.all() and np.abs(state).sum() > 0
            expected[name] = (keys, rows, state)
    return expected


def lookup(client: PSClient, table: str, keys: np.ndarray):
    """lookup with state in batches the shards accept (at most 2048 keys each)."""
    parts = [client.lookup(table, part, with_state=True) for part in np.array_split(keys, len(keys) // 2000 + 1)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def shard_keys(shard: LocalShard, table: str) -> np.ndarray:
    with PSClient(shard.cluster_config) as client:
        if table not in client.list_tables():
            return np.empty(0, np.uint64)
        parts = [keys for keys, _, _ in client.export(table)]
        assert client.describe_table(table).rows == sum(map(len, parts))
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def check_layout(shards, reference, indexes, placement=""):
    """Every row and its state unchanged through a client of the layout; each key on exactly one shard,
    the one the layout routes it to; every other shard holds none of them."""
    for data_path in ("tcp", "grpc"):
        with PSClient(layout(shards, *indexes, data_path=data_path, placement=placement)) as client:
            for name, (keys, rows, state) in reference.items():
                got_rows, got_state, found = lookup(client, name, keys)
                assert found.all()
                np.testing.assert_array_equal(got_rows, rows)
                np.testing.assert_array_equal(got_state, state)
    for name, (keys, _, _) in reference.items():
        held = {i: shard_keys(shards[i], name) for i in range(3)}
        assert sum(len(k) for k in held.values()) == len(keys)
        assert np.array_equal(np.sort(np.concatenate(list(held.values()))), np.sort(keys))
        owner = np.array(indexes)[router_for(layout(shards, *indexes, placement=placement)).shard_of(keys)]
        for i in range(3):
            assert np.array_equal(np.sort(held[i]), np.sort(keys[owner == i])), f"shard {i} of table {name}"


def test_row_hash_checksum_is_order_independent_and_sensitive():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**64, 100, dtype=np.uint64)
    rows, state = rng.normal(size=(100, 7)).astype(np.float32), rng.normal(size=(100, 7)).astype(np.float32)
    total = checksum(row_hashes(keys, rows, state))
    order = rng.permutation(100)
    assert checksum(row_hashes(keys[order], rows[order], state[order])) == total
    changed = state.copy()
    changed[5, 3] = np.nextafter(changed[5, 3], np.float32(np.inf))
    assert checksum(row_hashes(keys, rows, changed)) != total
    assert checksum(row_hashes(keys[:-1], rows[:-1], state[:-1])) != total


def test_grow_2_to_3_then_shrink_back(shards, reference, tmp_path, capsys):
    check_layout(shards, reference, [0, 1])

    # Before moving, --verify-only says which rows are not yet where the new layout wants them.
    assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1, 2), "--verify-only") == 1
    err = capsys.readouterr().err
    assert "VERIFICATION FAILED" in err and "not on the shard the new layout routes them to" in err
    check_layout(shards, reference, [0, 1])   # verify-only moved nothing

    # Grow in place: shards 0 and 1 stay, rows routed to shard 2 move there.
    assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1, 2)) == 0
    out = capsys.readouterr().out
    assert "in-place" in out and "OK" in out and "MISMATCH" not in out
    check_layout(shards, reference, [0, 1, 2])
    assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1, 2), "--verify-only") == 0
    capsys.readouterr()

    # Running it again is harmless, but needs --resume: shard 2 now holds rows.
    assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1, 2), "--no-progress") == 2
    assert "--resume" in capsys.readouterr().err
    report = reshard(layout(shards, 0, 1), layout(shards, 0, 1, 2), resume=True, progress=False)
    assert report.ok and all(t.moved == 0 for t in report.tables)
    check_layout(shards, reference, [0, 1, 2])

    # Shrink back: shard 2 leaves; its rows return to 0 and 1 and it ends empty.
    report = reshard(layout(shards, 0, 1, 2), layout(shards, 0, 1), progress=False)
    assert report.ok, [t.problems for t in report.tables]
    assert report.roles == {shards[0].address: "kept", shards[1].address: "kept", shards[2].address: "retired"}
    for t in report.tables:
        assert t.moved == t.deleted == t.before.per_shard[shards[2].address] > 0
        assert t.after.per_shard[shards[2].address] == 0
        assert (t.before.rows, t.before.checksum) == (t.after.rows, t.after.checksum)
    check_layout(shards, reference, [0, 1])


def test_stray_copies_are_caught(shards, reference, tmp_path, capsys):
    """A key on a shard the layout does not route it to: a different copy stops the reshard before anything
    moves; --verify-only reports it."""
    keys, rows, state = reference["user"]
    key = keys[jump_hash(keys, 2) == 1][:1]               # lives on shard 1
    with PSClient(shards[0].cluster_config) as only0:
        only0.assign("user", key, rows[:1] + 1, state[:1])   # a stale, different copy on shard 0
        try:
            assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1, 2), "--no-progress",
                           "--tables", "user") == 2
            err = capsys.readouterr().err
            assert "differs between shards" in err and str(int(key[0])) in err
            assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 0, 1), "--verify-only",
                           "--tables", "user") == 1
            err = capsys.readouterr().err
            assert "belong to another shard of the new layout" in err
        finally:
            assert only0.delete("user", key) == 1
    check_layout(shards, reference, [0, 1])


def test_aliased_addresses_are_one_shard(shards, reference):
    """`localhost:P` and `127.0.0.1:P` reach the same shard: nothing may be copied onto itself and deleted."""
    old = layout(shards, 0, 1)
    new = dataclasses.replace(old, shards=tuple(a.replace("127.0.0.1", "localhost") for a in old.shards))
    report = reshard(old, new, progress=False)
    assert report.ok and report.mode == "in-place" and all(t.moved == 0 for t in report.tables)
    check_layout(shards, reference, [0, 1])
    swapped = dataclasses.replace(old, shards=(old.shards[0], new.shards[0]))
    with pytest.raises(ReshardError, match="are the same shard"):
        reshard(old, swapped, progress=False)


def test_copy_to_disjoint_layout_then_tampering_fails_verification(shards, reference, tmp_path, capsys):
    """[0, 1] -> [2] shares no shard: a copy; the old layout keeps its rows.  Changing one row's state on
    the new layout makes --verify-only fail with a checksum mismatch."""
    assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 2), "--no-progress") == 0
    assert "copy" in capsys.readouterr().out
    with PSClient(layout(shards, 2)) as only2, PSClient(layout(shards, 0, 1)) as old:
        for name, (keys, rows, state) in reference.items():
            for client in (only2, old):
                got_rows, got_state, found = lookup(client, name, keys)
                assert found.all()
                np.testing.assert_array_equal(got_rows, rows)
                np.testing.assert_array_equal(got_state, state)
            assert only2.describe_table(name).rows == old.describe_table(name).rows == len(keys)
        assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 2), "--verify-only") == 0
        capsys.readouterr()

        keys, rows, state = reference["item"]
        only2.update("item", keys[:1], np.ones((1, TABLES["item"].dim), np.float32))   # a write after the copy
        assert run_cli(tmp_path, layout(shards, 0, 1), layout(shards, 2), "--verify-only", "--tables", "item") == 1
        captured = capsys.readouterr()
        assert "checksums differ" in captured.err and "MISMATCH" in captured.out
        for name in TABLES:
            only2.drop_table(name)


def test_hash_placement_to_a_placement_file_and_back(shards, reference, tmp_path, capsys):
    """Same two shards, routed by a placement file: a random split of most keys (the rest, unlisted, stay
    by jump hash), then back to hash placement; every row keeps its rows and optimizer state."""
    rng = np.random.default_rng(5)
    keys = np.unique(np.concatenate([k for k, _, _ in reference.values()]))
    listed = np.sort(rng.choice(keys, len(keys) * 9 // 10, replace=False))
    path = tmp_path / "split.placement"
    save_placement(path, Placement(hosts=2, row_keys=listed, row_owner=rng.integers(0, 2, len(listed), dtype=np.uint16),
                                   sample_host=np.zeros(0, np.uint16), mirrors=(listed[:0], listed[:0]), dataset="d"))
    by_hash, by_placement = layout(shards, 0, 1), layout(shards, 0, 1, placement=str(path))
    assert not np.array_equal(router_for(by_placement).shard_of(keys), jump_hash(keys, 2))

    assert run_cli(tmp_path, by_hash, by_placement, "--verify-only") == 1
    assert "not on the shard the new layout routes them to" in capsys.readouterr().err
    assert run_cli(tmp_path, by_hash, by_placement, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "in-place" in out and "OK" in out and "MISMATCH" not in out
    check_layout(shards, reference, [0, 1], placement=str(path))
    assert run_cli(tmp_path, by_hash, by_placement, "--verify-only") == 0
    assert run_cli(tmp_path, by_placement, by_hash, "--verify-only") == 1
    capsys.readouterr()

    three_hosts = tmp_path / "three.placement"
    save_placement(three_hosts, Placement(hosts=3, row_keys=listed[:0], row_owner=np.zeros(0, np.uint16),
                                          sample_host=np.zeros(0, np.uint16), mirrors=(listed[:0],) * 3, dataset="d"))
    assert run_cli(tmp_path, by_placement, layout(shards, 0, 1, placement=str(three_hosts)), "--no-progress") == 2
    err = " ".join(capsys.readouterr().err.split())   # the console wraps long lines
    assert "placement cannot be used" in err and "over 3 hosts, this cluster has 2" in err
    check_layout(shards, reference, [0, 1], placement=str(path))   # refused before anything moved

    report = reshard(by_placement, by_hash, progress=False)
    assert report.ok and all(t.moved > 0 for t in report.tables)
    check_layout(shards, reference, [0, 1])
