"""How a shard's gRPC call ends: timed and counted by method and status code, its exception turned
into its gRPC status (store failures with their reason; anything else logged, and INTERNAL)."""

from __future__ import annotations

import logging
import time

import grpc

from embps.api import StoreError
from embps.api.status import abort, grpc_code_for, reason_of

from .metrics import ShardMetrics

log = logging.getLogger("embps.ps_shard")
_EXPECTED_ERRORS = (StoreError, MemoryError)


class CallOutcome:
    """`with CallOutcome(...) as call:` around a handler's body (streams included).  `call.count`
    is what the metrics count (keys or rows); `progress`, formatted with count, ends an error's message."""

    def __init__(self, metrics: ShardMetrics, method: str, context: grpc.ServicerContext, progress: str = ""):
        self.metrics, self.method, self.context, self.progress = metrics, method, context, progress
        self.count = 0

    def __enter__(self) -> CallOutcome:
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        code = self._code(error)
        expected = isinstance(error, _EXPECTED_ERRORS)
        unexpected = isinstance(error, Exception) and not expected and code != grpc.StatusCode.CANCELLED
        if code == grpc.StatusCode.CANCELLED:
            log.warning("call ended by its client", extra={"method": self.method, "error": repr(error)})
        elif unexpected:
            log.error("internal error", exc_info=error, extra={"method": self.method})
        # Counted once logged: whoever sees the count finds the log line.
        self.metrics.observe(self.method, code.name, self.count, self.started)
        if expected:
            abort(self.context, code, f"{error}{self.progress.format(count=self.count)}", reason_of(error))
        if unexpected:
            abort(self.context, code, f"internal error in {self.method}; see the shard's log")

    def _code(self, error: BaseException | None) -> grpc.StatusCode:
        if error is None:
            return grpc.StatusCode.OK
        if isinstance(error, _EXPECTED_ERRORS):
            return grpc_code_for(error)
        # A stream closed before its end, or a request stream broken off: the client left.
        if isinstance(error, GeneratorExit) or not self.context.is_active():
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.INTERNAL
