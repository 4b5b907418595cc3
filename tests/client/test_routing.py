"""Routing: jump consistent hash matches the published algorithm, spreads keys evenly and moves few on
growth; a placement routes its keys to their owners (others by jump hash), chosen by the cluster config.
Every test runs twice: with the native loops and with the numpy loops of a process without the native core."""

import numpy as np
import pytest

from embps.api.errors import InvalidArgument
from embps.client import ClusterConfig, JumpHashRouter, PlacementRouter, jump_hash, key_router, router_for, routing
from embps.placement import Placement
from embps.placement.placement_file import PlacementMismatchError, save_placement


@pytest.fixture(autouse=True, params=["native", "numpy"])
def loops(request, monkeypatch):
    assert routing.native is not None, "the native core is built for the tests: its loops must be importable"
    if request.param == "numpy":
        monkeypatch.setattr(routing, "native", None)
    return request.param


def jump_hash_scalar(key: int, n: int) -> int:
    """Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014), figure 1."""
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def test_matches_the_published_algorithm():
    keys = np.random.default_rng(0).integers(0, 2**64, 2000, dtype=np.uint64, endpoint=False)
    keys = np.concatenate([keys, np.array([0, 1, 2**64 - 1, 2**63], np.uint64)])
    for n in (1, 2, 3, 7, 64, 1000):
        assert jump_hash(keys, n).tolist() == [jump_hash_scalar(int(k), n) for k in keys]


def test_even_spread_and_minimal_movement():
    keys = np.arange(200_000, dtype=np.uint64)
    three, four = jump_hash(keys, 3), jump_hash(keys, 4)
    assert np.bincount(three).min() > 0.97 * len(keys) / 3
    moved = three != four
    assert (four[moved] == 3).all()                  # keys only move to the new shard
    assert abs(moved.mean() - 0.25) < 0.01


def placement_of(keys, hosts, seed=0) -> Placement:
    keys = np.unique(np.asarray(keys, np.uint64))
    owner = np.random.default_rng(seed).integers(0, hosts, len(keys), dtype=np.uint16)
    return Placement(hosts=hosts, row_keys=keys, row_owner=owner, sample_host=np.zeros(0, np.uint16),
                     mirrors=tuple(np.zeros(0, np.uint64) for _ in range(hosts)), dataset="d")


def routed_one_by_one(placement: Placement, keys) -> list[int]:
    owner = dict(zip(placement.row_keys.tolist(), placement.row_owner.tolist()))
    return [owner.get(k, jump_hash_scalar(k, placement.hosts)) for k in np.asarray(keys, np.uint64).tolist()]


def test_placement_routes_listed_keys_to_their_owner_and_others_by_jump_hash():
    rng = np.random.default_rng(1)
    dense = [(np.uint64(f) << np.uint64(40)) | rng.choice(np.arange(lo, lo + 300, dtype=np.uint64), 200, replace=False)
             for f, lo in ((0, 0), (3, 5000), (7, (1 << 40) - 300))]
    sparse = [(np.uint64(5) << np.uint64(40)) | rng.integers(0, 1 << 40, 100, dtype=np.uint64),
              rng.integers(0, 2**64, 100, dtype=np.uint64, endpoint=False)]     # any feature, any id
    placement = placement_of(np.concatenate(dense + sparse), hosts=5)
    asked = np.concatenate([placement.row_keys,
                            rng.integers(0, 2**64, 500, dtype=np.uint64, endpoint=False),          # unknown
                            (np.uint64(3) << np.uint64(40)) | np.arange(4900, 5400, dtype=np.uint64),  # in and around
                            (np.uint64(7) << np.uint64(40)) | np.arange((1 << 40) - 400, 1 << 40, dtype=np.uint64),
                            np.array([0, 2**64 - 1, 1 << 40], np.uint64)])
    asked = rng.permutation(asked)
    routed = PlacementRouter(placement).shard_of(asked)
    assert routed.dtype == np.int64
    assert routed.tolist() == routed_one_by_one(placement, asked)
    assert set(np.unique(routed[np.isin(asked, placement.row_keys)])) == set(range(5))


def test_placement_router_edges():
    keys = np.array([1, 2, 3, 1 << 41], np.uint64)
    empty = placement_of(np.zeros(0, np.uint64), hosts=3)
    assert PlacementRouter(empty).shard_of(keys).tolist() == jump_hash(keys, 3).tolist()
    assert PlacementRouter(placement_of(keys, hosts=1)).shard_of(keys[::-1]).tolist() == [0] * 4
    assert PlacementRouter(placement_of(keys, hosts=2)).shard_of(np.zeros(0, np.uint64)).tolist() == []


def test_an_owner_table_wider_than_16_bits():
    """65536 hosts: the unknown owner no longer fits in uint16, so the table holds uint32 owners."""
    rng = np.random.default_rng(2)
    placement = placement_of(np.arange(3000, dtype=np.uint64), hosts=65536, seed=3)
    asked = np.concatenate([placement.row_keys, rng.integers(0, 2**64, 50, dtype=np.uint64, endpoint=False)])
    assert PlacementRouter(placement).shard_of(asked).tolist() == routed_one_by_one(placement, asked)


def test_a_batch_splits_by_shard_stably():
    rng = np.random.default_rng(4)
    for n, n_shards in ((0, 3), (1, 1), (5000, 5), (300, 64)):
        keys = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        shard = rng.integers(0, n_shards, n).astype(np.int64)
        order, grouped, bounds = routing.split_by_shard(keys, shard, n_shards)
        assert order.tolist() == np.argsort(shard, kind="stable").tolist()
        assert grouped.tolist() == keys[order].tolist()
        assert bounds.tolist() == np.r_[0, np.cumsum(np.bincount(shard, minlength=n_shards))].tolist()


def test_the_native_split_refuses_a_shard_out_of_range():
    with pytest.raises(InvalidArgument, match="key 1 was routed to shard 3, of 3"):
        key_router.split(np.arange(3, dtype=np.uint64), np.array([0, 3, 1]), 3)


def test_a_cluster_routes_by_its_placement_file_or_by_jump_hash(tmp_path):
    placement = placement_of(np.arange(1000, dtype=np.uint64), hosts=2)
    save_placement(tmp_path / "p.placement", placement)
    (tmp_path / "cluster.toml").write_text('[cluster]\nplacement = "p.placement"\n'
                                           '[[shards]]\naddress = "a:1"\n[[shards]]\naddress = "b:1"\n')
    config = ClusterConfig.load(tmp_path / "cluster.toml")
    assert config.placement == str(tmp_path / "p.placement")
    assert ClusterConfig.load(_written(tmp_path / "again.toml", config.to_toml())) == config
    router = router_for(config)
    assert isinstance(router, PlacementRouter)
    assert router.shard_of(placement.row_keys).tolist() == placement.row_owner.tolist()
    assert isinstance(router_for(ClusterConfig.from_addresses(["a:1", "b:1"])), JumpHashRouter)
    three = ClusterConfig.from_addresses(["a:1", "b:1", "c:1"], placement=config.placement)
    with pytest.raises(PlacementMismatchError, match="over 2 hosts, this cluster has 3"):
        router_for(three)


def _written(path, text):
    path.write_text(text)
    return path
