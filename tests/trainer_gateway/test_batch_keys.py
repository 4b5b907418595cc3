"""The gateway's batch-key helpers agree with numpy's general functions on shard keys and on keys too
large to pack with their positions."""

import numpy as np
import pytest

from embps.common.job_config import feature_keys
from embps.trainer_gateway.batch_keys import distinct, members

RNG = np.random.default_rng(7)
CASES = {
    "shard keys": feature_keys(RNG.zipf(1.3, (512, 26)) % 5000),
    "one key": np.array([[5]], np.uint64),
    "all equal": np.full(9, 3, np.uint64),
    "too large to pack": RNG.integers(0, 2**63, 1000, dtype=np.uint64),
    "largest keys": np.array([2**64 - 2, 0, 2**64 - 2, 1], np.uint64),
}


@pytest.mark.parametrize("name", CASES)
def test_distinct_is_unique_with_inverse(name):
    keys = CASES[name]
    got, inverse = distinct(keys)
    want, want_inverse = np.unique(keys, return_inverse=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(inverse, want_inverse.ravel())
    assert got.dtype == np.uint64 and inverse.dtype == np.int32


def test_members_marks_a_subset():
    keys = np.unique(CASES["shard keys"])
    subset = RNG.choice(keys, 300, replace=False)
    np.testing.assert_array_equal(members(keys, subset), np.isin(keys, subset))
    assert not members(keys, keys[:0]).any()

