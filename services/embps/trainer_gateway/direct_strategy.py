"""direct (the baseline): every batch's rows are read from the shards, and the shards apply the batch's
summed gradients.  Each key's sum is made by one gateway, its pusher (the one beside its owner when the
job has hosts), from every trainer's gradient of it, so what a parameter server with server-side
aggregation would receive crosses the links, once; round b says a gateway's sums of batch b are on the
shards."""

from __future__ import annotations

import numpy as np

from embps.v1 import training_pb2 as pb

from .strategy import Strategy


class DirectStrategy(Strategy):
    initial_round = -1   # batch 0 reads rows no update has touched

    def rows(self, b: int, plan: pb.BatchPlan, keys: np.ndarray) -> np.ndarray:
        c = self.context
        c.peers.wait_round(b - 1)   # every gateway's updates of the previous batch are on the shards
        rows = c.ps.lookup(c.job.table, keys)
        c.traffic.add(bytes_in=rows.nbytes + len(keys), bytes_out=keys.nbytes, rows_fetched=len(keys),
                      rows_used=len(keys), remote_rows_fetched=c.remote_rows(keys))
        return rows

    def push(self, b: int, plan: pb.BatchPlan, keys: np.ndarray, grads: np.ndarray) -> None:
        c = self.context
        pushed, summed, _ = c.reduced_gradients(b, keys, grads)
        c.push_to_shards(pushed, summed)   # one contribution per trainer and batch: no counts
        c.peers.round_done(b)
