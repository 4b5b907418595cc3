"""Bagpipe's oracle: plans a cache over a window of L future batches.

For each global batch b, in order:
  * every C batches (b a multiple of C), evict the cached rows whose lease ended (lease < b);
  * prefetch the rows of b that are not cached; they may be read from the shards only after the
    evictions that last removed them were written back (fetch_after_round);
  * stream the prefetched rows that no other batch in the window uses: caching them would cost a
    write-back for nothing, so they are read for b alone and their gradients go to the shards; the
    next round (multiple of C) after b is when those updates are known to be there;
  * lease every row of b until its last use in [b, b + L), i.e. its last use the window can see;
  * sync_now: rows of b that batch b + 1 uses too (their gradients are needed before the next step).
A row is evicted only if no batch in its window uses it again, so the cache holds the rows of about
L + C batches, and a re-fetch always follows the write-back of the row's last update.  Same
batches and settings, same plans: nothing here depends on timing.

Rows are tracked as dense indices (feature offset + id) in arrays the size of all tables, as the
oracle in the Bagpipe paper does: a few bytes per row, vectorised updates per batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from embps.common.job_config import FEATURE_SHIFT


@dataclass
class Plan:
    batch: int
    keys: np.ndarray          # uint64, sorted: the distinct keys of the batch
    sync_now: np.ndarray
    prefetch: np.ndarray
    stream: np.ndarray        # subset of prefetch: read for this batch only, never cached
    evict: np.ndarray
    fetch_after_round: int


class LookaheadPlanner:
    def __init__(self, table_sizes: tuple[int, ...], lookahead: int, cleanup_every: int):
        self.lookahead, self.cleanup_every = lookahead, cleanup_every
        self.offsets = np.concatenate([[0], np.cumsum(table_sizes)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.last_seen = np.full(total, -1, np.int64)
        self.lease = np.full(total, -1, np.int64)
        self.evicted_at = np.zeros(total, np.int64)
        self.cached = np.zeros(total, np.bool_)

    def rows_of(self, sparse: np.ndarray) -> np.ndarray:
        """Distinct dense row indices of a [samples, features] id matrix, sorted."""
        return np.unique(sparse + self.offsets[:-1])

    def keys_of(self, rows: np.ndarray) -> np.ndarray:
        feature = np.searchsorted(self.offsets, rows, side="right") - 1
        return (feature.astype(np.uint64) << np.uint64(FEATURE_SHIFT)) | (rows - self.offsets[feature]).astype(np.uint64)

    def plan(self, batches: Iterable[np.ndarray]) -> Iterator[Plan]:
        """Plans for a stream of [samples, features] id matrices, one per global batch, in order."""
        window: deque[np.ndarray] = deque()
        stream = iter(batches)
        read = 0
        for b in range(1 << 62):
            while read < b + max(self.lookahead, 2):   # the window reaches b + L - 1, and sync_now b + 1
                sparse = next(stream, None)
                if sparse is None:
                    break
                rows = self.rows_of(sparse)
                self.last_seen[rows] = read
                window.append(rows)
                read += 1
            if not window:
                return
            yield self._plan_one(b, window.popleft(), window[0] if window else None)

    def _plan_one(self, b: int, rows: np.ndarray, next_rows: np.ndarray | None) -> Plan:
        evict = np.empty(0, np.int64)
        if b and b % self.cleanup_every == 0:
            evict = np.flatnonzero(self.cached & (self.lease < b))
            self.cached[evict] = False
            self.evicted_at[evict] = b
        prefetch = rows[~self.cached[rows]]
        fetch_after = int(self.evicted_at[prefetch].max()) if len(prefetch) else 0
        self.lease[rows] = np.minimum(self.last_seen[rows], b + self.lookahead - 1)
        stream = prefetch[self.lease[prefetch] == b]
        self.cached[rows] = True
        self.cached[stream] = False
        self.evicted_at[stream] = (b // self.cleanup_every + 1) * self.cleanup_every
        now = np.intersect1d(rows, next_rows, assume_unique=True) if next_rows is not None else rows[:0]
        return Plan(b, self.keys_of(rows), self.keys_of(now), self.keys_of(prefetch), self.keys_of(stream),
                    self.keys_of(evict), fetch_after)
