"""The placement value type: pure numpy and dataclasses, importable without the native core or torch.

A placement over H hosts says, for a job's training split:
- which host owns each embedding row (by its 64-bit shard key, `(feature << 40) | id`); with hosts,
  host h runs shard h, so the owner host is also the shard index a router returns;
- which host trains each training sample (by its index in the split);
- which remote rows each host should mirror, highest priority first.
Rows not listed (keys never seen by the partitioner) are placed by jump hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_HOSTS = 1 << 16


@dataclass(frozen=True, eq=False)
class Placement:
    hosts: int
    row_keys: np.ndarray              # uint64, strictly ascending
    row_owner: np.ndarray             # uint16, the owner host of row_keys[i]
    sample_host: np.ndarray           # uint16, the host that trains training sample i
    mirrors: tuple[np.ndarray, ...]   # per host: uint64 keys of rows it does not own, best first
    dataset: str                      # the DatasetInfo name the placement was computed from
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be in [1, {MAX_HOSTS}], got {self.hosts}")
        for name, dtype in (("row_keys", np.uint64), ("row_owner", np.uint16), ("sample_host", np.uint16)):
            if getattr(self, name).dtype != dtype or getattr(self, name).ndim != 1:
                raise ValueError(f"{name} must be a 1-d {np.dtype(dtype).name} array")
        if len(self.row_keys) != len(self.row_owner):
            raise ValueError("row_keys and row_owner differ in length")
        if len(self.row_keys) > 1 and not np.all(self.row_keys[1:] > self.row_keys[:-1]):
            raise ValueError("row_keys must be strictly ascending")
        for name in ("row_owner", "sample_host"):
            if len(getattr(self, name)) and int(getattr(self, name).max()) >= self.hosts:
                raise ValueError(f"{name} names a host >= hosts ({self.hosts})")
        if len(self.mirrors) != self.hosts or any(m.dtype != np.uint64 for m in self.mirrors):
            raise ValueError("mirrors must hold one uint64 key array per host")
