"""The gateway's cache of rows and optimizer state: a volatile table of the native store in a
DRAM-backed directory, so inserts, lookups, evictions and the optimizer step run in C on whole
batches, with the very kernels the shards use, and without the flushes persistence would cost.

Each cache has a directory of its own, named for its process; a gateway that was killed (no close())
leaves one behind, which the next cache made in the same place removes once that process is gone."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

import grpc
import numpy as np

from embps.api import CapacityExhausted, MissingKeys, TableSpec
from embps.store import Store

from .errors import GatewayError


_DIRECTORY = re.compile(r"^embps-cache-(\d+)-")


class RowCache:
    def __init__(self, cache_dir: Path, name: str, spec: TableSpec, capacity: int):
        """A cache of up to capacity rows of spec's shape in a new directory under cache_dir (name says
        whose it is)."""
        remove_orphans(cache_dir)
        directory = Path(tempfile.mkdtemp(prefix=f"embps-cache-{os.getpid()}-{name}-", dir=cache_dir))
        self.store = Store(directory, persist="none")
        self.table = self.store.create_table("cache", dataclasses.replace(spec, capacity=capacity,
                                                                          missing_keys=MissingKeys.REPORT))

    def insert(self, keys: np.ndarray, rows: np.ndarray, state: np.ndarray) -> None:
        try:
            self.table.assign(keys, rows, state)
        except CapacityExhausted as error:
            # The cache is sized for every distinct row of the lookahead window: full means a planning bug.
            raise GatewayError(grpc.StatusCode.INTERNAL,
                               f"cache full ({error}): the window needs more rows than it can hold") from None

    def rows(self, keys: np.ndarray) -> np.ndarray:
        found = np.empty(len(keys), np.bool_)
        rows = self.table.lookup(keys, found=found)
        if not found.all():
            missing = keys[~found][:5].tolist()
            raise GatewayError(grpc.StatusCode.INTERNAL, f"keys {missing} were not prefetched (a planning bug)")
        return rows

    def apply(self, keys: np.ndarray, grads: np.ndarray) -> None:
        self.table.update(keys, grads)

    def take(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Removes keys, returning their rows and optimizer state."""
        rows, state, _ = self.table.lookup_with_state(keys)
        self.table.delete(keys)
        return rows, state

    def everything(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chunks = list(self.table.export())
        if not chunks:
            return (np.empty(0, np.uint64), np.empty((0, self.table.dim), np.float32),
                    np.empty((0, self.table.state_floats), np.float32))
        keys, rows, state = (np.concatenate(parts) for parts in zip(*chunks))
        return keys, rows, state

    def close(self) -> None:
        directory = self.store.path
        self.store.close()
        shutil.rmtree(directory, ignore_errors=True)


def remove_orphans(cache_dir: Path) -> None:
    """Removes the cache directories under cache_dir whose processes have ended."""
    for entry in cache_dir.iterdir():
        match = _DIRECTORY.match(entry.name)
        if match and not Path(f"/proc/{match[1]}").exists():
            shutil.rmtree(entry, ignore_errors=True)
