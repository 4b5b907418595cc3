"""A batch's keys as a gateway takes them apart: this trainer's distinct keys with each sample's index
into them, and which of the batch's keys a plan's subsets (stream, sync_now) name.  Every batch goes
through these, so they avoid numpy's slower paths (argsort, searching unsorted keys)."""

from __future__ import annotations

import numpy as np


def distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True), the inverse as int32: one plain sort of each key packed with
    its position where the keys leave room for it (shard keys do: feature << 40 | id), else np.unique."""
    keys = keys.ravel()
    n = len(keys)
    shift = max(int(n - 1).bit_length(), 1)
    if n == 0 or int(keys.max()) >> (64 - shift):
        unique, inverse = np.unique(keys, return_inverse=True)
        return unique, inverse.astype(np.int32)
    packed = np.sort((keys.astype(np.uint64) << np.uint64(shift)) | np.arange(n, dtype=np.uint64))
    ordered = packed >> np.uint64(shift)
    first = np.empty(n, np.bool_)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(n, np.int32)
    inverse[(packed & np.uint64((1 << shift) - 1)).astype(np.intp)] = np.cumsum(first, dtype=np.int32) - 1
    return ordered[first], inverse


def members(keys: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Which of keys (sorted, distinct) are in subset, a subset of them (as a plan's are of its batch)."""
    mask = np.zeros(len(keys), np.bool_)
    mask[np.searchsorted(keys, subset)] = True
    return mask

