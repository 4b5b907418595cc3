"""The native loops of routing (native/embps_key_router.h): jump hash over a batch and a placement table's
lookup, each one call into the native core, which holds no GIL meanwhile.  Needs the native core
(embps.client.routing imports this module when it can, and runs its numpy loops when it cannot)."""

from __future__ import annotations

import numpy as np

from embps.store._native import ffi, lib
from embps.store.store import check_status

_KEYS, _SHARDS = ffi.typeof("uint64_t[]"), ffi.typeof("int64_t[]")
_from_buffer = ffi.from_buffer


def jump_hash(keys: np.ndarray, n_shards: int) -> np.ndarray:
    keys = np.ascontiguousarray(keys, np.uint64)
    shard = np.empty(len(keys), np.int64)
    check_status(lib.embps_jump_hash_batch(_from_buffer(_KEYS, keys), len(keys), n_shards,
                                           _from_buffer(_SHARDS, shard)))
    return shard


class PlacementTable:
    """An embps_router_table over arrays built by embps.client.routing.PlacementRouter, which it keeps alive."""

    def __init__(self, n_shards: int, first: np.ndarray, span: np.ndarray, delta: np.ndarray,
                 owner_by_slot: np.ndarray, sparse_keys: np.ndarray, sparse_owner: np.ndarray):
        self._arrays = [np.ascontiguousarray(a) for a in (first, span, delta, owner_by_slot, sparse_keys, sparse_owner)]
        first, span, delta, owner_by_slot, sparse_keys, sparse_owner = self._arrays
        table = ffi.new("embps_router_table *")
        table.n_shards, table.n_features = n_shards, len(first)
        table.first, table.span, table.delta = (_from_buffer(_KEYS, a) for a in (first, span, delta))
        table.owner_by_slot = _from_buffer("uint8_t[]", owner_by_slot.view(np.uint8))
        table.n_slots, table.owner_bytes = len(owner_by_slot), owner_by_slot.itemsize
        table.sparse_keys = _from_buffer(_KEYS, sparse_keys)
        table.sparse_owner = _from_buffer("uint16_t[]", sparse_owner)
        table.n_sparse = len(sparse_keys)
        self._table = table

    def route(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(keys, np.uint64)
        shard = np.empty(len(keys), np.int64)
        check_status(lib.embps_router_route(self._table, _from_buffer(_KEYS, keys), len(keys),
                                            _from_buffer(_SHARDS, shard)))
        return shard


def split(keys: np.ndarray, shard: np.ndarray, n_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, shard = np.ascontiguousarray(keys, np.uint64), np.ascontiguousarray(shard, np.int64)
    order, grouped, bounds = np.empty(len(keys), np.int64), np.empty(len(keys), np.uint64), np.empty(n_shards + 1, np.int64)
    check_status(lib.embps_router_split(_from_buffer(_SHARDS, shard), _from_buffer(_KEYS, keys), len(keys), n_shards,
                                        _from_buffer(_SHARDS, order), _from_buffer(_KEYS, grouped),
                                        _from_buffer(_SHARDS, bounds)))
    return order, grouped, bounds
