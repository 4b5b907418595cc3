"""What a gateway mode is: the Strategy that the one Gateway servicer delegates its mode's work to, and
the GatewayContext every strategy works with.

The servicer keeps the order of calls, the plans, the failures and the counters; a strategy decides
which rows NextBatch serves, what the trainer's gradients change, what Finish writes back, and which
background threads keep it ahead of the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from embps.api import TableSpec
from embps.client import PSClient
from embps.common.job_config import JobConfig
from embps.v1 import training_pb2 as pb

from .peer_exchange import PeerExchange, sum_contributions, sum_counted
from .progress import Progress
from .traffic import Traffic


@dataclass
class GatewayContext:
    """One gateway's parts, shared by its servicer and its strategy."""
    job: JobConfig
    me: int                  # the trainer this gateway serves
    ps: PSClient
    peers: PeerExchange
    progress: Progress
    traffic: Traffic
    spec: TableSpec          # the job's table, as the shards describe it
    state_floats: int        # optimizer state per row
    cache_dir: Path          # where a strategy that caches rows keeps them

    @property
    def dim(self) -> int:
        return self.spec.dim

    def remote_rows(self, keys: np.ndarray) -> int:
        """How many of keys live on a shard of another host than this gateway's (all, when the job has no
        hosts)."""
        local = self.job.local_shard(self.me)
        return len(keys) if local is None else int(np.count_nonzero(self.ps.router.shard_of(keys) != local))

    def contribute(self, b: int, keys: np.ndarray, grads: np.ndarray, counts: np.ndarray | None = None,
                   part: int = 0, to: np.ndarray | None = None) -> None:
        """Sends this trainer's gradients of batch b (or of a part of it) to every peer, or each key's to
        gateway to[key] alone (see PeerExchange.contribute)."""
        self.traffic.add(peer_grad_bytes_out=self.peers.contribute(b, keys, grads, counts, part, to))

    def summed_gradients(self, b: int, batch_keys: np.ndarray, keys: np.ndarray, grads: np.ndarray,
                         part: int = 0) -> np.ndarray:
        """Every trainer's gradients of batch b (or of a part of it: keys and batch_keys are that part's), summed
        with the peers' at batch_keys (sorted, the same on every gateway)."""
        self.contribute(b, keys, grads, part=part)
        return sum_contributions(batch_keys, self.peers.gather(b, part), self.dim)

    def pusher_of(self, keys: np.ndarray) -> np.ndarray:
        """The gateway that sums and pushes each key's gradients: its shard's number modulo the gateways.
        With hosts that is the gateway beside the key's owner (shard h is on host h): the push crosses no
        link."""
        return np.asarray(self.ps.router.shard_of(keys)) % self.peers.n

    def reduced_gradients(self, b: int, keys: np.ndarray, grads: np.ndarray, counts: np.ndarray | None = None,
                          part: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The keys of batch b (or of a part of it) that this gateway pushes, sorted, with every trainer's
        gradients of them summed in trainer order and their contributions counted.  Each trainer's gradient
        of a key goes to the key's pusher alone (a reduce-scatter)."""
        self.contribute(b, keys, grads, counts, part, to=self.pusher_of(keys))
        return sum_counted(self.peers.gather(b, part), self.dim)

    def push_to_shards(self, keys: np.ndarray, summed: np.ndarray, counts: np.ndarray | None = None) -> None:
        """The shards apply the summed gradients at keys; counts, if given, are the contributions each sum
        carries (None: one)."""
        if len(keys):
            self.ps.update(self.job.table, keys, summed, counts)
            self.traffic.add(bytes_out=len(keys) * (8 + 4 * self.dim + (0 if counts is None else 4)))


class Strategy(ABC):
    """A gateway mode.  The servicer calls rows(b) and push(b) in turn for b = 0, 1, ..., then finish() once
    the trainer is done, and close() when the process stops; the background threads run from the start,
    and any GatewayError they raise fails the gateway."""

    initial_round: ClassVar[int]   # the round every gateway has passed before batch 0 (see PeerExchange)

    def __init__(self, context: GatewayContext):
        self.context = context

    def background(self) -> dict[str, Callable[[], None]]:
        """The threads to run beside the gRPC handlers, by name."""
        return {}

    @abstractmethod
    def rows(self, b: int, plan: pb.BatchPlan, keys: np.ndarray) -> np.ndarray:
        """The rows of keys (this trainer's distinct keys of batch b, sorted) that NextBatch serves."""

    @abstractmethod
    def push(self, b: int, plan: pb.BatchPlan, keys: np.ndarray, grads: np.ndarray) -> None:
        """Takes the trainer's gradients of batch b (finite, one row per key of keys)."""

    def finish(self) -> None:
        """After the last push: puts on the shards whatever the strategy still holds."""

    def close(self) -> None:
        """Releases what the strategy holds (its cache)."""
