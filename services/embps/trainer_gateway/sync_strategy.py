"""sync (Bagpipe): a prefetcher reads each batch's missing rows, with optimizer state, from the shards up
to L batches ahead, as the oracle's plans say; gradients are summed with the peers and applied to the
cache (rows the next batch uses before the trainer's push is acknowledged, the rest just after); every
C batches the rows whose lease ended go back to the shards, each written by its pusher (the gateway
beside its owner, when the job has hosts).  Rows no other batch in the window uses are streamed: read
for their batch only (by the gateways whose trainers use them), and their summed gradients, each made by
its pusher alone, applied by the shards (just after the push, with the deferred updates).  Round b says
a gateway's evictions before batch b, and its streamed updates before b, are on the shards.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import numpy as np

from embps.api import wire
from embps.v1 import training_pb2 as pb

from .batch_keys import members
from .peer_exchange import EVERY_GATEWAY, split_contributions, sum_contributions, sum_counted
from .row_cache import RowCache
from .strategy import GatewayContext, Strategy

WRITE_BACK_ROWS = 32768   # rows per Assign when the cache goes back to the shards


class SyncStrategy(Strategy):
    initial_round = 0   # there is nothing to evict before batch 0

    def __init__(self, context: GatewayContext):
        super().__init__(context)
        self._cache: RowCache | None = None   # made when the first plan tells the batch shape
        self.prefetched = -1                 # last batch whose rows are in the cache
        self.streamed: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # batch -> (keys, rows) read for it
        self.later_applied = -1              # last batch whose deferred gradients are applied
        self.later: queue.Queue = queue.Queue()

    @property
    def cache(self) -> RowCache:
        """The cache; every use of it follows the prefetch of batch 0, which made it."""
        assert self._cache is not None, "the cache is used before the first plan made it"
        return self._cache

    def background(self) -> dict[str, Callable[[], None]]:
        return {"prefetcher": self._prefetch_all, "later-applier": self._apply_later}

    def _make_cache(self, plan: pb.BatchPlan) -> RowCache:
        """Sized for the distinct rows of about L + 2C + 2 batches (see LookaheadPlanner), at most the table."""
        job = self.context.job
        features = len(plan.features.sparse) // 8 // max(plan.features.samples, 1)
        window = job.lookahead + 2 * job.cleanup_every + 2
        capacity = min(window * job.global_batch * features, self.context.spec.capacity) + 4096
        return RowCache(self.context.cache_dir, f"gateway-{self.context.me}", self.context.spec, capacity)

    # ---- background work ------------------------------------------------------------------

    def _prefetch_all(self) -> None:
        c, progress = self.context, self.context.progress
        b = 0
        while (plan := progress.plan(b)) is not None:
            # Stay within the window: rows for batches more than L ahead would overfill the cache.
            progress.wait(lambda: b <= progress.next_batch + c.job.lookahead, "the trainer to advance")
            if self._cache is None:
                self._cache = self._make_cache(plan)
            stream = wire.keys_from_bytes(plan.stream)
            keys = np.setdiff1d(wire.keys_from_bytes(plan.prefetch), stream, assume_unique=True)
            mine = np.intersect1d(stream, progress.local[b][0], assume_unique=True)
            c.peers.wait_round(plan.fetch_after_round)
            if len(keys):
                rows, state, _ = c.ps.lookup(c.job.table, keys, with_state=True)
                self.cache.insert(keys, rows, state)
                c.traffic.add(bytes_in=rows.nbytes + state.nbytes + len(keys), bytes_out=keys.nbytes,
                              rows_fetched=len(keys), remote_rows_fetched=c.remote_rows(keys))
            streamed = c.ps.lookup(c.job.table, mine) if len(mine) else np.empty((0, c.dim), np.float32)
            c.traffic.add(bytes_in=streamed.nbytes + len(mine), bytes_out=mine.nbytes, rows_fetched=len(mine),
                          remote_rows_fetched=c.remote_rows(mine))
            with progress.changing():
                self.streamed[b] = (mine, streamed)
                self.prefetched = b
            b += 1

    def _apply_later(self) -> None:
        """Part 1 of every batch's gradients, in batch order: summed with the peers', the streamed rows' sums go
        to the shards and the rest to the cache."""
        c = self.context
        while True:
            batch, later_keys, stream, keys, grads = self.later.get()
            if batch is None:
                return
            streamed = members(later_keys, stream)
            mine_streamed = streamed[np.searchsorted(later_keys, keys)]   # keys are some of later_keys
            # Every cache holds the cached rows, so every gateway needs their sums; only the shards need the
            # streamed rows', so each of those goes to the one gateway that pushes it.  Both go in one
            # message to each peer: a call costs more CPU than the bytes it carries.
            to = np.full(len(keys), EVERY_GATEWAY, np.int64)
            to[mine_streamed] = c.pusher_of(keys[mine_streamed])
            c.contribute(batch, keys, grads, part=1, to=to)
            cached_parts, streamed_parts = split_contributions(c.peers.gather(batch, 1), later_keys, streamed)
            summed = sum_contributions(later_keys[~streamed], cached_parts, c.dim)
            pushed, pushed_sums, _ = sum_counted(streamed_parts, c.dim)
            c.push_to_shards(pushed, pushed_sums)
            if len(summed):
                self.cache.apply(later_keys[~streamed], summed)
            with c.progress.changing():
                self.later_applied = batch

    # ---- the trainer's steps ---------------------------------------------------------------

    def rows(self, b: int, plan: pb.BatchPlan, keys: np.ndarray) -> np.ndarray:
        c, progress = self.context, self.context.progress
        evict = wire.keys_from_bytes(plan.evict)
        is_round = b and b % c.job.cleanup_every == 0
        # Rows of this batch may have deferred updates from batch b-2; an eviction needs all of b-1's.
        progress.wait(lambda: self.later_applied >= b - (1 if is_round else 2), "deferred gradient updates")
        if is_round:
            if len(evict):
                rows, state = self.cache.take(evict)
                mine = c.pusher_of(evict) == c.me
                c.ps.assign(c.job.table, evict[mine], rows[mine], state[mine])
                c.traffic.add(bytes_out=int(mine.sum()) * (8 + 4 * (c.dim + c.state_floats)))
            c.peers.round_done(b)   # its evictions, and the streamed updates before b, are on the shards
        progress.wait(lambda: self.prefetched >= b, f"the prefetch of batch {b}")
        c.traffic.add(rows_used=len(plan.keys) // 8)
        with progress.cond:
            stream_keys, stream_rows = self.streamed.pop(b)
        rows = np.empty((len(keys), c.dim), np.float32)
        streamed = members(keys, stream_keys)
        rows[streamed] = stream_rows   # both sorted
        rows[~streamed] = self.cache.rows(keys[~streamed])
        return rows

    def push(self, b: int, plan: pb.BatchPlan, keys: np.ndarray, grads: np.ndarray) -> None:
        batch_keys, stream = wire.keys_from_bytes(plan.keys), wire.keys_from_bytes(plan.stream)
        needed = members(batch_keys, wire.keys_from_bytes(plan.sync_now)) & ~members(batch_keys, stream)
        now_keys = batch_keys[needed]
        mine_now = needed[np.searchsorted(batch_keys, keys)]   # this trainer's keys are some of the batch's
        self.cache.apply(now_keys, self.context.summed_gradients(b, now_keys, keys[mine_now], grads[mine_now]))
        # The rest goes to the peers from the later-applier, while the trainer steps on: a later batch reads
        # those rows only after the deferred updates before it (rows), and the streamed ones after the round
        # that those updates gate.
        self.later.put((b, batch_keys[~needed], stream, keys[~mine_now], grads[~mine_now]))

    def finish(self) -> None:
        self.later.put((None, None, None, None, None))
        self.context.progress.wait(lambda: self.later_applied >= self.context.progress.pushed,
                                   "deferred gradient updates")
        if self._cache is not None:
            self._write_back_all()

    def _write_back_all(self) -> None:
        c = self.context
        keys, rows, state = self.cache.everything()
        order = np.argsort(keys)   # the replicas agree on the order of sorted keys
        mine = order[np.arange(len(keys)) % c.peers.n == c.me]
        for start in range(0, len(mine), WRITE_BACK_ROWS):
            part = mine[start:start + WRITE_BACK_ROWS]
            c.ps.assign(c.job.table, keys[part], rows[part], state[part])
        c.traffic.add(bytes_out=len(mine) * (8 + 4 * (c.dim + c.state_floats)))

    def close(self) -> None:
        if self._cache is not None:
            self.cache.close()
