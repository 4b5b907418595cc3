"""Jump consistent hash: matches the published algorithm, spreads keys evenly, moves few on growth."""

import numpy as np

from embps.client import jump_hash


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
