"""`embps trainer-gateway --job FILE --trainer I`: serves trainer I its batches and rows and takes its
gradients.  The job's mode is a strategy (sync_strategy, direct_strategy, bounded_strategy) that this one servicer
delegates to; it keeps the order of calls, the plans, the failures and the traffic counters.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from embps.api import StoreError, wire
from embps.api.status import abort, grpc_code_for, reason_of
from embps.client import PSClient, ShardError
from embps.common import structured_log
from embps.common.grpc_channels import TRAINING_MAX_MESSAGE_BYTES, channel_options
from embps.common.grpc_service import GrpcService, ServerLimits, run_service
from embps.common.heap import keep_freed_memory
from embps.common.job_config import JobConfig, feature_keys
from embps.common.job_messages import GATEWAY_MODES
from embps.common.spec_messages import spec_from_message
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from .bounded_strategy import BoundedStrategy
from .batch_keys import distinct
from .direct_strategy import DirectStrategy
from .errors import GatewayError
from .peer_exchange import FINAL_ROUND, PeerExchange
from .progress import Progress
from .strategy import GatewayContext, Strategy
from .sync_strategy import SyncStrategy
from .traffic import Traffic

COMMAND = "trainer-gateway"
HELP = "cache rows for one trainer and sum its gradients with the other gateways"
SERVICES = (pb.DESCRIPTOR.services_by_name["TrainerGateway"], pb.DESCRIPTOR.services_by_name["GatewayPeer"])
STRATEGIES: dict[str, type[Strategy]] = {"sync": SyncStrategy, "direct": DirectStrategy,   # by the job's mode
                                          "bounded": BoundedStrategy}
GRACE_SECONDS = 2.0
log = logging.getLogger("embps.trainer_gateway")


def add_arguments(parser) -> None:
    parser.add_argument("--job", required=True, help="the job's TOML file")
    parser.add_argument("--trainer", type=int, required=True, help="which trainer this gateway serves")
    parser.add_argument("--cache-dir", default="", help="where the cache's table lives (default: /dev/shm)")


def _reported(method):
    """Turns gateway, shard and planning failures into gRPC statuses with their message (and reason).
    Anything else is a bug that may have left the gateway half-way through a step: it is logged, and
    fails the gateway, so that every later call, and so the job, stops with it."""
    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except GatewayError as error:
            abort(context, error.code, str(error))
        except ShardError as error:
            abort(context, error.code, f"parameter shard: {error}", error.reason)
        except StoreError as error:   # malformed bytes in the request
            abort(context, grpc_code_for(error), str(error), reason_of(error))
        except Exception as error:
            log.exception("internal error", extra={"method": method.__name__, "trainer": self.me})
            self._fail(GatewayError(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {error!r}"))
            abort(context, grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the gateway's log")
    return handler


class Gateway(pb_grpc.TrainerGatewayServicer, pb_grpc.GatewayPeerServicer):
    def __init__(self, job: JobConfig, trainer: int, cache_dir: Path):
        self.job, self.me = job, trainer
        self.ps = PSClient(job.cluster_config())
        info = self.ps.describe_table(job.table)
        spec = spec_from_message(info.spec)
        self.dim = spec.dim
        kind = STRATEGIES[job.mode]
        self.peers = PeerExchange(trainer, job.addresses.gateways, job.timeout_seconds,
                                  initial_round=kind.initial_round, security=job.security)
        self.progress = Progress(trainer, job.timeout_seconds)
        self.traffic = Traffic()
        self.wait_seconds = 0.0
        self.steps = 0
        self.served_keys = np.empty(0, np.uint64)   # of the batch the trainer holds: its push must be for them
        self.strategy = kind(GatewayContext(job, trainer, self.ps, self.peers, self.progress, self.traffic,
                                            spec, info.state_floats, cache_dir))
        for name, target in self.strategy.background().items():
            self._start(target, name)
        self._start(self._read_plans, "plan-reader")

    # ---- background work ------------------------------------------------------------------

    def _start(self, target, name: str) -> None:
        def guarded():
            try:
                target()
            except GatewayError as error:
                self._fail(error)
            except ShardError as error:
                self._fail(GatewayError(error.code, f"parameter shard: {error}"))
            except Exception as error:   # a bug: report it rather than hang the job
                log.exception("background failure", extra={"thread": name})
                self._fail(GatewayError(grpc.StatusCode.INTERNAL, f"{name} failed: {error!r}"))
        threading.Thread(target=guarded, name=name, daemon=True).start()

    def _fail(self, error: GatewayError) -> None:
        log.error("gateway failed", extra={"trainer": self.me, "error": str(error)})
        self.progress.fail(error)

    def _read_plans(self) -> None:
        progress, ahead = self.progress, self.job.lookahead + self.job.cleanup_every
        oracle = pb_grpc.OracleCacherStub(self.job.security.channel(self.job.addresses.oracle,
                                                                    channel_options(TRAINING_MAX_MESSAGE_BYTES)))
        count = 0
        try:
            for reply in oracle.StreamPlans(pb.StreamPlansRequest(trainer=self.me)):
                plan = reply.plan
                # Back-pressure: keep at most L + C plans beyond what the trainer has reached.
                progress.wait(lambda: plan.batch <= progress.next_batch + ahead, "the trainer to catch up")
                local = self._local_keys(plan)   # here, off the trainer's critical path
                with progress.changing():
                    progress.plans[plan.batch] = plan
                    progress.local[plan.batch] = local
                count += 1
        except grpc.RpcError as error:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                               f"oracle cacher at {self.job.addresses.oracle}: {error.code().name}: "
                               f"{error.details()}") from None
        with progress.changing():
            progress.plans_end = count

    @staticmethod
    def _local_keys(plan: pb.BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        """This trainer's distinct keys in the batch (sorted) and each sample's index into them (int32, as
        NextBatch sends it)."""
        sparse = np.frombuffer(plan.features.sparse, np.int64).reshape(plan.features.samples, -1)
        return distinct(feature_keys(sparse))

    # ---- TrainerGateway ---------------------------------------------------------------------

    @_reported
    def NextBatch(self, request, context):
        return pb.NextBatchResponse(**self._next_batch())

    def _next_batch(self) -> dict:
        """The fields of the NextBatchResponse that serves the next batch: a dict, as a built message would
        be copied again when it goes into another (PushGradientsResponse.next)."""
        progress = self.progress
        b = progress.next_batch
        if progress.pushed != b - 1:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"push the gradients of batch {b - 1} before asking for batch {b}")
        started = time.monotonic()
        plan = progress.plan(b)
        if plan is None:
            return dict(done=True)
        keys, inverse = progress.local[b]
        rows = self.strategy.rows(b, plan, keys)
        self.wait_seconds += time.monotonic() - started
        with progress.changing():
            del progress.local[b]   # the strategy is past b: rows are in hand
            progress.next_batch = b + 1
        self.served_keys = keys
        return dict(batch=dict(batch=b, features=plan.features, keys=keys.tobytes(), rows=rows.tobytes(),
                               inverse=inverse.tobytes()))

    @_reported
    def PushGradients(self, request, context):
        progress = self.progress
        b = request.batch
        if b != progress.next_batch - 1 or progress.pushed == b:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"gradients for batch {b}, but the trainer holds batch {progress.next_batch - 1}")
        keys = wire.keys_from_bytes(request.keys)
        if not np.array_equal(keys, self.served_keys):
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"gradients of batch {b} must be for the batch's {len(self.served_keys)} keys, as "
                               f"served and in that order; got {len(keys)} keys that are not")
        grads = wire.matrix_from_bytes(request.grads, len(keys), self.dim, "grads")
        if not np.isfinite(grads).all():
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, f"gradients of batch {b} contain NaN or Inf")
        self.strategy.push(b, progress.plans[b], keys, grads)
        with progress.cond:
            progress.pushed = b
            self.steps += 1
            progress.plans.pop(b - 1, None)
        return pb.PushGradientsResponse(next=self._next_batch()) if request.then_next_batch \
            else pb.PushGradientsResponse()

    @_reported
    def Finish(self, request, context):
        self.strategy.finish()
        self.peers.round_done(FINAL_ROUND)
        self.peers.wait_round(FINAL_ROUND)
        log.info("gateway finished", extra={"trainer": self.me, "steps": self.steps})
        return pb.FinishResponse(stats=self._stats())

    def GetGatewayStats(self, request, context):
        return self._stats()

    def _stats(self) -> pb.GatewayStats:
        t = self.traffic
        return pb.GatewayStats(steps=self.steps, rows_used=t.rows_used, rows_fetched=t.rows_fetched,
                               ps_bytes_in=t.bytes_in, ps_bytes_out=t.bytes_out,
                               mode=GATEWAY_MODES.to_message(self.job.mode), wait_seconds=self.wait_seconds,
                               remote_rows_fetched=t.remote_rows_fetched, peer_grad_bytes_out=t.peer_grad_bytes_out)

    # ---- GatewayPeer -----------------------------------------------------------------------

    @_reported
    def Contribute(self, request, context):
        keys = wire.keys_from_bytes(request.keys)
        counts = wire.uints_from_bytes(request.counts, len(keys), wire.COUNT_DTYPE, "counts") \
            if request.counts else None
        self.peers.receive(request.batch, request.trainer, keys,
                           wire.matrix_from_bytes(request.grads, len(keys), self.dim, "grads"), counts, request.part)
        return pb.ContributeResponse()

    @_reported
    def NotifyRound(self, request, context):
        self.peers.receive_round(request.trainer, request.round)
        return pb.NotifyRoundResponse()

    def shutdown(self) -> None:
        """Wakes every waiting call with an error, so the process can stop now rather than at a timeout."""
        self.progress.fail(GatewayError(grpc.StatusCode.UNAVAILABLE, f"gateway {self.me} is stopping"))
        self.peers.shutdown()

    def close(self) -> None:
        self.peers.close()
        self.ps.close()
        self.strategy.close()


def run(args) -> int:
    job = JobConfig.load(args.job)
    structured_log.configure("INFO")
    keep_freed_memory()   # every batch allocates buffers of the sizes the last one freed
    cache_dir = Path(args.cache_dir or ("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()))
    service = GrpcService(job.addresses.gateways[args.trainer], job.security,
                          ServerLimits(workers=8 + 2 * job.trainers, max_message_bytes=TRAINING_MAX_MESSAGE_BYTES))
    gateway = Gateway(job, args.trainer, cache_dir)
    for served in SERVICES:
        service.add(gateway, served)
    serving = {"trainer": args.trainer, "mode": job.mode, "address": job.addresses.gateways[args.trainer]}
    return run_service(service, GRACE_SECONDS, started=lambda: log.info("gateway serving", extra=serving),
                       stopping=gateway.shutdown, stopped=gateway.close)
