"""Which shard holds a key.  Jump consistent hash (Lamping & Veach) by default: growing from n to n+1
shards moves only 1/(n+1) of the keys.  A placement file (`[cluster] placement`) routes the keys it lists
to their owner host's shard instead.  Any object with shard_of(keys) -> shard indexes can route.

This module builds the routers' tables; the per-key loops over a batch run in the native core
(embps.client.key_router) when this process has it, else as the numpy loops below (a gRPC client
needs no native core), with equal results."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from embps.common.cluster_config import ClusterConfig
from embps.common.job_config import FEATURE_SHIFT
from embps.placement import Placement
from embps.placement.placement_file import load_placement

try:
    from . import key_router as native
except ImportError:   # no native core here: the numpy loops route
    native = None  # type: ignore[assignment]

_MULTIPLIER = np.uint64(2862933555777941757)
_SHIFT = np.uint64(FEATURE_SHIFT)
_ID_MASK = np.uint64((1 << FEATURE_SHIFT) - 1)
_DIRECT_FEATURES = 1 << 16               # features below this may map their ids directly
_DENSE_SLOTS_PER_ROW = 4                  # ... while their id range is at most 4x their rows


def jump_hash(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key (int64) by jump consistent hash over n_shards."""
    if n_shards < 1:
        raise ValueError("n_shards must be positive")
    if native is not None:
        return native.jump_hash(keys, n_shards)
    return numpy_jump_hash(keys, n_shards)


def numpy_jump_hash(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """Vectorised over keys: each iteration advances every key still below n_shards by one jump."""
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


def split_by_shard(keys: np.ndarray, shard: np.ndarray, n_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A routed batch grouped by shard, stably: (order, keys[order], bounds), shard s's keys being
    [bounds[s], bounds[s + 1]) of order, each shard's in batch order."""
    if native is not None:
        return native.split(keys, shard, n_shards)
    order = np.argsort(shard, kind="stable")
    return order, keys[order], np.searchsorted(shard[order], np.arange(n_shards + 1))


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


class PlacementRouter:
    """Host h runs shard h: a key the placement lists goes to its owner host's shard, any other key (one
    the partitioner never saw) by jump hash over the same shards.

    A binary search per key over tens of millions of keys would cost more than the RPC it routes (a chain
    of ~25 dependent cache misses), so a feature whose listed ids are dense, as a trained table's are,
    maps id -> owner directly: one array slot per id in its range, a few instructions per key and one cache
    miss, which the native loop prefetches a few keys ahead.  The keys of sparse features (and of features
    >= 2^16) are binary-searched."""

    def __init__(self, placement: Placement):
        self.n_shards = placement.hosts
        keys, owner = placement.row_keys, placement.row_owner
        feature, rows, first_id, span = _feature_segments(keys)
        dense = (span <= _DENSE_SLOTS_PER_ROW * rows) & (feature < _DIRECT_FEATURES)
        base = np.r_[0, np.cumsum(span[dense])].astype(np.int64)
        owner_type = np.uint16 if placement.hosts <= 0xFFFF else np.uint32   # the type's max means unknown
        self._unknown = np.iinfo(owner_type).max
        self._owner_by_slot = np.full(int(base[-1]) + 1, self._unknown, owner_type)   # the last slot: a miss
        # By feature (one past the last dense feature stands for every other feature, with no ids):
        # a key's slot is its id + delta, if its id - first < span.
        n_features = int(feature[dense].max()) + 2 if dense.any() else 1
        self._first, self._span, self._delta = (np.zeros(n_features, np.uint64) for _ in range(3))
        self._first[feature[dense]] = first_id[dense]
        self._span[feature[dense]] = span[dense]
        self._delta[feature[dense]] = (base[:-1] - first_id[dense].astype(np.int64)).astype(np.uint64)
        in_dense = np.repeat(dense, rows)
        slots = keys[in_dense] & _ID_MASK
        slots += self._delta[(keys[in_dense] >> _SHIFT).astype(np.int64)]   # wraps back into range
        self._owner_by_slot[slots.astype(np.int64)] = owner[in_dense]
        self._sparse_keys, self._sparse_owner = keys[~in_dense], owner[~in_dense]
        self._native = None if native is None else native.PlacementTable(
            self.n_shards, self._first, self._span, self._delta, self._owner_by_slot, self._sparse_keys,
            self._sparse_owner)

    @property
    def index_bytes(self) -> int:
        """Memory the router holds beyond the placement's own arrays."""
        return self._owner_by_slot.nbytes + self._sparse_keys.nbytes + self._sparse_owner.nbytes

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.uint64)
        if self.n_shards == 1:
            return np.zeros(len(keys), np.int64)
        if self._native is not None:
            return self._native.route(keys)
        return self._numpy_shard_of(keys)

    def _numpy_shard_of(self, keys: np.ndarray) -> np.ndarray:
        feature = np.minimum(keys >> _SHIFT, np.uint64(len(self._span) - 1)).astype(np.int64)
        ids = keys & _ID_MASK
        listed = (ids - self._first[feature]) < self._span[feature]          # below the first id wraps to huge
        ids += self._delta[feature]
        slot = np.where(listed, ids, np.uint64(len(self._owner_by_slot) - 1)).astype(np.int64)
        shard = self._owner_by_slot[slot].astype(np.int64)
        unknown = shard == self._unknown
        if len(self._sparse_keys) and unknown.any():
            self._route_sparse(keys, shard, np.flatnonzero(unknown))
            unknown = shard == self._unknown
        if unknown.any():
            shard[unknown] = numpy_jump_hash(keys[unknown], self.n_shards)
        return shard

    def _route_sparse(self, keys: np.ndarray, shard: np.ndarray, where: np.ndarray) -> None:
        at = np.searchsorted(self._sparse_keys, keys[where])
        np.minimum(at, len(self._sparse_keys) - 1, out=at)
        found = self._sparse_keys[at] == keys[where]
        shard[where[found]] = self._sparse_owner[at[found]]


def _feature_segments(keys: np.ndarray):
    """For each feature among the sorted keys: the feature, how many keys it has, its first id and the
    span of its ids (last - first + 1)."""
    feature = keys >> _SHIFT
    starts = np.flatnonzero(np.r_[True, feature[1:] != feature[:-1]])[:len(keys)]
    rows = np.diff(np.r_[starts, len(keys)]).astype(np.int64)
    first_id = keys[starts] & _ID_MASK
    span = ((keys[starts + rows - 1] & _ID_MASK) - first_id).astype(np.int64) + 1
    return feature[starts], rows, first_id, span


def router_for(config: ClusterConfig) -> Router:
    """The cluster's router: its placement file's when it names one (refused if made for another number of
    shards), else jump hash."""
    if not config.placement:
        return JumpHashRouter(len(config.shards))
    return PlacementRouter(load_placement(config.placement, hosts=len(config.shards)))
