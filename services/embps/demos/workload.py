"""Keys and access patterns shared by the demo phases."""

import numpy as np

# Table keys keep the top bit clear; keys the crash writer adds have it set, so the two sets can never
# collide and EMBPS_RESERVED_KEY (2**64 - 1) is never drawn.
_TOP_BIT = np.uint64(1 << 63)


def random_keys(rng: np.random.Generator, n: int, fresh: bool = False) -> np.ndarray:
    """n distinct random 63-bit keys in random order; fresh=True sets the top bit."""
    keys = np.unique(rng.integers(0, 2**63 - 1, n + n // 1000 + 16, dtype=np.uint64))
    while len(keys) < n:  # a collision among 2**63 values: practically never, but cheap to handle
        keys = np.unique(np.concatenate([keys, rng.integers(0, 2**63 - 1, n, dtype=np.uint64)]))
    keys = rng.permutation(keys)[:n]
    return keys | _TOP_BIT if fresh else keys


def zipf_indices(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """size indices in [0, n) where index i has probability proportional to 1 / (i + 1)**a."""
    out = np.empty(0, np.int64)
    while len(out) < size:
        draw = rng.zipf(a, 2 * size)
        out = np.concatenate([out, draw[draw <= n] - 1])  # rejecting the tail keeps the shape exact
    return out[:size]
