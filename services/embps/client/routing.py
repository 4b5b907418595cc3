"""Which shard holds a key.  Jump consistent hash (Lamping & Veach) by default: growing from n to n+1
shards moves only 1/(n+1) of the keys.  Any object with shard_of(keys) -> shard indexes can route
(placement files plug in here)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

_MULTIPLIER = np.uint64(2862933555777941757)


def jump_hash(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """Vectorised over keys: each iteration advances every key still below n_shards by one jump."""
    if n_shards < 1:
        raise ValueError("n_shards must be positive")
    key = np.array(keys, dtype=np.uint64, copy=True)
    bucket = np.full(len(key), -1, np.int64)
    jump = np.zeros(len(key), np.int64)
    active = np.arange(len(key))
    while len(active):
        bucket[active] = jump[active]
        key[active] = key[active] * _MULTIPLIER + np.uint64(1)
        step = float(1 << 31) / ((key[active] >> np.uint64(33)) + np.uint64(1)).astype(np.float64)
        jump[active] = ((bucket[active] + 1) * step).astype(np.int64)
        active = active[jump[active] < n_shards]
    return bucket


class Router(Protocol):
    n_shards: int

    def shard_of(self, keys: np.ndarray) -> np.ndarray: ...


class JumpHashRouter:
    def __init__(self, n_shards: int):
        self.n_shards = n_shards

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        if self.n_shards == 1:
            return np.zeros(len(keys), np.int64)
        return jump_hash(keys, self.n_shards)
