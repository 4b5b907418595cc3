"""direct (the baseline): every batch's rows are read from the shards, and the summed gradients are
applied by the shards, each gateway sending its share; round b says a gateway's share of batch b is on
the shards."""

from __future__ import annotations

import numpy as np

from embps.api import wire
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
        batch_keys = wire.keys_from_bytes(plan.keys)
        self.context.update_shards(batch_keys, self.context.summed_gradients(b, batch_keys, keys, grads))
        self.context.peers.round_done(b)
