"""Gradient contributions and round notices between the gateways of one job.

A gateway sends its trainer's gradient rows for batch b to its peers, and sums the N contributions it
gets in trainer order, so every sum has the same bits wherever it is made.  Where every replica of a
row needs the sum (sync mode's cache), every peer gets every gradient (an all-gather); where only the
shards do (direct mode, bounded at staleness 0, sync's streamed rows), each key's gradients go to the
one gateway that pushes its sum (a reduce-scatter: per gateway, a gradient crosses at most one link
instead of one to each peer).  Bounded above staleness 0 sends no gradients to peers.  A batch's
gradients may go in parts, each gathered on its own (sync: the rows the next step needs first, the rest
off the trainer's path).  A round notice "r from t" says gateway t has put on the shards everything the
round owes them (sync: the evictions before batch r; direct: the updates of batch r; bounded: 2b+1 the
updates of batch b, and above staleness 0, 2b that it has served batch b's rows); a gateway about to
read rows from, or write rows to, the shards first waits until every gateway has passed the round they
depend on.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
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
EVERY_GATEWAY = -1   # in contribute's `to`: this key's gradient goes to every gateway


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
                   part: int = 0, to: np.ndarray | None = None) -> int:
        """Sends this trainer's gradients of batch (or of a part of it) to every peer, or, with `to` (each
        key's gateway, or EVERY_GATEWAY), each key's gradient to that gateway alone (or to all); counts
        (bounded mode): the contributions each gradient carries, None for one each.  Returns the bytes sent
        to peers."""
        shares = {t: Contribution(keys, grads, counts) for t in range(self.n)} if to is None else {
            t: _share(keys, grads, counts, (to == t) | (to == EVERY_GATEWAY)) for t in range(self.n)}
        self.receive(batch, self.me, *shares.pop(self.me), part)
        messages = {t: pb.ContributeRequest(batch=batch, trainer=self.me, keys=c.keys.tobytes(),
                                            grads=c.grads.tobytes(),
                                            counts=b"" if c.counts is None else c.counts.tobytes(), part=part)
                    for t, c in shares.items()}
        self._send({t: functools.partial(self._contribute_to, m) for t, m in messages.items()},
                   f"gradients of batch {batch} (part {part})")
        return sum(len(m.keys) + len(m.grads) + len(m.counts) for m in messages.values())

    def _contribute_to(self, message: pb.ContributeRequest, stub: pb_grpc.GatewayPeerStub) -> None:
        stub.Contribute(message, timeout=self.timeout)

    def round_done(self, round_: int) -> None:
        self.receive_round(self.me, round_)
        message = pb.NotifyRoundRequest(round=round_, trainer=self.me)
        self._send({t: lambda stub: stub.NotifyRound(message, timeout=self.timeout) for t in self._stubs},
                   f"round {round_}")

    def _send(self, calls: dict[int, Callable[[pb_grpc.GatewayPeerStub], object]], what: str) -> None:
        """Makes calls[t](peer t's stub) for every peer t, together."""
        peers = list(calls.items())
        # The last peer's call runs on this thread: with two trainers there is no hand-off to the pool at all.
        futures = {t: self._pool.submit(call, self._stubs[t]) for t, call in peers[:-1]}
        futures.update({t: _done(call, self._stubs[t]) for t, call in peers[-1:]})
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
            contributions = self._contributions.setdefault((batch, part), {})
            contributions[trainer] = Contribution(keys, grads, counts)
            if len(contributions) == self.n:   # gather waits for all of them: no sooner wake-up helps
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


def _share(keys: np.ndarray, grads: np.ndarray, counts: np.ndarray | None, which: np.ndarray) -> Contribution:
    return Contribution(keys[which], grads[which], None if counts is None else counts[which])


def split_contributions(parts: list[Contribution], keys: np.ndarray,
                        which: np.ndarray) -> tuple[list[Contribution], list[Contribution]]:
    """Each contribution (of some of keys, sorted) divided into its gradients of the keys where `which` is
    False and those where it is True: a part of a batch that went in one message, summed in two ways."""
    unmarked, marked = [], []
    for part_keys, grads, counts in parts:
        marks = which[_positions(keys, part_keys)]
        unmarked.append(_share(part_keys, grads, counts, ~marks))
        marked.append(_share(part_keys, grads, counts, marks))
    return unmarked, marked


def sum_contributions(keys: np.ndarray, parts: list[Contribution], dim: int) -> np.ndarray:
    """Gradients summed per key of `keys` (sorted), adding trainer 0's, then 1's, ...: the same bits
    on every gateway."""
    summed = np.zeros((len(keys), dim), np.float32)
    for part_keys, grads, _ in parts:
        summed[_positions(keys, part_keys)] += grads   # keys are distinct within a contribution
    return summed


def _positions(keys: np.ndarray, part_keys: np.ndarray) -> np.ndarray:
    """Where each of a contribution's keys is in keys (sorted); a key not there is a peer's error."""
    pos = np.searchsorted(keys, part_keys)
    if len(part_keys) and (pos.max() >= len(keys) or not np.array_equal(keys[pos], part_keys)):
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "gradients for keys outside the batch")
    return pos


def sum_counted(parts: list[Contribution], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every key the trainers contributed (sorted), its gradients summed in trainer order (the same bits
    wherever they are summed) and its contributions summed."""
    keys = np.unique(np.concatenate([p.keys for p in parts])) if parts else np.empty(0, np.uint64)
    summed = np.zeros((len(keys), dim), np.float32)
    counts = np.zeros(len(keys), np.uint32)
    for part in parts:
        if len(part.keys):
            pos = np.searchsorted(keys, part.keys)   # keys are distinct within a contribution
            summed[pos] += part.grads
            counts[pos] += 1 if part.counts is None else part.counts
    return keys, summed, counts
