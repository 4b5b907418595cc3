"""Where one gateway is: the plans the oracle has sent, the batch its trainer holds, and the failure that
every wait reports, all under one condition that the strategy's own progress shares."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from embps.v1 import training_pb2 as pb

from .errors import GatewayError


class Progress:
    def __init__(self, me: int, timeout_seconds: float):
        self.me, self.timeout_seconds = me, timeout_seconds
        self._lock = threading.RLock()
        self.cond = threading.Condition(self._lock)   # held to read or change any of this
        self._waiting: list[tuple[Callable[[], bool], threading.Condition]] = []   # wait()'s, on cond's lock
        self.plans: dict[int, pb.BatchPlan] = {}
        self.local: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # batch -> this trainer's keys, inverse
        self.plans_end: int | None = None          # number of batches, once the stream has ended
        self.failure: GatewayError | None = None   # from a background thread: every call reports it
        self.next_batch = 0                         # the batch NextBatch serves next
        self.pushed = -1                            # last batch whose gradients were pushed

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Holds the condition while the caller changes what others wait for, then wakes those it made ready
        (or all, on a failure): a thread woken to wait again costs CPU that the step needs."""
        with self.cond:
            yield
            for ready, waiter in self._waiting:
                if self.failure or ready():
                    waiter.notify()

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        """Blocks until ready() holds; raises the gateway's failure, or DEADLINE_EXCEEDED after the job's timeout."""
        deadline = time.monotonic() + self.timeout_seconds
        with self.cond:
            if ready() and not self.failure:
                return
            waiter = (ready, threading.Condition(self._lock))
            self._waiting.append(waiter)
            try:
                while not ready():
                    if self.failure:
                        raise self.failure
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           f"gateway {self.me} waited {self.timeout_seconds:.0f} s for {what}")
                    waiter[1].wait(min(remaining, 1.0))
            finally:
                self._waiting.remove(waiter)
            if self.failure:
                raise self.failure

    def plan(self, b: int) -> pb.BatchPlan | None:
        """Batch b's plan, once it is here; None if the stream ended before it."""
        self.wait(lambda: b in self.plans or (self.plans_end is not None and b >= self.plans_end),
                  f"the plan of batch {b}")
        return self.plans.get(b)

    def fail(self, error: GatewayError) -> None:
        with self.changing():
            self.failure = error
