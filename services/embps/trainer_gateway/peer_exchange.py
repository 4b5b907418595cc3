"""Gradient contributions and round notices between the gateways of one job.

Every gateway sends its trainer's gradient rows for batch b to every peer and sums the N contributions
in trainer order, so all replicas apply the same bits (sync, direct, and bounded at staleness 0; bounded
above 0 sends no gradients to peers).  A batch's gradients may go in parts, each gathered on its own
(sync: the rows the next step needs first, the rest off the trainer's path).  A round notice "r from t"
says gateway t has put on the shards everything the round owes them (sync: the evictions before batch r;
direct: the updates of batch r; bounded: 2b+1 the updates of batch b, and above staleness 0, 2b that it
has served batch b's rows); a gateway about to read rows from, or write rows to, the shards first waits
until every gateway has passed the round they depend on.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import grpc
import numpy as np

from embps.common.grpc_channels import TRAINING_MAX_MESSAGE_BYTES, channel_options
from embps.common.security import Security
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from .errors import GatewayError

FINAL_ROUND = 1 << 62


class Contribution(NamedTuple):
    """One trainer's gradients of a batch."""
    keys: np.ndarray
    grads: np.ndarray
    counts: np.ndarray | None   # bounded mode: contributions per gradient; None: one each


class PeerExchange:
    def __init__(self, me: int, addresses: tuple[str, ...], timeout: float, initial_round: int, security: Security):
        self.me, self.n, self.timeout = me, len(addresses), timeout
        self.addresses = addresses
        self._cond = threading.Condition()
        self._contributions: dict[tuple[int, int], dict[int, Contribution]] = {}   # (batch, part) -> by trainer
        self._rounds = [initial_round] * self.n
        self._stopping = False
        self._channels = {t: security.channel(a, channel_options(TRAINING_MAX_MESSAGE_BYTES))
                          for t, a in enumerate(addresses) if t != me}
        self._stubs = {t: pb_grpc.GatewayPeerStub(c) for t, c in self._channels.items()}
        self._pool = ThreadPoolExecutor(max(1, self.n - 1), thread_name_prefix="peers")

    # ---- what this gateway says ------------------------------------------------------------

    def contribute(self, batch: int, keys: np.ndarray, grads: np.ndarray, counts: np.ndarray | None = None,
                   part: int = 0) -> None:
        """counts (bounded mode): the contributions each gradient carries, None for one each."""
        self.receive(batch, self.me, keys, grads, counts, part)
        message = pb.ContributeRequest(batch=batch, trainer=self.me, keys=keys.tobytes(), grads=grads.tobytes(),
                                       counts=b"" if counts is None else counts.tobytes(), part=part)
        self._broadcast(lambda stub: stub.Contribute(message, timeout=self.timeout),
                        f"gradients of batch {batch} (part {part})")

    def round_done(self, round_: int) -> None:
        self.receive_round(self.me, round_)
        message = pb.NotifyRoundRequest(round=round_, trainer=self.me)
        self._broadcast(lambda stub: stub.NotifyRound(message, timeout=self.timeout), f"round {round_}")

    def _broadcast(self, call, what: str) -> None:
        peers = list(self._stubs.items())
        # The last peer's call runs on this thread: with two trainers there is no hand-off to the pool at all.
        futures = {t: self._pool.submit(call, stub) for t, stub in peers[:-1]}
        futures.update({t: _done(call, stub) for t, stub in peers[-1:]})
        for t, future in futures.items():
            try:
                future.result()
            except grpc.RpcError as error:
                raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                                   f"cannot send {what} to the gateway of trainer {t} at {self.addresses[t]}: "
                                   f"{error.code().name}: {error.details()}") from None

    # ---- what peers say --------------------------------------------------------------------

    def receive(self, batch: int, trainer: int, keys: np.ndarray, grads: np.ndarray,
                counts: np.ndarray | None = None, part: int = 0) -> None:
        with self._cond:
            self._contributions.setdefault((batch, part), {})[trainer] = Contribution(keys, grads, counts)
            self._cond.notify_all()

    def receive_round(self, trainer: int, round_: int) -> None:
        with self._cond:
            self._rounds[trainer] = max(self._rounds[trainer], round_)
            self._cond.notify_all()

    # ---- waiting ---------------------------------------------------------------------------

    def gather(self, batch: int, part: int = 0) -> list[Contribution]:
        """Every trainer's contribution to this part of batch, in trainer order."""
        at = (batch, part)
        with self._cond:
            self._wait(lambda: len(self._contributions.get(at, ())) == self.n,
                       lambda: f"gradients of batch {batch} (part {part}) from trainers "
                               f"{sorted(set(range(self.n)) - set(self._contributions.get(at, {})))}")
            parts = self._contributions.pop(at)
        return [parts[t] for t in range(self.n)]

    def wait_round(self, round_: int) -> None:
        with self._cond:
            self._wait(lambda: min(self._rounds) >= round_,
                       lambda: f"round {round_} from trainers "
                               f"{[t for t, r in enumerate(self._rounds) if r < round_]}")

    def _wait(self, ready, describe) -> None:
        deadline = time.monotonic() + self.timeout
        while not ready():
            if self._stopping:
                raise GatewayError(grpc.StatusCode.UNAVAILABLE, "the gateway is stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"waited {self.timeout:.0f} s for {describe()}: is that trainer or its gateway "
                                   f"still running?")
            self._cond.wait(min(remaining, 1.0))

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for channel in self._channels.values():
            channel.close()


def _done(call, *args) -> Future:
    """call(*args) made here and now, as a finished future (its exception kept for result())."""
    future: Future = Future()
    try:
        future.set_result(call(*args))
    except grpc.RpcError as error:
        future.set_exception(error)
    return future


def sum_contributions(keys: np.ndarray, parts: list[Contribution], dim: int) -> np.ndarray:
    """Gradients summed per key of `keys` (sorted), adding trainer 0's, then 1's, ...: the same bits
    on every gateway."""
    summed = np.zeros((len(keys), dim), np.float32)
    for part_keys, grads, _ in parts:
        if len(part_keys):
            pos = np.searchsorted(keys, part_keys)
            if pos.max() >= len(keys) or not np.array_equal(keys[pos], part_keys):
                raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "gradients for keys outside the batch")
            summed[pos] += grads   # keys are distinct within a contribution
    return summed
